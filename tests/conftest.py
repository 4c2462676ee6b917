"""Suite-wide setup: the repository root on ``sys.path`` and an Airflow home of the suite's own.

Airflow reads ``AIRFLOW_HOME`` and its settings when it is first imported, so they are set here,
before any test module imports it. The suite never touches the developer's Airflow home or
database, and connections or Variables from the developer's environment do not leak into tests.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="pytest-airflow-home-"))
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)

for _name in [name for name in os.environ if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
    del os.environ[_name]
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO_ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# A fixed test-only key: the OAuth token store encrypts with Airflow's Fernet key.
os.environ["AIRFLOW__CORE__FERNET_KEY"] = "dGVzdC1vbmx5LWZlcm5ldC1rZXktMzItYnl0ZXMhISE="


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Create the suite's Airflow metadata database (sqlite) once per session; return the home."""
    completed = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return _AIRFLOW_HOME


# --- Secret scan of the suite's output ---------------------------------------------------------
# Pytest keeps the captured stdout, stderr and log records of every test phase in the report
# sections, including the output of child processes that write to the inherited descriptors.
# They are collected here; tests/test_logged_secrets.py, moved to the end of the run, scans them.
SECRET_SCAN_TEST = "test_suite_output_holds_no_secret"
_SUITE_OUTPUT: list[str] = []
# The project's own loggers emit every level, so the scan also covers debug and info records.
for _logger_name in ("ghl_memberstack", "airflow.task.hooks.ghl_memberstack"):
    logging.getLogger(_logger_name).setLevel(logging.DEBUG)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _SUITE_OUTPUT.extend(text for _, text in report.sections)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    scans = [item for item in items if item.name == SECRET_SCAN_TEST]
    items[:] = [item for item in items if item.name != SECRET_SCAN_TEST] + scans


@pytest.fixture
def suite_output() -> list[str]:
    """Captured output of every test phase that ran before the requesting test."""
    return _SUITE_OUTPUT
