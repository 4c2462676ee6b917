"""Loader behaviour against a fake Memberstack app reached through the real MemberstackHook."""

from __future__ import annotations

import logging

import pytest

from ghl_memberstack.diff import plan_operations
from ghl_memberstack.load import (
    LoadConfigError,
    Loader,
    PreflightError,
    apply_result,
    fold_journal,
)
from ghl_memberstack.mapping import Mapping
from ghl_memberstack.snapshot import Journal, empty_applied
from ghl_memberstack.state import OpKind

from fake_memberstack import APP_CUSTOM_FIELDS, SimulatedCrash
from loader_frames import JSON_MAPPING, LOCATION, MAPPING, contact, desired_state, ids, note, task


def load(hook, journal, desired, applied, mapping=MAPPING, **loader_kwargs):
    """Plan, run and apply one load; return (new applied state, result)."""
    operations = plan_operations(desired, applied, mapping, observed_contact_ids=ids(desired))
    loader = Loader(hook, journal, location_id=LOCATION, concurrency=4, **loader_kwargs)
    result = loader.run(operations, desired=desired, observed_contact_ids=ids(desired))
    return apply_result(applied, desired, result, observed_contact_ids=ids(desired)), result


def fresh_journal(storage_root, name):
    return Journal(storage_root / "state" / "test" / "journal" / name, name)


def first_desired():
    return desired_state(
        [contact("C1", tags="vip,member", tier="Gold"), contact("C2", tags="member"), contact("C3")],
        tasks=[task("T1", "C1"), task("T2", "C1", completed=True, due="2024-05-01T00:00:00.000Z")],
        notes=[note("N1", "C2"), note("N2", "C3")],
    )


def test_first_load_creates_everything(hook, fake, journal):
    desired = first_desired()

    applied, result = load(hook, journal, desired, empty_applied())

    assert result.failed == []
    assert len(fake.members) == 3
    member = fake.members_of_contact("C1")[0]
    assert member["metaData"] == {"ghlContactId": "C1", "ghlLocationId": LOCATION}
    assert member["customFields"]["membership-tier"] == "Gold"
    assert sorted(c["planId"] for c in member["planConnections"]) == ["pln_members-free", "pln_vip-free"]
    [record] = fake.records_of("ghl_tasks", "ghl_task_id", "T2")
    assert record["data"]["member"] == member["id"]
    assert record["data"]["completed"] is True
    assert result.counts["contacts"]["created"] == 3
    assert result.counts["tasks"]["created"] == 2
    assert result.counts["notes"]["created"] == 2
    assert applied.members.loc["C1", "member_id"] == member["id"]
    assert applied.records["ghl_tasks"].loc["T2", "record_id"] == record["id"]


def test_second_run_makes_no_writes(hook, fake, journal, storage_root):
    desired = first_desired()
    applied, _ = load(hook, journal, desired, empty_applied())
    writes = fake.writes

    again, result = load(hook, fresh_journal(storage_root, "second"), first_desired(), applied)

    assert fake.writes == writes
    assert result.done == []
    assert result.counts["contacts"]["unchanged"] == 3
    assert result.counts["tasks"]["unchanged"] == 2
    assert plan_operations(first_desired(), again, MAPPING, observed_contact_ids=["C1", "C2", "C3"]) == []


def test_unlinked_member_is_adopted(hook, fake, journal):
    existing = fake.add_member("c1@example.org", custom={"first-name": "Old"})
    desired = desired_state([contact("C1")])

    applied, result = load(hook, journal, desired, empty_applied())

    assert list(fake.members) == [existing]
    assert fake.members[existing]["metaData"]["ghlContactId"] == "C1"
    assert fake.members[existing]["customFields"]["first-name"] == "Ada"
    assert applied.members.loc["C1", "member_id"] == existing
    assert fake.calls["create_member"] == 0


def test_email_of_live_contact_is_quarantined(hook, fake, journal):
    fake.add_member("c1@example.org", meta={"ghlContactId": "C9", "ghlLocationId": LOCATION})
    desired = desired_state([contact("C1"), contact("C9", email="c9@example.org")], tasks=[task("T1", "C1")])

    applied, result = load(hook, journal, desired, empty_applied())

    assert [(e.ghl_id, e.reason) for e in result.quarantine] == [("C1", "email_taken")]
    assert fake.member_by_email("c1@example.org")["metaData"]["ghlContactId"] == "C9"
    assert fake.records_of("ghl_tasks", "ghl_task_id", "T1") == []
    assert "C1" not in applied.members.index
    assert result.counts["contacts"]["failed"] == 0


