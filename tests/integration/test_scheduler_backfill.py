"""A scheduler-driven backfill of the sync DAG over past intervals, against the sandbox over HTTP.

A real ``airflow api-server``, ``scheduler`` and ``dag-processor`` run on 127.0.0.1 with their own
Airflow home and SQLite database, and the LocalExecutor runs the tasks. After one triggered sync,
``airflow backfill create`` adds three past hourly runs. Memberstack is then read back through its
API: every valid contact has exactly one member and every GHL task, note and appointment exactly
one Data Table record.

The DAG's ``@hourly`` schedule is a ``CronTriggerTimetable`` in Airflow 3.3, so a run's data
interval starts and ends at its logical date and a backfill run reads the contacts updated in the
search overlap before it. The seed puts a few contacts there for each backfill run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from email_validator import EmailNotValidError, validate_email

from sandbox import seedgen
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "ghl_memberstack_sync"
PAIRS = {
    "demo_a": (seedgen.DEMO_LOCATION_A_ID, seedgen.DEMO_MEMBERSTACK_KEY_A),
    "demo_b": (seedgen.DEMO_LOCATION_B_ID, seedgen.DEMO_MEMBERSTACK_KEY_B),
}
# Data Table name, the field that stores the GHL id, and the GHL collection it comes from.
TABLES = (
    ("ghl_tasks", "ghl_task_id", "tasks"),
    ("ghl_notes", "ghl_note_id", "notes"),
    ("ghl_appointments", "ghl_appointment_id", "appointments"),
)
BACKFILL_HOURS = 3
# Contacts per location whose dateUpdated lies just before each backfill run's logical date.
CONTACTS_PER_BACKFILL_RUN = 3
# Seconds before a backfill run's logical date, well inside the sync's 300 s search overlap.
UPDATED_BEFORE_RUN_S = 60
STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _iso_ms(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def backfill_dates() -> list[dt.datetime]:
    """Return the logical dates of the backfill runs: three whole hours, the last one 3 h before this hour."""
    this_hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    first = this_hour - dt.timedelta(hours=BACKFILL_HOURS + 2)
    return [first + dt.timedelta(hours=offset) for offset in range(BACKFILL_HOURS)]


def build_seed(dates: list[dt.datetime]) -> dict[str, Any]:
    """Generate a small demo seed and move a few contacts' dateUpdated into each backfill run."""
    seed = seedgen.generate_seed((30, 20), members_per_app=0)
    for location in seed["ghl"]["locations"]:
        contacts = iter(location["contacts"])
        for logical_date in dates:
            updated = _iso_ms(logical_date - dt.timedelta(seconds=UPDATED_BEFORE_RUN_S))
            for _ in range(CONTACTS_PER_BACKFILL_RUN):
                next(contacts)["dateUpdated"] = updated
    return seed


