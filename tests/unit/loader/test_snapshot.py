"""Snapshot store: round trips, atomic commits, schema checks, retention and the journal."""

from __future__ import annotations

import pandas as pd
import pytest

import ghl_memberstack.snapshot as snapshot_module
from ghl_memberstack.snapshot import (
    Journal,
    JournalEntry,
    Manifest,
    SnapshotError,
    SnapshotSchemaError,
    SnapshotStore,
    empty_applied,
    snapshot_retention,
)
from ghl_memberstack.state import SCHEMA_VERSION, AppliedState

from loader_frames import contact, desired_state, note, task


def applied_state(first_name: str = "Ada") -> AppliedState:
    desired = desired_state(
        [contact("C1", first=first_name, tags="vip"), contact("C2", phone="")],
        tasks=[task("T1", "C1", completed=True)],
        notes=[note("N1", "C2", body="<b>x</b>")],
    )
    members = desired.members.copy()
    members["member_id"] = pd.array(["mem_1", "mem_2"], dtype="string")
    records = {}
    for table, frame in desired.records.items():
        frame = frame.copy()
        frame["record_id"] = pd.array([f"rec_{i}" for i in frame.index], dtype="string")
        frame["member_id"] = pd.array(["mem_1"] * len(frame), dtype="string")
        records[table] = frame
    return AppliedState(members=members, records=records)


def manifest(**values) -> Manifest:
    return Manifest(watermark_ms=1_700_000_000_000, pending=("C2",), run_id="manual__1", **values)


def test_empty_store_has_no_manifest(storage_root):
    store = SnapshotStore(storage_root, "pair-a", retention=3)

    assert store.manifest() is None
    assert store.applied().members.empty
    assert store.is_current_schema()


def test_commit_round_trip_keeps_values_and_dtypes(storage_root):
    store = SnapshotStore(storage_root, "pair-a", retention=3)
    applied = applied_state()

    written = store.commit(applied, manifest(custom_fields=({"id": "cf1", "fieldKey": "contact.tier"},)))
    read = store.applied()

    assert store.manifest() == written
    assert written.schema_version == SCHEMA_VERSION
    assert written.pending == ("C2",)
    assert written.files["members.parquet"]["rows"] == 2
    pd.testing.assert_frame_equal(read.members, applied.members)
    for table, frame in applied.records.items():
        pd.testing.assert_frame_equal(read.records[table], frame)
    assert read.members["cf:first-name"].dtype == "string"
    assert read.members["date_updated"].dtype == "Int64"
    assert read.records["ghl_tasks"]["completed"].dtype == "boolean"


