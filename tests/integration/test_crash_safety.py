"""Kill harness: the load step is killed with SIGKILL at random points, then rerun.

Each iteration prepares a sync of a small data set against the sandbox in this process and runs
the load step in a child process (``crash_load.py``). The child reports when it reaches its halt
point, and the test kills it with SIGKILL there. Halt points are before or after the N-th
Memberstack write, inside the N-th journal entry write, and in the snapshot commit. The checks
after the kill:

- Memberstack holds no duplicate member or record;
- a kill before the new manifest is in place leaves the previous manifest byte for byte, and its
  snapshot still reads back (checksums included);
- the committed snapshot never claims a value that Memberstack does not hold: each of its values
  is either in Memberstack or about to be replaced there by the interrupted run.

After a rerun (a retry of the load task, or a new DAG run) Memberstack matches the GHL data under
the mapping exactly, the new snapshot matches Memberstack exactly, and one more run writes nothing.

The iterations are derived from ``RELIABILITY_KILL_SEED``; ``RELIABILITY_KILL_ITERATIONS`` sets how
many run (6 by default, one per halt point). With a load concurrency of 1 an iteration is
deterministic; with 3 the threads interleave freely, which the checks must tolerate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench import reliability
from sandbox import seedgen
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_SCRIPT = Path(__file__).with_name("crash_load.py")
DAG_ID = "ghl_memberstack_sync"
GHL_CONN_ID = "gohighlevel_crash"
MEMBERSTACK_CONN_ID = "memberstack_crash"
LOCATION_ID = seedgen.DEMO_LOCATION_A_ID
APP_KEY = seedgen.DEMO_MEMBERSTACK_KEY_A
POINTS = (
    "after_write",
    "commit_manifest_tmp",
    "before_write",
    "commit_file",
    "journal_entry",
    "commit_after_manifest",
)
KILL_SEED = int(os.environ.get("RELIABILITY_KILL_SEED", "20261204"))
ITERATIONS = int(os.environ.get("RELIABILITY_KILL_ITERATIONS", str(len(POINTS))))
CHILD_TIMEOUT_S = 120.0
SEED = seedgen.generate_seed(
    contacts_per_location=(24,), tasks=(0, 2), notes=(0, 2), appointments=(0, 1), random_seed=KILL_SEED % 1000
)


@dataclasses.dataclass(frozen=True)
class Iteration:
    """One kill: where the child halts, what ran before, and how the run is resumed."""

    number: int
    point: str
    scenario: str  # "first_load" or "incremental"
    rerun: str  # "retry" (the load task again) or "new_run" (the next DAG run)
    concurrency: int
    rng_seed: int

    def __str__(self) -> str:
        return f"{self.number}-{self.point}-{self.scenario}-{self.rerun}-c{self.concurrency}"


def iterations() -> list[Iteration]:
    """Derive the iterations from the kill seed.

    Every halt point comes up in turn, and the rerun style alternates, so that each point meets
    the other style in the next round of points.
    """
    rng = random.Random(f"kill-harness:{KILL_SEED}")
    result = []
    for number in range(ITERATIONS):
        result.append(
            Iteration(
                number=number,
                point=POINTS[number % len(POINTS)],
                scenario=rng.choice(("first_load", "incremental")),
                rerun=("retry", "new_run")[(number + number // len(POINTS)) % 2],
                concurrency=rng.choice((1, 3)),
                rng_seed=rng.randrange(2**31),
            )
        )
    return result


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with running_sandbox(seed=SEED, config={"rate_limits": False, "rate_limit_scale": 100}) as handle:
        yield handle


@pytest.fixture
def environment(sandbox: SandboxHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Set the connections and fast settings for this process and the child; return the storage."""
    from ghl_memberstack.limits import reset_limiters

    storage = tmp_path / "storage"
    connections = {
        GHL_CONN_ID: {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": LOCATION_ID},
        },
        MEMBERSTACK_CONN_ID: {
            "conn_type": "memberstack",
            "host": sandbox.memberstack_url,
            "password": APP_KEY,
        },
    }
    for conn_id, body in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))
    for name, value in reliability.sync_environment(storage).items():
        monkeypatch.setenv(name, value)
    # A crashed owner keeps the pair lease until it expires, so a new run waits at most this long.
    monkeypatch.setenv("GHL_MEMBERSTACK_PAIR_LEASE_TTL_S", "2")
    sandbox.reset(SEED)
    sandbox.set_config("ghl", child_changes_bump_contact=True)
    reset_limiters()
    return storage