def valid_contacts(contacts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Map contact id to contact for the contacts that get a member under the default mapping.

    A contact needs a valid email, and among contacts with the same email only the one added
    first (then the lowest id) gets a member.
    """
    chosen: dict[str, dict[str, Any]] = {}
    for contact in contacts:
        email = (contact.get("email") or "").strip().lower()
        if not email:
            continue
        try:
            validate_email(email, check_deliverability=False)
        except EmailNotValidError:
            continue
        rank = (contact.get("dateAdded") or "9999", contact["id"])
        current = chosen.get(email)
        if current is None or rank < (current.get("dateAdded") or "9999", current["id"]):
            chosen[email] = contact
    return {contact["id"]: contact for contact in chosen.values()}


def list_members(sandbox: SandboxHandle, key: str) -> list[dict[str, Any]]:
    members: list[dict[str, Any]] = []
    params: dict[str, Any] = {"first": 100, "includeJSON": "true"}
    with httpx.Client(base_url=sandbox.memberstack_url, headers={"X-API-KEY": key}, trust_env=False) as client:
        while True:
            page = client.get("/members", params=params).raise_for_status().json()
            members.extend(page["data"])
            if not page["hasNextPage"]:
                return members
            params["after"] = page["endCursor"]


def list_records(sandbox: SandboxHandle, key: str, table: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    find: dict[str, Any] = {"take": 100}
    with httpx.Client(base_url=sandbox.memberstack_url, headers={"X-API-KEY": key}, trust_env=False) as client:
        while True:
            response = client.post(f"/v2/data-tables/{table}/records/query", json={"query": {"findMany": find}})
            data = response.raise_for_status().json()["data"]
            records.extend(data["records"])
            if not data["pagination"]["hasMore"]:
                return records
            find["after"] = data["pagination"]["endCursor"]


def airflow_env(home: Path, sandbox: SandboxHandle, port: int) -> dict[str, str]:
    """Build the environment of every Airflow process, with its own home and the sandbox connections."""
    connections = {
        "gohighlevel_demo_a": {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
        },
        "gohighlevel_demo_b": {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "extra": {
                "location_id": seedgen.DEMO_LOCATION_B_ID,
                "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
                "client_secret": seedgen.DEMO_OAUTH_CLIENT_SECRET,
                "refresh_token": seedgen.DEMO_REFRESH_TOKEN_B,
            },
        },
        "memberstack_demo_a": {"conn_type": "memberstack", "host": sandbox.memberstack_url, "password": seedgen.DEMO_MEMBERSTACK_KEY_A},
        "memberstack_demo_b": {"conn_type": "memberstack", "host": sandbox.memberstack_url, "password": seedgen.DEMO_MEMBERSTACK_KEY_B},
    }
    base_url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env.update({f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(body) for conn_id, body in connections.items()})
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO_ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{base_url}/execution/",
        # The API server signs the task tokens and the workers present them, so all share one key.
        AIRFLOW__API_AUTH__JWT_SECRET=Fernet.generate_key().decode(),
        AIRFLOW__API__BASE_URL=base_url,
        # A retried task would otherwise wait out the default 300 s retry delay.
        AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="1",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
        AIRFLOW_VAR_GHL_MEMBERSTACK_SYNC_PAIRS="sync_pairs.demo.yaml",
        AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE=str(home / "storage"),
        MEMBERSTACK_RATE_LIMIT_PER_S="5000",
        GHL_MEMBERSTACK_RETRY_BASE_DELAY_S="0",
        GHL_MEMBERSTACK_RETRY_MAX_DELAY_S="0",
        GHL_MEMBERSTACK_PAIR_LEASE_POLL_S="0.2",
    )
    return env


def run_cli(env: dict[str, str], *args: str) -> str:
    # SQLite allows one writer at a time, so a CLI write can fail with "database is locked" while
    # the scheduler writes. That limit belongs to the test database, and a retry gets past it.
    for attempt in range(5):
        completed = subprocess.run(
            [AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        locked = "database is locked" in completed.stdout + completed.stderr
        if completed.returncode == 0 or not locked:
            break
        time.sleep(1 + attempt)
    assert completed.returncode == 0, f"airflow {' '.join(args)} failed:\n{completed.stdout[-2000:]}{completed.stderr[-3000:]}"
    return completed.stdout


def log_tails(logs: dict[str, Path]) -> str:
    return "\n".join(f"--- {name} ---\n{path.read_text(errors='replace')[-2500:]}" for name, path in logs.items())


class AirflowStack:
    """The api-server, scheduler and dag-processor subprocesses and a REST client for the API."""

    def __init__(self, home: Path, env: dict[str, str], port: int) -> None:
        self.home = home
        self.env = env
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        commands = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
        }
        for name, args in commands.items():
            self.logs[name] = home / f"{name}.log"
            with open(self.logs[name], "wb") as log_file:
                self.processes[name] = subprocess.Popen([AIRFLOW, *args], env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(f"airflow {name} exited with {process.returncode}:\n{log_tails(self.logs)}")

    def wait_for(self, description: str, ready: Any, timeout_s: float) -> Any:
        """Poll ``ready()`` every second and return its first true value, or fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                value = ready()
            except httpx.TransportError:
                value = None
            if value:
                return value
            time.sleep(1)
        pytest.fail(f"timed out after {timeout_s} s waiting for {description}:\n{log_tails(self.logs)}")

    def dag_runs(self) -> list[dict[str, Any]]:
        response = self.client.get(f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 100})
        response.raise_for_status()
        return response.json()["dag_runs"]

    def stop(self) -> None:
        self.client.close()
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def all_finished(runs: list[dict[str, Any]]) -> bool:
    return bool(runs) and all(run["state"] in ("success", "failed") for run in runs)


@pytest.fixture(scope="module")
def dates() -> list[dt.datetime]:
    return backfill_dates()


@pytest.fixture(scope="module")
def sandbox(dates: list[dt.datetime]) -> Iterator[SandboxHandle]:
    with running_sandbox(seed=build_seed(dates), config={"rate_limit_scale": 100}) as handle:
        yield handle


