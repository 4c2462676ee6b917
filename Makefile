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

install: $(VENV)/.installed chromium  ## Create .venv from the committed lock, and the Node test clients

lock: $(BIN)/python  ## Re-resolve requirements.txt into requirements.lock (Python 3.11, Linux x86_64)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		requirements.txt -o requirements.lock

test: install  ## Run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

sandbox: install  ## Start both API emulators in the foreground (see README for settings)
	$(BIN)/python -m sandbox

.PHONY: bench-sandbox
bench-sandbox: install  ## Measure sandbox GET requests per second with limits off (goal 1000/s)
	$(BIN)/python bench/sandbox_throughput.py $(BENCH_ARGS)

# --- Sync, demo and local Airflow --------------------------------------------------------------
# Every Airflow command below reads the project's DAGs and plugins; values set in the environment win.
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER ?= $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW__CORE__TEST_CONNECTION ?= Enabled
DRY_RUN ?=
FULL_REFRESH ?=
FORCE ?=
SYNC_PAIRS ?=
HOME_MARKER := $(AIRFLOW_HOME)/.ghl_memberstack_home

.PHONY: airflow-home
airflow-home: install  ## Create $AIRFLOW_HOME with its database and airflow_settings.yaml (new homes only)
	@set -e; \
	if [ -f "$(HOME_MARKER)" ]; then exit 0; fi; \
	if [ -e "$(AIRFLOW_HOME)" ]; then \
		echo "Using the existing Airflow home $(AIRFLOW_HOME) as it is; airflow_settings.yaml is loaded into new homes only."; \
		exit 0; \
	fi; \
	echo "Creating the Airflow home $(AIRFLOW_HOME)"; \
	mkdir -p "$(AIRFLOW_HOME)"; \
	$(BIN)/python scripts/write_fernet_key.py "$(AIRFLOW_HOME)"; \
	if ! $(BIN)/airflow db migrate > "$(AIRFLOW_HOME)/db-migrate.log" 2>&1; then \
		tail -n 30 "$(AIRFLOW_HOME)/db-migrate.log" >&2; rm -rf "$(AIRFLOW_HOME)"; exit 1; \
	fi; \
	$(BIN)/python scripts/load_airflow_settings.py airflow_settings.yaml; \
	touch "$(HOME_MARKER)"

sync: airflow-home  ## Run the sync DAG once (DRY_RUN=1 FULL_REFRESH=1 FORCE=1 SYNC_PAIRS=a,b)
	@conf=$$(DRY_RUN='$(DRY_RUN)' FULL_REFRESH='$(FULL_REFRESH)' FORCE='$(FORCE)' SYNC_PAIRS='$(SYNC_PAIRS)' \
		$(BIN)/python scripts/sync_conf.py) || exit 2; \
	echo "airflow dags test ghl_memberstack_sync --conf '$$conf'"; \
	$(BIN)/airflow dags test ghl_memberstack_sync --conf "$$conf"

# --- Parity runs and the browser used by the report tests ---------------------------------------
REPAIR ?=
.PHONY: parity chromium

parity: airflow-home  ## Run the parity DAG once (REPAIR=0/1 DRY_RUN=1 FORCE=1 SYNC_PAIRS=a,b)
	@conf=$$(REPAIR='$(REPAIR)' DRY_RUN='$(DRY_RUN)' FORCE='$(FORCE)' SYNC_PAIRS='$(SYNC_PAIRS)' \
		$(BIN)/python scripts/parity_conf.py) || exit 2; \
	echo "airflow dags test ghl_memberstack_parity --conf '$$conf'"; \
	$(BIN)/airflow dags test ghl_memberstack_parity --conf "$$conf"

# The report tests render HTML in headless Chromium. Debian's package is installed as root when it
# is missing; elsewhere the target only says what to install, and those tests are skipped.
chromium:  ## Install Debian's chromium when it is missing (as root, with apt-get)
	@if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "chromium not found: install Debian's chromium package as root to run the report rendering tests" >&2; \
		exit 0; \
	fi; \
	echo "Installing Debian's chromium package"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq chromium

demo: install  ## Sync the demo seed on the bundled sandbox twice, in a fresh Airflow home
	$(BIN)/python scripts/demo.py

# The components `airflow standalone` starts, each on 127.0.0.1: standalone itself cannot keep the
# scheduler's and triggerer's log servers off other interfaces, and `--skip-serve-logs` can.
airflow: airflow-home  ## Run Airflow on http://127.0.0.1:8080 (no login) with the sandbox on ports 8701 and 8702
	@set -e; \
	export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=8080 AIRFLOW__API__BASE_URL=http://127.0.0.1:8080 \
		AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:8080/execution/ \
		AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True \
		MEMBERSTACK_RATE_LIMIT_PER_S=$${MEMBERSTACK_RATE_LIMIT_PER_S:-250}; \
	SANDBOX_CONFIG='{"rate_limit_scale": 10}' SANDBOX_STATE_DIR="$(CURDIR)/.sandbox-state" $(BIN)/python -m sandbox & \
	pids=$$!; \
	$(BIN)/airflow api-server & pids="$$pids $$!"; \
	$(BIN)/airflow scheduler --skip-serve-logs & pids="$$pids $$!"; \
	$(BIN)/airflow dag-processor & pids="$$pids $$!"; \
	$(BIN)/airflow triggerer --skip-serve-logs & pids="$$pids $$!"; \
	trap 'kill $$pids 2>/dev/null || true' EXIT INT TERM; \
	echo "Airflow UI: http://127.0.0.1:8080 (stop with Ctrl-C)"; \
	wait -n

clean:  ## Remove the venv, the local Airflow home and test artifacts
	rm -rf $(VENV) .airflow artifacts .pytest_cache