def test_email_of_other_location_is_quarantined(hook, fake, journal):
    fake.add_member("c1@example.org", meta={"ghlContactId": "X1", "ghlLocationId": "OtherLocation"})

    _, result = load(hook, journal, desired_state([contact("C1")]), empty_applied())

    assert [(e.ghl_id, e.reason) for e in result.quarantine] == [("C1", "email_taken")]
    assert fake.writes == 0


def test_member_of_gone_contact_is_relinked(hook, fake, journal):
    member_id = fake.add_member("c1@example.org", meta={"ghlContactId": "C9", "ghlLocationId": LOCATION})
    desired = desired_state([contact("C1")], complete=True)

    _, result = load(hook, journal, desired, empty_applied())

    assert result.quarantine == []
    assert fake.members[member_id]["metaData"]["ghlContactId"] == "C1"
    assert len(fake.members) == 1


def test_contact_exists_decides_partial_runs(hook, fake, journal):
    member_id = fake.add_member("c1@example.org", meta={"ghlContactId": "C9", "ghlLocationId": LOCATION})
    asked = []

    def contact_exists(contact_id):
        asked.append(contact_id)
        return False

    load(hook, journal, desired_state([contact("C1")]), empty_applied(), contact_exists=contact_exists)

    assert asked == ["C9"]
    assert fake.members[member_id]["metaData"]["ghlContactId"] == "C1"


def test_email_change_updates_email(hook, fake, journal, storage_root):
    applied, _ = load(hook, journal, desired_state([contact("C1")]), empty_applied())
    member_id = applied.members.loc["C1", "member_id"]

    changed = desired_state([contact("C1", email="renamed@example.org")])
    applied, result = load(hook, fresh_journal(storage_root, "2"), changed, applied)

    assert fake.members[member_id]["auth"]["email"] == "renamed@example.org"
    assert len(fake.members) == 1
    assert applied.members.loc["C1", "email"] == "renamed@example.org"
    assert result.counts["contacts"]["updated"] == 1


def test_email_change_to_taken_email_quarantined(hook, fake, journal, storage_root):
    applied, _ = load(hook, journal, desired_state([contact("C1")]), empty_applied())
    fake.add_member("taken@example.org")
    writes = fake.writes

    changed = desired_state([contact("C1", email="taken@example.org", first="New")])
    after, result = load(hook, fresh_journal(storage_root, "2"), changed, applied)

    assert [(e.ghl_id, e.reason) for e in result.quarantine] == [("C1", "email_taken")]
    assert fake.writes == writes
    assert after.members.loc["C1", "email"] == "c1@example.org"


def test_member_deleted_by_hand_is_recreated(hook, fake, journal, storage_root):
    desired = desired_state([contact("C1", tags="vip")], tasks=[task("T1", "C1")], notes=[note("N1", "C1")])
    applied, _ = load(hook, journal, desired, empty_applied())
    old_id = applied.members.loc["C1", "member_id"]
    del fake.members[old_id]

    changed = desired_state(
        [contact("C1", tags="vip", first="Changed")], tasks=[task("T1", "C1")], notes=[note("N1", "C1")]
    )
    applied, result = load(hook, fresh_journal(storage_root, "2"), changed, applied)

    [member] = fake.members_of_contact("C1")
    assert member["id"] != old_id
    assert member["customFields"]["first-name"] == "Changed"
    assert [c["planId"] for c in member["planConnections"]] == ["pln_vip-free"]
    assert fake.records_of("ghl_tasks", "ghl_task_id", "T1")[0]["data"]["member"] == member["id"]
    assert fake.records_of("ghl_notes", "ghl_note_id", "N1")[0]["data"]["member"] == member["id"]
    assert applied.members.loc["C1", "member_id"] == member["id"]
    assert applied.records["ghl_tasks"].loc["T1", "member_id"] == member["id"]
    assert result.failed == []