# --- helpers --------------------------------------------------------------------------------------


def sync_pair() -> Any:
    from ghl_memberstack.pairs import SyncPair

    return SyncPair("crash", GHL_CONN_ID, MEMBERSTACK_CONN_ID, str(REPO_ROOT / "include" / "mapping.yaml"))


def options(run_id: str) -> Any:
    from ghl_memberstack import sync

    return sync.RunOptions(dag_id=DAG_ID, run_id=run_id, run_type="scheduled")


def run_to_commit(run_id: str) -> None:
    """Run one pair through every step in this process, as a DAG run without a kill would."""
    from ghl_memberstack import sync

    pair = sync_pair()
    sync.run_pair(pair, options(run_id))
    sync.summarize([pair.name], options(run_id))


def location_state(sandbox: SandboxHandle) -> tuple[dict[str, Any], dict[str, Any]]:
    state = sandbox.state()
    location = next(loc for loc in state["ghl"]["locations"] if loc["id"] == LOCATION_ID)
    app = next(app for app in state["memberstack"]["apps"] if app["secret_key"] == APP_KEY)
    return location, app


def make_changes(sandbox: SandboxHandle, rng: random.Random) -> None:
    """Change some contacts through the GHL API: names, tags, a note, a task and a new contact."""
    from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

    location, _ = location_state(sandbox)
    contacts = sorted(location["contacts"], key=lambda contact: contact["id"])
    chosen = rng.sample(contacts, 6)
    with GoHighLevelHook(gohighlevel_conn_id=GHL_CONN_ID) as hook:
        hook.update_contact(chosen[0]["id"], lastName="Killed-Once")
        hook.update_contact(chosen[1]["id"], firstName="Rerun")
        hook.add_tags(chosen[2]["id"], ["VIP"])
        hook.add_tags(chosen[3]["id"], ["member", "vip"])
        hook.create_note(chosen[4]["id"], "<p>after the <b>crash</b></p>")
        hook.create_task(chosen[5]["id"], "Call after the crash", "2026-02-01T10:00:00.000Z")
        hook.create_contact(email="crash.new@example.org", firstName="Crash", tags=["member"])


def duplicates(app: dict[str, Any]) -> list[str]:
    """Name contacts with more than one member and GHL objects with more than one record."""
    found = []
    linked = Counter((m.get("metaData") or {}).get("ghlContactId") for m in app["members"])
    found += [f"contact {cid} has {n} members" for cid, n in linked.items() if cid and n > 1]
    emails = Counter(m["auth"]["email"] for m in app["members"])
    found += [f"an email is held by {n} members" for n in emails.values() if n > 1]
    for table in app["data_tables"]:
        id_field = next(f["key"] for f in table["fields"] if f["type"] == "TEXT_UNIQUE")
        ids = Counter((r.get("data") or {}).get(id_field) for r in table["records"])
        found += [f"{table['key']} {ghl_id} has {n} records" for ghl_id, n in ids.items() if n > 1]
    return found


def text(value: Any) -> str:
    if hasattr(value, "item"):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def plan_set(value: Any) -> set[str]:
    return {plan for plan in text(value).split(",") if plan}


