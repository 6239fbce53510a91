# One place for the project's commands; the README and .ci/run call these targets.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BOOTSTRAP_PYTHON ?= python3.11

.PHONY: setup repro test bench

setup: $(VENV)/.installed

# Reinstall only when the pinned dependencies change.
$(VENV)/.installed: pyproject.toml
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

repro: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro

test: setup
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) -m benchmarks