def test_lost_create_reply_one_member(hook, fake, journal):
    fake.fail_after_apply["create_member"] = 1

    applied, result = load(hook, journal, desired_state([contact("C1")]), empty_applied())

    assert len(fake.members) == 1
    assert result.failed == []
    assert applied.members.loc["C1", "member_id"] == next(iter(fake.members))


def test_lost_record_reply_one_record(hook, fake, journal):
    fake.fail_after_apply["create_record"] = 1

    applied, result = load(
        hook, journal, desired_state([contact("C1")], tasks=[task("T1", "C1")]), empty_applied()
    )

    assert len(fake.records_of("ghl_tasks", "ghl_task_id", "T1")) == 1
    assert result.failed == []
    assert applied.records["ghl_tasks"].loc["T1", "record_id"] == next(iter(fake.records["ghl_tasks"]))


def many_contacts(count):
    members = [contact(f"C{i:02d}", tags="vip" if i % 2 else "member") for i in range(count)]
    tasks = [task(f"T{i:02d}", f"C{i:02d}") for i in range(count)]
    notes = [note(f"N{i:02d}", f"C{i:02d}") for i in range(0, count, 2)]
    return desired_state(members, tasks=tasks, notes=notes)


@pytest.mark.parametrize("crash_after", [1, 2, 7, 15, 29])
def test_crash_then_rerun_applies_once(hook, fake, storage_root, crash_after):
    desired = many_contacts(10)
    operations = plan_operations(desired, empty_applied(), MAPPING, observed_contact_ids=ids(desired))
    fake.crash_after_writes = crash_after
    first = fresh_journal(storage_root, "base")
    with pytest.raises(SimulatedCrash):
        Loader(hook, first, location_id=LOCATION, concurrency=3).run(operations, desired=desired)
    writes_before = fake.writes

    reopened = fresh_journal(storage_root, "base")
    assert reopened.resumed
    applied = fold_journal(empty_applied(), reopened)
    rebuilt = plan_operations(desired, applied, MAPPING, observed_contact_ids=ids(desired))
    result = Loader(hook, reopened, location_id=LOCATION, concurrency=3).run(rebuilt, desired=desired)
    applied = apply_result(applied, desired, result)

    assert result.failed == []
    assert fake.writes - writes_before <= len(operations) - len(first) + 1
    assert sorted(m["metaData"]["ghlContactId"] for m in fake.members.values()) == list(desired.members.index)
    assert sum(len(r) for r in fake.records.values()) == 15
    for ghl_id in desired.records["ghl_tasks"].index:
        assert len(fake.records_of("ghl_tasks", "ghl_task_id", ghl_id)) == 1
    assert plan_operations(desired, applied, MAPPING, observed_contact_ids=ids(desired)) == []


def test_journal_entries_are_skipped(hook, fake, storage_root):
    desired = many_contacts(4)
    operations = plan_operations(desired, empty_applied(), MAPPING, observed_contact_ids=ids(desired))
    Loader(hook, fresh_journal(storage_root, "base"), location_id=LOCATION).run(operations, desired=desired)
    writes = fake.writes

    result = Loader(hook, fresh_journal(storage_root, "base"), location_id=LOCATION).run(
        operations, desired=desired
    )

    assert fake.writes == writes
    assert len(result.done) == len(operations)
    assert result.member_ids == {cid: fake.members_of_contact(cid)[0]["id"] for cid in desired.members.index}


def test_fold_writes_back_a_reverted_value(hook, fake, storage_root):
    applied, _ = load(hook, fresh_journal(storage_root, "0"), desired_state([contact("C1")]), empty_applied())
    changed = desired_state([contact("C1", first="Changed")])
    operations = plan_operations(changed, applied, MAPPING, observed_contact_ids=["C1"])
    Loader(hook, fresh_journal(storage_root, "base"), location_id=LOCATION).run(operations, desired=changed)

    # The crashed run wrote "Changed"; GHL changed back before the rerun.
    folded = fold_journal(applied, fresh_journal(storage_root, "base"))
    reverted = desired_state([contact("C1")])
    [operation] = plan_operations(reverted, folded, MAPPING, observed_contact_ids=["C1"])

    assert operation.fields == {"cf:first-name": "Ada", "status": "active"}