def snapshot_violations(applied: Any, app: dict[str, Any], desired: Any = None) -> list[str]:
    """List the snapshot values that Memberstack does not store.

    With ``desired`` (the state the interrupted run was loading), Memberstack may store the desired
    value instead, because the snapshot may lag behind writes but never lead them. Without it,
    Memberstack must store every snapshot value exactly.
    """
    from ghl_memberstack import mapping as mapping_module

    managed = set(mapping_module.load_mapping(REPO_ROOT / "include" / "mapping.yaml").managed_plans)
    members = {member["id"]: member for member in app["members"]}
    problems = []
    columns = ["email", *(c for c in applied.members.columns if c.startswith("cf:"))]
    for contact_id, row in applied.members.iterrows():
        member = members.get(text(row["member_id"]))
        wanted = None
        if desired is not None and contact_id in desired.members.index:
            wanted = desired.members.loc[contact_id]
        if member is None:
            problems.append(f"contact {contact_id}: the snapshot names a member that Memberstack lacks")
            continue
        held_fields = member.get("customFields") or {}
        for column in columns:
            actual = (
                member["auth"]["email"] if column == "email" else held_fields.get(column.removeprefix("cf:"))
            )
            allowed = {text(row[column])}
            if wanted is not None and column in wanted.index:
                allowed.add(text(wanted[column]))
            if text(actual) not in allowed:
                problems.append(f"contact {contact_id}: {column} in Memberstack is not the snapshot's value")
        held_plans = {c.get("planId") for c in member.get("planConnections") or []} & managed
        for plan in managed:
            allowed = {plan in plan_set(row["plans"])}
            if wanted is not None:
                allowed.add(plan in plan_set(wanted["plans"]))
            if (plan in held_plans) not in allowed:
                problems.append(f"contact {contact_id}: plan {plan} in Memberstack is not the snapshot's")
    tables = {table["key"]: {r["id"]: r for r in table["records"]} for table in app["data_tables"]}
    for table, frame in applied.records.items():
        stored = tables.get(table, {})
        desired_frame = desired.records.get(table) if desired is not None else None
        fields = [c for c in frame.columns if c not in ("contact_id", "record_id", "member_id")]
        for ghl_id, row in frame.iterrows():
            record = stored.get(text(row["record_id"]))
            wanted = None
            if desired_frame is not None and ghl_id in desired_frame.index:
                wanted = desired_frame.loc[ghl_id]
            if record is None:
                if desired is not None and wanted is None:
                    continue
                problems.append(f"{table} {ghl_id}: the snapshot names a record that Memberstack lacks")
                continue
            data = record.get("data") or {}
            for column in fields:
                allowed = {text(row[column])}
                if wanted is not None and column in wanted.index:
                    allowed.add(text(wanted[column]))
                if text(data.get(column)) not in allowed:
                    problems.append(f"{table} {ghl_id}: {column} in Memberstack is not the snapshot's value")
            if data.get("member") != text(row["member_id"]) and desired is None:
                problems.append(f"{table} {ghl_id}: linked to another member than the snapshot says")
    return problems


def manifest_bytes(storage: Path) -> bytes | None:
    path = storage / "state" / "crash" / "manifest.json"
    return path.read_bytes() if path.exists() else None


def halt_count(iteration: Iteration, prepared: dict[str, Any], rng: random.Random) -> int:
    """Pick the occurrence at which the child halts, within what the plan makes happen."""
    if iteration.point in ("commit_manifest_tmp", "commit_after_manifest"):
        return 1
    if iteration.point == "commit_file":
        # members.parquet plus one file per Data Table.
        return rng.randint(1, 4)
    return rng.randint(1, prepared["operations"])