@pytest.fixture(scope="module")
def stack(sandbox: SandboxHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("scheduler-home")
    port = _free_port()
    env = airflow_env(home, sandbox, port)
    run_cli(env, "db", "migrate")
    # load_pair runs in this pool, so it must exist. It gets one slot, as in airflow_settings.yaml.
    run_cli(env, "pools", "set", "memberstack_api", "1", "Memberstack API writes")
    stack = AirflowStack(home, env, port)
    try:
        stack.wait_for("the API server", lambda: stack.client.get("/api/v2/version").status_code == 200, STARTUP_TIMEOUT_S)
        stack.wait_for(f"the dag-processor to parse {DAG_ID}", lambda: stack.client.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, STARTUP_TIMEOUT_S)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def backfill_runs(stack: AirflowStack, dates: list[dt.datetime]) -> list[dict[str, Any]]:
    """Run one triggered sync through the scheduler, then the backfill, and return the backfill runs."""
    stack.client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
    stack.client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None}).raise_for_status()

    def finished_runs() -> list[dict[str, Any]] | None:
        runs = stack.dag_runs()
        return runs if all_finished(runs) else None

    # Unpausing also lets the scheduler create the run of the latest hour, because catchup is off.
    # Either of the two runs can be the first, full read. Both must succeed before the backfill.
    first_runs = stack.wait_for("the first sync to finish", finished_runs, RUN_TIMEOUT_S)
    assert [run["state"] for run in first_runs] == ["success"] * len(first_runs), first_runs

    run_cli(
        stack.env,
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        dates[0].isoformat(),
        "--to-date",
        dates[-1].isoformat(),
        "--max-active-runs",
        str(BACKFILL_HOURS),
        "--reprocess-behavior",
        "none",
    )

    def finished_backfill_runs() -> list[dict[str, Any]] | None:
        runs = [run for run in stack.dag_runs() if run["run_type"] == "backfill"]
        return runs if len(runs) == BACKFILL_HOURS and all_finished(runs) else None

    return stack.wait_for("the backfill runs to finish", finished_backfill_runs, RUN_TIMEOUT_S)


def test_backfill_runs_succeed(backfill_runs: list[dict[str, Any]], dates: list[dt.datetime]) -> None:
    logical_dates = sorted(dt.datetime.fromisoformat(run["logical_date"]) for run in backfill_runs)
    states = {run["dag_run_id"]: run["state"] for run in backfill_runs}

    assert logical_dates == dates
    assert set(states.values()) == {"success"}, states


def test_backfill_reads_interval_contacts(backfill_runs: list[dict[str, Any]], stack: AirflowStack) -> None:
    for run in backfill_runs:
        report_path = stack.home / "storage" / "reports" / DAG_ID / run["dag_run_id"] / "report.json"
        report = json.loads(report_path.read_text(encoding="utf-8"))
        for pair in PAIRS:
            counts = report["pairs"][pair]["counts"]["contacts"]
            assert report["pairs"][pair]["status"] == "ok", (run["dag_run_id"], pair)
            assert counts["extracted"] >= CONTACTS_PER_BACKFILL_RUN, (run["dag_run_id"], pair, counts)
            assert counts["created"] == 0, (run["dag_run_id"], pair, counts)


def test_one_member_per_contact(backfill_runs: list[dict[str, Any]], sandbox: SandboxHandle) -> None:
    locations = {location["id"]: location for location in sandbox.state()["ghl"]["locations"]}
    for pair, (location_id, key) in PAIRS.items():
        expected = set(valid_contacts(locations[location_id]["contacts"]))
        linked = Counter((member.get("metaData") or {}).get("ghlContactId") for member in list_members(sandbox, key))
        duplicated = sorted(contact_id for contact_id, count in linked.items() if count > 1)

        assert duplicated == [], f"{pair}: contacts with more than one member"
        assert set(linked) == expected, f"{pair}: members differ from the valid contacts"


def test_one_record_per_ghl_object(backfill_runs: list[dict[str, Any]], sandbox: SandboxHandle) -> None:
    locations = {location["id"]: location for location in sandbox.state()["ghl"]["locations"]}
    for pair, (location_id, key) in PAIRS.items():
        location = locations[location_id]
        synced_contacts = set(valid_contacts(location["contacts"]))
        for table, id_field, source in TABLES:
            stored = Counter(record["data"][id_field] for record in list_records(sandbox, key, table))
            expected = {obj["id"] for obj in location[source] if obj.get("contactId") in synced_contacts}
            duplicated = sorted(ghl_id for ghl_id, count in stored.items() if count > 1)

            assert expected, f"{pair}: the seed has no {source} to check"
            assert duplicated == [], f"{pair}: {table} has more than one record for {duplicated[:5]}"
            assert set(stored) == expected, f"{pair}: {table} records differ from the GHL {source}"