def test_unknown_plan_stops_the_load(hook, fake, journal):
    mapping = Mapping(tag_plans={"vip": "pln_missing-free"})
    desired = desired_state([contact(f"C{i}", tags="vip", plans="pln_missing-free") for i in range(6)])

    with pytest.raises(LoadConfigError, match="pln_missing-free") as raised:
        load(hook, journal, desired, empty_applied(), mapping=mapping)

    assert fake.calls["add_plan"] < 6
    result = raised.value.result
    assert result is not None
    assert result.failed
    assert all(op.kind is not OpKind.PLAN_ADD for op in result.done)


def test_missing_custom_field_is_reported(hook, fake, journal, caplog):
    fake.custom_fields = set(APP_CUSTOM_FIELDS) - {"membership-tier"}

    with caplog.at_level(logging.WARNING, logger="ghl_memberstack.load"):
        _, result = load(hook, journal, desired_state([contact("C1", tier="Gold")]), empty_applied())

    assert result.missing_custom_fields == {"membership-tier"}
    assert "membership-tier" in caplog.text


def test_preflight_names_missing_table_and_field(hook, fake, journal):
    del fake.tables["ghl_notes"]
    del fake.tables["ghl_tasks"]["due_date"]
    loader = Loader(hook, journal, location_id=LOCATION)

    with pytest.raises(PreflightError) as raised:
        loader.preflight(MAPPING)

    message = str(raised.value)
    assert "'ghl_notes' is missing" in message
    assert "due_date" in message


def test_preflight_skips_json_tables(hook, fake, journal):
    del fake.tables["ghl_notes"]

    Loader(hook, journal, location_id=LOCATION).preflight(JSON_MAPPING)


def test_json_target_keeps_other_keys(hook, fake, journal, storage_root):
    desired = desired_state([contact("C1")], notes=[note("N1", "C1")], mapping=JSON_MAPPING)
    applied, _ = load(hook, journal, desired, empty_applied(), mapping=JSON_MAPPING)
    member = fake.members_of_contact("C1")[0]
    member["json"]["prefs"] = {"news": True}

    changed = desired_state(
        [contact("C1")], notes=[note("N1", "C1"), note("N2", "C1", body="second")], mapping=JSON_MAPPING
    )
    _, result = load(hook, fresh_journal(storage_root, "2"), changed, applied, mapping=JSON_MAPPING)

    assert member["json"]["prefs"] == {"news": True}
    assert [item["ghl_note_id"] for item in member["json"]["ghl"]["notes"]] == ["N1", "N2"]
    assert fake.records["ghl_notes"] == {}
    assert fake.calls["update_member"] == 1


def test_deactivate_policy_keeps_member(hook, fake, journal, storage_root):
    desired = desired_state([contact("C1", tags="vip"), contact("C2")], tasks=[task("T1", "C1")])
    applied, _ = load(hook, journal, desired, empty_applied())

    gone = desired_state([contact("C2")], complete=True)
    applied, result = load(hook, fresh_journal(storage_root, "2"), gone, applied)

    [member] = fake.members_of_contact("C1")
    assert member["planConnections"] == []
    assert member["customFields"]["ghl-status"] == "deleted"
    assert len(fake.records["ghl_tasks"]) == 1
    assert result.counts["contacts"]["deactivated"] == 1
    assert applied.members.loc["C1", "status"] == "deleted"
    assert plan_operations(gone, applied, MAPPING, observed_contact_ids=["C2"]) == []


def test_delete_policy_removes_member_and_records(hook, fake, journal, storage_root):
    mapping = MAPPING.model_copy(update={"delete_policy": "delete"})
    desired = desired_state(
        [contact("C1"), contact("C2")], tasks=[task("T1", "C1")], notes=[note("N1", "C1")]
    )
    applied, _ = load(hook, journal, desired, empty_applied(), mapping=mapping)

    gone = desired_state([contact("C2")], complete=True)
    applied, result = load(hook, fresh_journal(storage_root, "2"), gone, applied, mapping=mapping)

    assert fake.members_of_contact("C1") == []
    assert fake.records["ghl_tasks"] == {}
    assert fake.records["ghl_notes"] == {}
    assert result.counts["contacts"]["deleted"] == 1
    assert "C1" not in applied.members.index
    assert applied.records["ghl_tasks"].empty


