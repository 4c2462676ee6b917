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
# The run options reach the conf scripts through the environment, never through the shell command
# line, so no value can break out of its quoting.
export DRY_RUN FULL_REFRESH FORCE SYNC_PAIRS
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
	@conf=$$($(BIN)/python scripts/sync_conf.py) || exit 2; \
	echo "airflow dags test ghl_memberstack_sync --conf '$$conf'"; \
	$(BIN)/airflow dags test ghl_memberstack_sync --conf "$$conf"

# --- Parity runs and the browser used by the report tests ---------------------------------------
REPAIR ?=
export REPAIR
.PHONY: parity chromium

parity: airflow-home  ## Run the parity DAG once (REPAIR=0/1 DRY_RUN=1 FORCE=1 SYNC_PAIRS=a,b)
	@conf=$$($(BIN)/python scripts/parity_conf.py) || exit 2; \
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

# --- GoHighLevel OAuth and the rate-limit benchmark ------------------------------------------------
CODE ?=
CONN_ID ?=
export CODE CONN_ID
.PHONY: bench-limits

authorize: install  ## Redeem a GHL authorization code and seed the token store: make authorize CODE=... CONN_ID=...
	@if [ -z "$$CODE" ] || [ -z "$$CONN_ID" ]; then \
		echo "usage: make authorize CODE=<code from the app-install redirect> CONN_ID=<gohighlevel connection id>" >&2; \
		exit 2; \
	fi; \
	GHL_AUTHORIZATION_CODE="$$CODE" $(BIN)/python -m ghl_memberstack.authorize --conn-id "$$CONN_ID"

bench-limits: install  ## Send 1,000 GHL and 1,000 Memberstack calls at the sandbox's real limits (about 3 min)
	$(BIN)/python bench/rate_limits.py $(BENCH_ARGS)

# --- Benchmarks: figures in artifacts/bench/, the page in docs/benchmarks.md ----------------------
.PHONY: bench-sync bench-scale bench-side-by-side

bench: install  ## Run the five benchmarks (about 50 min) and write docs/benchmarks.md; BENCH_ARGS=--quick for a smoke run
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

bench-sync: install  ## Benchmarks 1-3: first load, no-change run and 1 % run of 1,000 contacts at the real limits
	$(BIN)/python bench/sync_runs.py $(BENCH_ARGS)

bench-scale: install  ## Benchmark 4: GX validation plus diff over parquet at 10k, 100k and 1M contacts
	$(BIN)/python bench/validate_diff_scale.py $(BENCH_ARGS)

bench-side-by-side: install  ## Benchmark 5: the sync next to a script on the official GHL SDK
	$(BIN)/python bench/side_by_side.py $(BENCH_ARGS)

# --- Reliability: the long fault-injection run ------------------------------------------------
.PHONY: reliability
RELIABILITY_ARGS ?=

reliability: install  ## Sync the 2,000-contact demo seed under injected faults and print parity, duplicates and lost changes
	$(BIN)/python bench/reliability.py $(RELIABILITY_ARGS)

clean:  ## Remove the venv, the local Airflow home and test artifacts
	rm -rf $(VENV) .airflow artifacts .pytest_cache
