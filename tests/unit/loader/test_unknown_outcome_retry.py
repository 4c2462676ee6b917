"""Record creates with an unknown outcome, and members that change hands between contacts.

The hook never resends a create that failed with a 5xx or a lost reply, because the server may
have applied it. The loader looks the record up, and sends the create again only when the record
is not there, so one 5xx does not leave the contact pending for the next run.
"""

from __future__ import annotations

from ghl_memberstack.diff import plan_operations
from ghl_memberstack.load import Loader
from ghl_memberstack.snapshot import empty_applied
from ghl_memberstack.state import AppliedState

from loader_frames import LOCATION, MAPPING, contact, desired_state, ids, members_frame, task


def run_load(hook, journal, desired, *, preflight=False):
    operations = plan_operations(desired, empty_applied(), MAPPING, observed_contact_ids=ids(desired))
    loader = Loader(hook, journal, location_id=LOCATION, concurrency=2)
    if preflight:
        loader.preflight(MAPPING)
    return loader.run(operations, desired=desired, observed_contact_ids=ids(desired))


def test_record_create_5xx_is_retried(hook, fake, journal):
    fake.fail_before_apply["create_record"] = 1

    result = run_load(hook, journal, desired_state([contact("C1")], tasks=[task("T1", "C1")]))

    assert result.failed == []
    assert result.pending == set()
    assert len(fake.records_of("ghl_tasks", "ghl_task_id", "T1")) == 1


def test_record_create_retries_are_bounded(hook, fake, journal):
    # The hook fixture allows 3 attempts, so three failures exhaust them.
    fake.fail_before_apply["create_record"] = 3

    result = run_load(hook, journal, desired_state([contact("C1")], tasks=[task("T1", "C1")]))

    assert [op.table for op, _ in result.failed] == ["ghl_tasks"]
    assert result.pending == {"C1"}
    assert fake.records_of("ghl_tasks", "ghl_task_id", "T1") == []
    assert fake.fail_before_apply["create_record"] == 0


def test_adopted_member_loses_ungranted_plan(hook, fake, journal):
    member_id = fake.add_member("c1@example.org", plans=("pln_members-free",))

    result = run_load(hook, journal, desired_state([contact("C1", tags="vip")]), preflight=True)

    assert result.failed == []
    member = fake.members[member_id]
    assert member["metaData"]["ghlContactId"] == "C1"
    assert sorted(c["planId"] for c in member["planConnections"]) == ["pln_vip-free"]


def test_relinked_member_stays_active():
    # Contact X was deleted and Y took its email, so the loader relinked X's member to Y.
    desired = desired_state([contact("Y", "shared@example.org", tags="vip")])
    desired.complete = True
    applied_rows = members_frame(
        [contact("X", "shared@example.org", tags="member"), contact("Y", "shared@example.org", tags="vip")]
    )
    applied_rows["member_id"] = ["mem_1", "mem_1"]
    applied_rows["member_id"] = applied_rows["member_id"].astype("string")
    applied = AppliedState(members=applied_rows, records={})

    operations = plan_operations(desired, applied, MAPPING, observed_contact_ids=["Y"])

    assert operations == []
