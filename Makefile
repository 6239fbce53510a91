# One place for the project's commands; the README and .ci/run call these targets.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BOOTSTRAP_PYTHON ?= python3.11

.PHONY: setup repro test bench vega remote-s3

setup: $(VENV)/.installed

# Reinstall only when the pinned dependencies change.
$(VENV)/.installed: pyproject.toml
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

repro: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro

test: setup vega
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) -m benchmarks

# Vega, vega-lite and vega-embed for dvc_plots/index.html (.dvc/plots/index.html): plots draw with no network.
VEGA := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0

vega: .vega/.installed

.vega/.installed: Makefile
	npm install --silent --no-audit --no-fund --prefix .vega $(VEGA)
	touch $@

# Make S3 (or an S3-compatible server) the default DVC remote; commit .dvc/config so the team shares it:
#   make remote-s3 S3_URL=s3://bucket/ch2 [S3_ENDPOINT=http://minio.example:9000]
remote-s3:
	$(if $(S3_URL),,$(error S3_URL is not set: make remote-s3 S3_URL=s3://bucket/path))
	$(VENV)/bin/dvc remote add --force --default s3 $(S3_URL)
	$(if $(S3_ENDPOINT),$(VENV)/bin/dvc remote modify s3 endpointurl $(S3_ENDPOINT))
