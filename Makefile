# Every target installs what it needs first (through `install`), so each one works on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export PATH := $(BIN):$(PATH)

.PHONY: help install lock test sandbox demo sync airflow authorize bench clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; install Python 3.11 or set PYTHON=" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements.lock pyproject.toml tests/node/package-lock.json
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip sync --python $(BIN)/python requirements.lock
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed  ## Create .venv from the committed lock, and the Node test clients

lock: $(BIN)/python  ## Re-resolve requirements.txt into requirements.lock (Python 3.11, Linux x86_64)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		requirements.txt -o requirements.lock

test: install  ## Run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

sandbox: install  ## Start both API emulators in the foreground (see README for settings)
	$(BIN)/python -m sandbox

clean:  ## Remove the venv, the local Airflow home and test artifacts
	rm -rf $(VENV) .airflow artifacts .pytest_cache
