"""DAG files import cleanly, read nothing at parse time, and carry tags, retries and params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest
from airflow.sdk import CronDataIntervalTimetable
from airflow.timetables import interval

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO_ROOT / "dags"
DAG_FILES = sorted(DAGS_DIR.glob("*.py"))
SYNC_DAG_ID = "ghl_memberstack_sync"

try:  # Airflow 3.2 moved DagBag here.
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # pragma: no cover - older Airflow
    from airflow.models.dagbag import DagBag

# Runs in a fresh interpreter: it imports one DAG file with every Connection and Variable getter
# replaced by one that records the call, and an audit hook that records every file opened.
_PARSE_PROBE = r"""
import importlib.util, json, sys
import airflow.sdk
from airflow.sdk import BaseHook, Connection, Variable

calls = []
def record(name):
    def getter(*args, **kwargs):
        calls.append(name)
        raise RuntimeError(name + " called at parse time")
    return staticmethod(getter) if name != "BaseHook.get_connection" else classmethod(getter)
BaseHook.get_connection = record("BaseHook.get_connection")
Connection.get = record("Connection.get")
Variable.get = record("Variable.get")

before = set(sys.modules)
opened = []
active = [True]
def audit(event, args):
    if active[0] and event == "open" and isinstance(args[0], str):
        opened.append(args[0])
sys.addaudithook(audit)
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
active[0] = False
code = (".py", ".pyc", ".so")
data_files = [
    p for p in opened
    if not p.endswith(code) and "__pycache__" not in p and "/zoneinfo/" not in p and p != "/dev/null"
]
print(json.dumps({"calls": calls, "files": data_files, "modules": sorted(set(sys.modules) - before)}))
"""

HEAVY_MODULES = ("pandas", "great_expectations", "httpx", "pyarrow", "ghl_memberstack.sync")


@pytest.fixture(scope="module")
def dag_bag() -> DagBag:
    return DagBag(dag_folder=str(DAGS_DIR))


def test_dag_files_import_without_errors(dag_bag: DagBag) -> None:
    assert DAG_FILES, "no DAG files found"
    assert dag_bag.import_errors == {}
    assert SYNC_DAG_ID in dag_bag.dags


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda path: path.name)
def test_dag_parse_reads_nothing(dag_file: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _PARSE_PROBE, str(dag_file)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    probe = json.loads(completed.stdout.strip().splitlines()[-1])
    assert probe["calls"] == [], "a Connection or Variable was read at parse time"
    assert probe["files"] == [], "a file was opened at parse time"
    heavy = [name for name in probe["modules"] if name.startswith(HEAVY_MODULES)]
    assert heavy == [], "heavy modules were imported at parse time"


def test_every_dag_has_tags_and_retries(dag_bag: DagBag) -> None:
    for dag_id, dag in dag_bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag_id}.{task.task_id} has {task.retries} retries"


def test_sync_dag_schedule_and_catchup(dag_bag: DagBag) -> None:
    dag = dag_bag.dags[SYNC_DAG_ID]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md
    if "GHL_MEMBERSTACK_SYNC_SCHEDULE" not in os.environ:
        # A backfill run reads the contacts updated in its data interval, so an hourly run must
        # span the whole hour before it.
        assert isinstance(dag.timetable, CronDataIntervalTimetable)
        assert dag.timetable.expression == "0 * * * *"  # the @hourly preset, expanded
        # The scheduler's counterpart of the same timetable, which computes the intervals.
        scheduled = interval.CronDataIntervalTimetable(dag.timetable.expression, timezone="UTC")
        span = scheduled.infer_manual_data_interval(run_after=pendulum.datetime(2026, 3, 1, 10, 30, tz="UTC"))
        assert span.start == pendulum.datetime(2026, 3, 1, 9, tz="UTC")
        assert span.end == pendulum.datetime(2026, 3, 1, 10, tz="UTC")


def test_sync_dag_params_default_to_off(dag_bag: DagBag) -> None:
    params = dag_bag.dags[SYNC_DAG_ID].params
    assert params["dry_run"] is False
    assert params["full_refresh"] is False
    assert params["force"] is False
    assert params["sync_pairs"] == []
    schema = {name: params.get_param(name).schema for name in ("dry_run", "full_refresh", "force", "sync_pairs")}
    assert schema["dry_run"]["type"] == "boolean"
    assert schema["full_refresh"]["type"] == "boolean"
    assert schema["force"]["type"] == "boolean"
    assert schema["sync_pairs"]["type"] == "array"


def test_sync_dag_task_layout(dag_bag: DagBag) -> None:
    dag = dag_bag.dags[SYNC_DAG_ID]
    prepare, load = "sync_pair.prepare_pair", "sync_pair.load_pair"
    assert set(dag.task_ids) == {"resolve_pairs", prepare, load, "summarize"}
    assert dag.get_task(load).pool == "memberstack_api"
    assert dag.get_task(prepare).pool != "memberstack_api"
    assert dag.get_task("summarize").trigger_rule == "all_done"
    assert dag.get_task(prepare).upstream_task_ids == {"resolve_pairs"}
    assert dag.get_task(load).upstream_task_ids == {prepare}
    assert dag.get_task("summarize").upstream_task_ids == {load}
    assert type(dag.task_group_dict["sync_pair"]).__name__ == "MappedTaskGroup"


def test_schedule_comes_from_environment() -> None:
    probe = (
        "import importlib.util, sys; "
        "spec = importlib.util.spec_from_file_location('d', sys.argv[1]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.SCHEDULE)"
    )
    env = dict(os.environ, GHL_MEMBERSTACK_SYNC_SCHEDULE="*/15 * * * *")
    completed = subprocess.run(
        [sys.executable, "-c", probe, str(DAGS_DIR / "ghl_memberstack_sync.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1] == "*/15 * * * *"
