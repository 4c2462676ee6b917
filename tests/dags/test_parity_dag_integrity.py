"""The parity DAG's schedule, params and task wiring, as the DAG file defines them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = REPO_ROOT / "dags" / "ghl_memberstack_parity.py"
DAG_ID = "ghl_memberstack_parity"

try:  # Airflow 3.2 moved DagBag here.
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # pragma: no cover - older Airflow
    from airflow.models.dagbag import DagBag

# Imports the DAG file in a fresh interpreter and prints the repair Param's default and the schedule.
_PROBE = (
    "import importlib.util, sys; "
    "spec = importlib.util.spec_from_file_location('d', sys.argv[1]); "
    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
    "print(m.REPAIR_DEFAULT, m.SCHEDULE)"
)


@pytest.fixture(scope="module")
def dag():
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def probe(**environment: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GHL_MEMBERSTACK_PARITY_")}
    env.update(environment)
    return subprocess.run(
        [sys.executable, "-c", _PROBE, str(DAG_FILE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_parity_dag_runs_nightly_without_catchup(dag) -> None:
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md
    assert "parity" in dag.tags
    if "GHL_MEMBERSTACK_PARITY_SCHEDULE" not in os.environ:
        assert dag.schedule == "0 3 * * *"


def test_parity_dag_params(dag) -> None:
    params = dag.params
    schema = {name: params.get_param(name).schema for name in ("repair", "dry_run", "force", "sync_pairs")}

    if "GHL_MEMBERSTACK_PARITY_REPAIR" not in os.environ:
        assert params["repair"] is True
    assert params["dry_run"] is False
    assert params["force"] is False
    assert params["sync_pairs"] == []
    assert schema["repair"]["type"] == "boolean"
    assert schema["sync_pairs"]["type"] == "array"


def test_parity_dag_maps_pairs_and_pools_memberstack(dag) -> None:
    observe, reconcile = "parity_pair.observe_pair", "parity_pair.reconcile_pair"

    assert set(dag.task_ids) == {"resolve_pairs", observe, reconcile, "summarize", "check"}
    assert dag.get_task(observe).upstream_task_ids == {"resolve_pairs"}
    assert dag.get_task(reconcile).upstream_task_ids == {observe}
    assert dag.get_task(reconcile).pool == "memberstack_api"
    assert dag.get_task(observe).pool != "memberstack_api"
    assert dag.get_task("summarize").trigger_rule == "all_done"
    assert dag.get_task("summarize").upstream_task_ids == {reconcile}
    assert dag.get_task("check").upstream_task_ids == {"summarize"}
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id


def test_repair_default_and_schedule_come_from_environment() -> None:
    completed = probe(GHL_MEMBERSTACK_PARITY_REPAIR="0", GHL_MEMBERSTACK_PARITY_SCHEDULE="none")

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1] == "False None"


def test_invalid_repair_setting_fails_import() -> None:
    completed = probe(GHL_MEMBERSTACK_PARITY_REPAIR="maybe")

    assert completed.returncode != 0
    assert "GHL_MEMBERSTACK_PARITY_REPAIR must be one of" in completed.stderr
