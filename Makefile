# One place for the project's commands; the README, docs/ and .ci/run call these targets.
# PYTHON is the interpreter that creates the venv (3.11): `make setup PYTHON=/path/to/python3.11`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock
BOOK := llms-from-scratch==1.0.19
FAST := not e2e and not browser and not distributed

.PHONY: setup setup-dev repro figures test test-fast lint bench lock vega remote-s3

# The pipeline alone: what a learner needs to run `dvc repro`.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

# Tests, lint, benchmarks and Ray too. The book's package pins numpy<2.1 for its notebooks; chapters 2-5 need only
# what is already here, so it goes in without its own requirements.
setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[test,ray]'
	$(PIP) --no-deps $(BOOK)
	touch $@

repro: setup
	PATH="$(BIN):$$PATH" dvc repro

# The book's chapter-2 figures as this workspace's metrics hold them.
figures: setup
	$(BIN)/python -m llmpipe.figures

test: setup-dev vega
	$(BIN)/python -m pytest

test-fast: setup-dev
	$(BIN)/python -m pytest -m "$(FAST)"

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup-dev
	$(BIN)/python -m benchmarks

# Re-resolve every dependency from pyproject.toml into requirements.lock (needs uv: pip install uv).
lock:
	uv pip compile pyproject.toml --extra test --extra ray --universal --python-version 3.11 \
		--no-header --quiet -o requirements.lock
	sed -i '1i # Every dependency of llmpipe (with the ray and test extras), pinned for all platforms. Do not edit: `make lock`.' requirements.lock

# Vega, vega-lite and vega-embed for dvc_plots/index.html (.dvc/plots/index.html): plots draw with no network.
VEGA := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0

vega: .vega/.installed

.vega/.installed: Makefile
	npm install --silent --no-audit --no-fund --prefix .vega $(VEGA)
	touch $@

# Make S3 (or an S3-compatible server) the default DVC remote; commit .dvc/config so the team shares it:
#   make remote-s3 S3_URL=s3://bucket/ch2 [S3_ENDPOINT=http://minio.example:9000]
remote-s3: setup
	$(if $(S3_URL),,$(error S3_URL is not set: make remote-s3 S3_URL=s3://bucket/path))
	$(PIP) dvc-s3
	$(BIN)/dvc remote add --force --default s3 $(S3_URL)
	$(if $(S3_ENDPOINT),$(BIN)/dvc remote modify s3 endpointurl $(S3_ENDPOINT))