def test_crash_before_manifest_keeps_previous(storage_root, monkeypatch):
    store = SnapshotStore(storage_root, "pair-a", retention=3)
    first = store.commit(applied_state("First"), manifest())
    real_write = snapshot_module.write_atomic

    def crash_on_manifest(path, data):
        if path.name == "manifest.json":
            raise OSError("simulated crash while writing the manifest")
        real_write(path, data)

    monkeypatch.setattr(snapshot_module, "write_atomic", crash_on_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        store.commit(applied_state("Second"), manifest())
    monkeypatch.setattr(snapshot_module, "write_atomic", real_write)

    assert store.manifest() == first
    assert store.applied().members.loc["C1", "cf:first-name"] == "First"


def test_crash_mid_snapshot_files_keeps_previous(storage_root, monkeypatch):
    store = SnapshotStore(storage_root, "pair-a", retention=3)
    first = store.commit(applied_state("First"), manifest())
    real_write = snapshot_module.write_atomic
    written = []

    def crash_on_second_file(path, data):
        written.append(path.name)
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")
        real_write(path, data)

    monkeypatch.setattr(snapshot_module, "write_atomic", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        store.commit(applied_state("Second"), manifest())
    monkeypatch.setattr(snapshot_module, "write_atomic", real_write)

    reopened = SnapshotStore(storage_root, "pair-a", retention=3)
    assert reopened.manifest() == first
    assert reopened.applied().members.loc["C1", "cf:first-name"] == "First"


def test_older_schema_needs_full_refresh(storage_root):
    store = SnapshotStore(storage_root, "pair-a", retention=3)
    store.commit(applied_state(), manifest())
    old = Manifest.from_json(store.manifest_path.read_bytes())
    store.manifest_path.write_bytes(
        Manifest(**{**old.__dict__, "schema_version": SCHEMA_VERSION - 1}).to_json()
    )

    assert not store.is_current_schema()
    with pytest.raises(SnapshotSchemaError, match="full_refresh"):
        store.applied()


def test_corrupt_snapshot_file_is_detected(storage_root):
    store = SnapshotStore(storage_root, "pair-a", retention=3)
    current = store.commit(applied_state(), manifest())
    path = store.path / "snapshots" / current.snapshot_id / "members.parquet"
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(SnapshotError, match="checksum"):
        store.applied()


def test_retention_keeps_newest_snapshots(storage_root):
    store = SnapshotStore(storage_root, "pair-a", retention=2)
    ids = [store.commit(applied_state(f"N{i}"), manifest()).snapshot_id for i in range(4)]

    assert store.snapshot_ids() == ids[-2:]
    assert store.applied().members.loc["C1", "cf:first-name"] == "N3"


def test_retention_setting_from_environment(monkeypatch):
    monkeypatch.setenv("GHL_MEMBERSTACK_SNAPSHOT_RETENTION", "7")
    assert snapshot_retention() == 7
    monkeypatch.setenv("GHL_MEMBERSTACK_SNAPSHOT_RETENTION", "0")
    with pytest.raises(ValueError, match="at least 1"):
        snapshot_retention()
    monkeypatch.setenv("GHL_MEMBERSTACK_SNAPSHOT_RETENTION", "many")
    with pytest.raises(ValueError, match="whole number"):
        snapshot_retention()


def test_invalid_pair_name_is_rejected(storage_root):
    with pytest.raises(ValueError, match="pair name"):
        SnapshotStore(storage_root, "../escape", retention=1)


def entry(key: str, **values) -> JournalEntry:
    return JournalEntry(
        key=key, kind="member_update", contact_id="C1", fields={"cf:first-name": "x"}, **values
    )


def test_journal_entries_survive_reopen(storage_root):
    store = SnapshotStore(storage_root, "pair-a", retention=3)
    journal = store.journal(None)
    assert not journal.resumed
    journal.mark_started("run-1")
    journal.record(entry("member:update:C1:aa", member_id="mem_1"))
    journal.record(entry("member:update:C1:bb", member_id="mem_1"))

    reopened = store.journal(None)

    assert reopened.resumed
    assert [e.key for e in reopened.entries()] == ["member:update:C1:aa", "member:update:C1:bb"]
    assert "member:update:C1:aa" in reopened
    assert reopened.get("member:update:C1:bb").member_id == "mem_1"


def test_start_marker_alone_means_resumed(storage_root):
    store = SnapshotStore(storage_root, "pair-a", retention=3)
    store.journal("snap-1").mark_started("run-1")

    assert store.journal("snap-1").resumed
    assert not store.journal("snap-2").resumed


def test_commit_removes_journal_of_old_base(storage_root):
    store = SnapshotStore(storage_root, "pair-a", retention=3)
    journal = store.journal(None)
    journal.record(entry("member:update:C1:aa"))

    current = store.commit(applied_state(), manifest())

    assert len(store.journal(None)) == 0
    assert len(store.journal(current.snapshot_id)) == 0


def test_memory_journal_writes_nothing(storage_root):
    journal = Journal(None, "dry-run")
    journal.record(entry("member:update:C1:aa"))

    assert len(journal) == 1
    assert not (storage_root / "state").exists()


def test_empty_applied_has_typed_columns():
    members = empty_applied().members

    assert members.index.name == "contact_id"
    assert members["member_id"].dtype == "string"
    assert members["date_updated"].dtype == "Int64"