def run_child(
    storage: Path, prepared: dict[str, Any], run_options: Any, iteration: Iteration, count: int
) -> str:
    """Start the load in a child process, SIGKILL it at its halt point, and return what it printed."""
    work = storage.parent / "child"
    work.mkdir(exist_ok=True)
    (work / "prepared.json").write_text(json.dumps(prepared), encoding="utf-8")
    (work / "options.json").write_text(json.dumps(run_options.to_dict()), encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1", GHL_MEMBERSTACK_LOAD_CONCURRENCY=str(iteration.concurrency))

    command = [
        sys.executable,
        str(CHILD_SCRIPT),
        str(work / "prepared.json"),
        str(work / "options.json"),
        iteration.point,
        str(count),
    ]
    with open(work / "stderr.log", "wb") as stderr:
        child = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr)
        assert child.stdout is not None
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        output = b""
        try:
            while b"HALT" not in output and time.monotonic() < deadline:
                readable, _, _ = select.select([child.stdout], [], [], 0.5)
                if readable:
                    chunk = os.read(child.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    output += chunk
            if b"HALT" in output:
                os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None and b"HALT" not in output:
                child.kill()
            child.wait(timeout=30)
            child.stdout.close()

    lines = output.decode(errors="replace").strip().splitlines()
    assert lines and lines[-1].startswith("HALT"), (
        f"the child did not reach {iteration.point} #{count}; exit code {child.returncode}, "
        f"output {lines[-3:]}, "
        f"stderr tail: {(work / 'stderr.log').read_text(errors='replace')[-1500:]}"
    )
    assert child.returncode == -signal.SIGKILL
    return lines[-1]


# --- the harness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("iteration", iterations(), ids=str)
def test_killed_load_reruns_exactly_once(
    iteration: Iteration, sandbox: SandboxHandle, environment: Path
) -> None:
    from ghl_memberstack import sync
    from ghl_memberstack.snapshot import SnapshotStore
    from ghl_memberstack.storage import as_storage_path

    rng = random.Random(iteration.rng_seed)
    storage = environment
    store = SnapshotStore(as_storage_path(storage), "crash")
    pair = sync_pair()
    if iteration.scenario == "incremental":
        run_to_commit(f"base__{iteration.number}")
        make_changes(sandbox, rng)
    before_manifest = store.manifest()
    before_bytes = manifest_bytes(storage)
    before_applied = store.applied(before_manifest) if before_manifest is not None else None

    run_options = options(f"kill__{iteration.number}")
    prepared = sync.prepare_pair(pair, run_options)
    assert prepared["status"] == "planned"
    assert prepared["operations"] > 0
    count = halt_count(iteration, prepared, rng)
    halted = run_child(storage, prepared, run_options, iteration, count)
    assert halted == f"HALT {iteration.point} {count}"

    # --- right after the kill ---
    location, app = location_state(sandbox)
    assert duplicates(app) == []
    desired = reliability.desired_from_ghl(location, _mapping())
    manifest = store.manifest()
    if iteration.point == "commit_after_manifest":
        assert manifest is not None
        assert manifest.run_id == run_options.run_id
        assert snapshot_violations(store.applied(manifest), app) == []
    else:
        assert manifest_bytes(storage) == before_bytes
        if before_manifest is not None:
            intact = store.applied(manifest)
            pd.testing.assert_frame_equal(intact.members, before_applied.members)
            assert sorted(intact.records) == sorted(before_applied.records)
            for table, frame in before_applied.records.items():
                pd.testing.assert_frame_equal(intact.records[table], frame)
            assert snapshot_violations(intact, app, desired) == []

    # --- the rerun ---
    if iteration.rerun == "retry":
        sync.load_pair(prepared, run_options)
        sync.summarize([pair.name], run_options)
        final_run = run_options.run_id
    else:
        final_run = f"kill__{iteration.number}__next"
        run_to_commit(final_run)

    location, app = location_state(sandbox)
    assert duplicates(app) == []
    parity = reliability.check_parity(location, app)
    assert parity.ok, json.dumps(parity.summary(), indent=1)
    manifest = store.manifest()
    assert manifest is not None
    assert before_manifest is None or manifest.snapshot_id != before_manifest.snapshot_id
    assert snapshot_violations(store.applied(manifest), app) == []
    assert set(store.applied(manifest).members.index) == set(desired.members.index)

    # --- one more run finds nothing left to do ---
    writes_before = reliability.memberstack_writes(sandbox.stats("memberstack"))
    run_to_commit(f"kill__{iteration.number}__after")
    assert reliability.memberstack_writes(sandbox.stats("memberstack")) == writes_before


def _mapping() -> Any:
    from ghl_memberstack import mapping as mapping_module

    return mapping_module.load_mapping(REPO_ROOT / "include" / "mapping.yaml")