def test_password_is_strong_and_never_kept(hook, fake, journal, storage_root, caplog):
    with caplog.at_level(logging.DEBUG):
        _, result = load(hook, journal, desired_state([contact("C1"), contact("C2")]), empty_applied())

    passwords = list(fake.passwords.values())
    assert len(passwords) == 2
    assert all(len(password) >= 24 for password in passwords)
    assert passwords[0] != passwords[1]
    stored = b"".join(path.read_bytes() for path in storage_root.rglob("*") if path.is_file())
    for password in passwords:
        assert password not in caplog.text
        assert password.encode() not in stored
        assert password not in repr(result)


def test_failed_update_is_retried_next_run(hook, fake, journal, storage_root):
    applied, _ = load(hook, journal, desired_state([contact("C1"), contact("C2")]), empty_applied())
    fake.fail_before_apply["update_member"] = 10

    changed = desired_state([contact("C1", first="New"), contact("C2", first="Other")])
    after, result = load(hook, fresh_journal(storage_root, "2"), changed, applied)

    assert result.pending == {"C1", "C2"}
    assert result.counts["contacts"]["failed"] == 2
    assert after.members.loc["C1", "cf:first-name"] == "Ada"
    retry = plan_operations(changed, after, MAPPING, observed_contact_ids=["C1", "C2"])
    assert [(op.kind, op.contact_id) for op in retry] == [
        (OpKind.MEMBER_UPDATE, "C1"),
        (OpKind.MEMBER_UPDATE, "C2"),
    ]


def test_partial_contact_keeps_finished_writes(hook, fake, journal, storage_root):
    applied, _ = load(hook, journal, desired_state([contact("C1")]), empty_applied())
    fake.fail_before_apply["create_record"] = 10

    changed = desired_state([contact("C1", tags="vip")], tasks=[task("T1", "C1")])
    after, result = load(hook, fresh_journal(storage_root, "2"), changed, applied)

    assert result.pending == {"C1"}
    assert result.counts["tasks"]["failed"] == 1
    assert result.counts["contacts"]["updated"] == 1
    assert result.counts["contacts"]["failed"] == 0
    assert after.members.loc["C1", "plans"] == "pln_vip-free"
    assert after.members.loc["C1", "cf:ghl-tags"] == "vip"
    assert "T1" not in after.records["ghl_tasks"].index
    retry = plan_operations(changed, after, MAPPING, observed_contact_ids=["C1"])
    assert [op.kind for op in retry] == [OpKind.RECORD_CREATE]


def test_record_deleted_by_hand_is_recreated(hook, fake, journal, storage_root):
    applied, _ = load(
        hook, journal, desired_state([contact("C1")], tasks=[task("T1", "C1")]), empty_applied()
    )
    fake.records["ghl_tasks"].clear()

    changed = desired_state([contact("C1")], tasks=[task("T1", "C1", title="New title")])
    after, result = load(hook, fresh_journal(storage_root, "2"), changed, applied)

    [record] = fake.records_of("ghl_tasks", "ghl_task_id", "T1")
    assert record["data"]["title"] == "New title"
    assert after.records["ghl_tasks"].loc["T1", "record_id"] == record["id"]
    assert result.failed == []


def test_member_index_finds_link_under_old_email(hook, fake, journal):
    linked = fake.add_member("old@example.org", meta={"ghlContactId": "C1", "ghlLocationId": LOCATION})

    applied, _ = load(
        hook,
        journal,
        desired_state([contact("C1"), contact("C2")]),
        empty_applied(),
        member_index_threshold=1,
    )

    assert fake.calls["get_member"] == 0
    assert fake.members[linked]["auth"]["email"] == "c1@example.org"
    assert applied.members.loc["C1", "member_id"] == linked
    assert len(fake.members) == 2


def test_member_index_email_held_by_other(hook, fake, journal):
    linked = fake.add_member("old@example.org", meta={"ghlContactId": "C1", "ghlLocationId": LOCATION})
    fake.add_member("c1@example.org")

    _, result = load(hook, journal, desired_state([contact("C1")]), empty_applied(), member_index_threshold=1)

    assert [(e.ghl_id, e.reason) for e in result.quarantine] == [("C1", "email_taken")]
    assert fake.members[linked]["auth"]["email"] == "old@example.org"
    assert fake.writes == 0
