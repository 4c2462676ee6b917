"""Loader, journal and snapshot store against the Memberstack sandbox over HTTP.

The desired state is built by hand (20 members with tasks, notes and appointments), so these tests
cover loading and resuming without the extraction and mapping steps.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "loader"))

from loader_frames import LOCATION, MAPPING, appointment, contact, desired_state, ids, note, task  # noqa: E402

from ghl_memberstack.diff import plan_operations  # noqa: E402
from ghl_memberstack.hooks.memberstack import MemberstackHook  # noqa: E402
from ghl_memberstack.limits import reset_limiters  # noqa: E402
from ghl_memberstack.load import Loader, apply_result, fold_journal  # noqa: E402
from ghl_memberstack.mapping import TABLE_ID_FIELDS  # noqa: E402
from ghl_memberstack.settings import Settings  # noqa: E402
from ghl_memberstack.snapshot import Manifest, SnapshotStore  # noqa: E402
from ghl_memberstack.storage import as_storage_path  # noqa: E402
from sandbox.seedgen import DEMO_MEMBERSTACK_KEY_A, generate_seed  # noqa: E402
from sandbox.testing import running_sandbox  # noqa: E402

pytestmark = pytest.mark.integration

CONN_ID = "memberstack_loader_sandbox"
WRITE_METHODS = frozenset(
    {
        "create_member",
        "update_member",
        "delete_member",
        "add_plan",
        "remove_plan",
        "create_record",
        "update_record",
        "delete_record",
    }
)
SEED = generate_seed(contacts_per_location=(0,), random_seed=5)


class SimulatedCrash(BaseException):
    """Stands for the process being killed between a write and its journal entry."""


class CrashingHook:
    """Delegates to a hook and raises ``SimulatedCrash`` right after its ``crash_after``-th write."""

    def __init__(self, hook: MemberstackHook, crash_after: int) -> None:
        self._hook = hook
        self._left = crash_after

    def __getattr__(self, name):
        attribute = getattr(self._hook, name)
        if name not in WRITE_METHODS:
            return attribute

        def write(*args, **kwargs):
            result = attribute(*args, **kwargs)
            self._left -= 1
            if self._left == 0:
                raise SimulatedCrash(f"simulated crash after {name}")
            return result

        return write


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(seed=SEED, config={"rate_limits": False}) as handle:
        yield handle


@pytest.fixture
def hook(sandbox, monkeypatch):
    sandbox.reset(SEED)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        f'{{"conn_type": "memberstack", "host": "{sandbox.memberstack_url}", "password": "{DEMO_MEMBERSTACK_KEY_A}"}}',
    )
    reset_limiters()
    settings = Settings(
        retry_attempts=3,
        retry_base_delay_s=0,
        retry_max_delay_s=0,
        memberstack_max_workers=4,
        memberstack_rate_limit_per_s=1000,
    )
    hook = MemberstackHook(CONN_ID, settings=settings, sleep=lambda _seconds: None)
    yield hook
    hook.close()


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(as_storage_path(tmp_path / "storage"), "sandbox-pair", retention=3)


def twenty_members():
    members = [
        contact(f"C{i:02d}", tags=["vip", "member", "vip,member", ""][i % 4], tier=["Gold", ""][i % 2])
        for i in range(20)
    ]
    tasks = [
        task(f"T{i:02d}", f"C{i:02d}", completed=i % 3 == 0, due="2025-07-01T00:00:00.000Z")
        for i in range(20)
    ]
    notes = [note(f"N{i:02d}", f"C{i // 2:02d}", body=f"<p>note {i}</p>") for i in range(30)]
    appointments = [appointment(f"A{i:02d}", f"C{i:02d}") for i in range(0, 20, 4)]
    return desired_state(members, tasks=tasks, notes=notes, appointments=appointments)


def sync_once(hook, store, desired, *, run_id):
    """Plan against the committed state (plus any journal), load, and commit; return the result."""
    manifest = store.manifest()
    journal = store.journal(manifest.snapshot_id if manifest else None)
    applied = fold_journal(store.applied(manifest), journal)
    operations = plan_operations(desired, applied, MAPPING, observed_contact_ids=ids(desired))
    loader = Loader(hook, journal, location_id=LOCATION, concurrency=4, run_id=run_id)
    loader.preflight(MAPPING)
    result = loader.run(operations, desired=desired, observed_contact_ids=ids(desired))
    store.commit(
        apply_result(applied, desired, result), Manifest(run_id=run_id, pending=tuple(sorted(result.pending)))
    )
    return operations, result


def read_back(hook):
    members = list(hook.list_members())
    records = {table: list(hook.query_records(table)) for table in TABLE_ID_FIELDS}
    return members, records


def assert_matches(desired, members, records):
    by_contact = Counter(member["metaData"].get("ghlContactId") for member in members)
    assert by_contact == Counter(desired.members.index)
    member_of = {member["metaData"]["ghlContactId"]: member for member in members}
    for contact_id, row in desired.members.iterrows():
        member = member_of[contact_id]
        assert member["auth"]["email"] == row["email"]
        assert member["customFields"].get("membership-tier", "") == row["cf:membership-tier"]
        assert member["customFields"]["ghl-tags"] == row["cf:ghl-tags"]
        wanted_plans = sorted(plan for plan in row["plans"].split(",") if plan)
        assert sorted(c["planId"] for c in member["planConnections"]) == wanted_plans
    for table, id_field in TABLE_ID_FIELDS.items():
        frame = desired.records[table]
        stored = Counter(record["data"][id_field] for record in records[table])
        assert stored == Counter(frame.index)
        for record in records[table]:
            contact_id = frame.loc[record["data"][id_field], "contact_id"]
            assert record["data"]["member"] == member_of[contact_id]["id"]


def test_load_then_rerun_writes_nothing(hook, store):
    desired = twenty_members()

    _, first = sync_once(hook, store, desired, run_id="run-1")
    members, records = read_back(hook)
    assert_matches(desired, members, records)
    assert first.failed == []
    assert first.counts["contacts"]["created"] == 20

    writes = hook.write_count
    operations, second = sync_once(hook, store, twenty_members(), run_id="run-2")

    assert operations == []
    assert hook.write_count == writes
    assert second.counts["contacts"]["unchanged"] == 20
    assert second.counts["notes"]["unchanged"] == 30


@pytest.mark.parametrize("crash_after", [1, 9, 33, 61])
def test_crash_then_rerun_has_no_duplicates(hook, store, crash_after):
    desired = twenty_members()

    with pytest.raises(SimulatedCrash):
        sync_once(CrashingHook(hook, crash_after), store, desired, run_id="crashed")
    assert store.manifest() is None

    _, result = sync_once(hook, store, twenty_members(), run_id="rerun")

    assert result.failed == []
    members, records = read_back(hook)
    assert_matches(desired, members, records)
    operations, _ = sync_once(hook, store, twenty_members(), run_id="check")
    assert operations == []
