"""Actual Memberstack state and its comparison with the desired state, on hand-built listings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loader"))

from loader_frames import JSON_MAPPING, LOCATION, MAPPING, appointment, contact, desired_state, note, task  # noqa: E402

from ghl_memberstack import parity_findings as pf  # noqa: E402
from ghl_memberstack.diff import MEMBER_LINK_FIELD, plan_operations  # noqa: E402
from ghl_memberstack.state import OpKind, QuarantineEntry  # noqa: E402

CONTACTS = [
    contact("C1", tags="vip", first="Ada"),
    contact("C2", tags="member", first="Grace"),
    contact("C3", first="Edsger"),
]
TASKS = [task("T1", "C1", title="Call back"), task("T2", "C2", title="Send invoice", completed=True)]
NOTES = [note("N1", "C1"), note("N2", "C3", body="<b>Prefers email</b>")]
APPOINTMENTS = [appointment("A1", "C2")]
TABLE_ROWS = {"ghl_tasks": TASKS, "ghl_notes": NOTES, "ghl_appointments": APPOINTMENTS}


def member(row: dict[str, Any], member_id: str, **changes: Any) -> dict[str, Any]:
    """Return the member the loader writes for a desired row, as the API lists it."""
    body = {
        "id": member_id,
        "auth": {"email": row["email"]},
        "customFields": {key[3:]: value for key, value in row.items() if key.startswith("cf:")},
        "metaData": {"ghlContactId": row["contact_id"], "ghlLocationId": LOCATION},
        "planConnections": [
            {"planId": plan, "status": "ACTIVE"} for plan in (row["plans"] or "").split(",") if plan
        ],
    }
    body.update(changes)
    return body


def record(row: dict[str, Any], record_id: str, member_id: str) -> dict[str, Any]:
    """Return the Data Table record the loader writes for a desired record row."""
    data = {
        key: value for key, value in row.items() if key not in ("ghl_id", "contact_id") and value is not None
    }
    return {"id": record_id, "data": data | {"member": member_id}}


def listing(contacts: list[dict[str, Any]] = CONTACTS) -> pf.MemberstackObservation:
    """Return a listing in which Memberstack holds exactly what the mapping derives."""
    members = [member(row, f"mem_{row['contact_id']}") for row in contacts]
    records = {
        table: [record(row, f"rec_{row['ghl_id']}", f"mem_{row['contact_id']}") for row in rows]
        for table, rows in TABLE_ROWS.items()
    }
    return pf.MemberstackObservation(members=members, records=records)


def desired(**kwargs: Any) -> Any:
    kwargs.setdefault("complete", True)
    return desired_state(CONTACTS, tasks=TASKS, notes=NOTES, appointments=APPOINTMENTS, **kwargs)


def compare(
    observation: pf.MemberstackObservation, wanted: Any = None, *, mapping: Any = MAPPING, covered: Any = None
):
    wanted = wanted if wanted is not None else desired()
    actual = pf.actual_state(observation, mapping, location_id=LOCATION, desired=wanted)
    covered = list(wanted.members.index) if covered is None else covered
    return pf.compare(wanted, actual, mapping, covered_contact_ids=covered), actual


def ids(findings: pf.Findings, kind: str, entity: str) -> set[str]:
    return {item["ghl_id"] for item in findings.examples.get(kind, []) if item["entity"] == entity}


def test_matching_listing_is_in_sync() -> None:
    findings, actual = compare(listing())

    assert findings.parity_by_entity() == {
        "contacts": 100.0,
        "tasks": 100.0,
        "notes": 100.0,
        "appointments": 100.0,
    }
    assert findings.counts["contacts"]["in_sync"] == 3
    assert findings.counts["tasks"]["in_sync"] == 2
    assert findings.examples == {}
    assert actual.unmanaged == []


def test_edited_field_is_field_mismatch() -> None:
    observation = listing()
    observation.members[0]["customFields"]["first-name"] = "Changed by hand"
    findings, _ = compare(observation)

    assert ids(findings, pf.FIELD_MISMATCH, "contacts") == {"C1"}
    assert findings.examples[pf.FIELD_MISMATCH][0]["fields"] == ["first-name"]
    assert findings.examples[pf.FIELD_MISMATCH][0]["member_id"] == "mem_C1"
    assert findings.fields["contacts"] == {"first-name": 1}
    assert findings.parity("contacts") == pytest.approx(100.0 * 2 / 3, abs=0.001)


def test_email_compares_case_insensitively() -> None:
    observation = listing()
    observation.members[1]["auth"]["email"] = observation.members[1]["auth"]["email"].upper()
    findings, _ = compare(observation)

    assert findings.counts["contacts"]["in_sync"] == 3


def test_removed_plan_is_plan_mismatch() -> None:
    observation = listing()
    observation.members[0]["planConnections"] = []
    findings, _ = compare(observation)
    example = findings.examples[pf.PLAN_MISMATCH][0]

    assert ids(findings, pf.PLAN_MISMATCH, "contacts") == {"C1"}
    assert example["expected"] == "pln_vip-free"
    assert example["actual"] == ""
    assert findings.mismatched["contacts"] == 1


def test_unmanaged_plan_is_not_a_mismatch() -> None:
    observation = listing()
    observation.members[0]["planConnections"].append({"planId": "pln_premium-paid"})
    findings, _ = compare(observation)

    assert findings.counts["contacts"]["in_sync"] == 3


def test_deleted_member_is_missing_and_its_records_unlinked() -> None:
    observation = listing()
    observation.members = [m for m in observation.members if m["id"] != "mem_C2"]
    findings, _ = compare(observation)

    assert ids(findings, pf.MISSING_MEMBER, "contacts") == {"C2"}
    assert ids(findings, pf.RECORD_DIFFERENT, "tasks") == {"T2"}
    assert findings.examples[pf.RECORD_DIFFERENT][0]["fields"] == [pf.MEMBER_FIELD]
    assert ids(findings, pf.RECORD_DIFFERENT, "appointments") == {"A1"}


def test_unlinked_members_are_unmanaged_with_masked_email() -> None:
    observation = listing()
    observation.members.append(
        {"id": "mem_walk_in", "auth": {"email": "walk.in@example.org"}, "metaData": {}}
    )
    findings, actual = compare(observation)

    assert actual.unmanaged == [
        {"member_id": "mem_walk_in", "email": "w***@example.org", "reason": "not_linked", "contact_id": None}
    ]
    assert findings.counts["contacts"]["unmanaged"] == 1
    assert findings.parity("contacts") == 100.0


def test_unlinked_member_with_contact_email_names_contact() -> None:
    observation = listing()
    c3 = next(m for m in observation.members if m["id"] == "mem_C3")
    c3["metaData"] = {}
    findings, actual = compare(observation)

    assert actual.unmanaged[0]["contact_id"] == "C3"
    assert ids(findings, pf.MISSING_MEMBER, "contacts") == {"C3"}


def test_member_of_other_location_is_left_out() -> None:
    observation = listing()
    observation.members.append(
        member(contact("X9"), "mem_X9", metaData={"ghlContactId": "X9", "ghlLocationId": "OtherLocation01"})
    )
    findings, actual = compare(observation)

    assert actual.other_location == 1
    assert "X9" not in actual.applied.members.index
    assert findings.counts["contacts"]["extra_member"] == 0


def test_gone_contact_with_active_member_is_extra() -> None:
    wanted = desired_state(
        CONTACTS[:2], tasks=TASKS, appointments=APPOINTMENTS, notes=NOTES[:1], complete=True
    )
    findings, _ = compare(listing(), wanted)

    assert ids(findings, pf.EXTRA_MEMBER, "contacts") == {"C3"}
    # The deactivate policy keeps a gone contact's records.
    assert findings.counts["notes"]["retired"] == 1
    assert findings.counts["notes"]["record_extra"] == 0


def test_deactivated_member_of_gone_contact_is_retired() -> None:
    wanted = desired_state(
        CONTACTS[:2], tasks=TASKS, appointments=APPOINTMENTS, notes=NOTES[:1], complete=True
    )
    observation = listing()
    gone = next(m for m in observation.members if m["id"] == "mem_C3")
    gone["customFields"]["ghl-status"] = "deleted"
    findings, _ = compare(observation, wanted)

    assert findings.counts["contacts"]["retired"] == 1
    assert findings.counts["contacts"]["extra_member"] == 0
    assert findings.parity("contacts") == 100.0


def test_delete_policy_counts_gone_records_as_extra() -> None:
    mapping = MAPPING.model_copy(update={"delete_policy": "delete"})
    wanted = desired_state(
        CONTACTS[:2], tasks=TASKS, appointments=APPOINTMENTS, notes=NOTES[:1], complete=True
    )
    observation = listing()
    next(m for m in observation.members if m["id"] == "mem_C3")["customFields"]["ghl-status"] = "deleted"
    findings, _ = compare(observation, wanted, mapping=mapping)

    assert ids(findings, pf.EXTRA_MEMBER, "contacts") == {"C3"}
    assert ids(findings, pf.RECORD_EXTRA, "notes") == {"N2"}


def test_record_missing_extra_and_different() -> None:
    observation = listing()
    observation.records["ghl_tasks"] = [r for r in observation.records["ghl_tasks"] if r["id"] != "rec_T1"]
    observation.records["ghl_notes"].append(record(note("N9", "C1"), "rec_N9", "mem_C1"))
    observation.records["ghl_appointments"][0]["data"]["title"] = "Renamed by hand"
    findings, _ = compare(observation)

    assert ids(findings, pf.RECORD_MISSING, "tasks") == {"T1"}
    assert ids(findings, pf.RECORD_EXTRA, "notes") == {"N9"}
    assert ids(findings, pf.RECORD_DIFFERENT, "appointments") == {"A1"}
    assert findings.fields["appointments"] == {"title": 1}
    assert findings.parity("tasks") == 50.0


def test_boolean_field_compares_with_stored_boolean() -> None:
    observation = listing()
    findings, actual = compare(observation)

    assert actual.applied.records["ghl_tasks"]["completed"].dtype == "boolean"
    assert findings.counts["tasks"]["record_different"] == 0


def test_uncovered_contact_notes_are_not_covered() -> None:
    wanted = desired_state(CONTACTS, tasks=TASKS, notes=NOTES[:1], appointments=APPOINTMENTS, complete=True)
    findings, _ = compare(listing(), wanted, covered=["C1", "C2"])

    assert findings.counts["notes"]["not_covered"] == 1
    assert findings.counts["notes"]["record_extra"] == 0
    assert findings.parity("notes") == 100.0


def test_quarantined_contact_member_is_left_out() -> None:
    quarantine = [QuarantineEntry("contacts", "C3", "invalid_email")]
    wanted = desired_state(
        CONTACTS[:2],
        tasks=TASKS,
        notes=NOTES[:1],
        appointments=APPOINTMENTS,
        complete=True,
        quarantine=quarantine,
    )
    findings, _ = compare(listing(), wanted)

    assert findings.counts["contacts"]["quarantined"] == 1
    assert findings.counts["notes"]["quarantined"] == 1
    assert findings.counts["contacts"]["extra_member"] == 0


def test_duplicate_link_keeps_snapshot_member() -> None:
    observation = listing()
    twin = member(CONTACTS[0], "mem_C1_twin")
    observation.members.insert(0, twin)
    wanted = desired()
    actual = pf.actual_state(
        observation, MAPPING, location_id=LOCATION, desired=wanted, known_member_ids={"C1": "mem_C1"}
    )

    assert actual.applied.members.at["C1", "member_id"] == "mem_C1"
    assert [entry["member_id"] for entry in actual.unmanaged] == ["mem_C1_twin"]
    assert actual.unmanaged[0]["reason"] == "duplicate_link"


def test_parity_of_empty_entity_is_full() -> None:
    wanted = desired_state(CONTACTS, complete=True)
    observation = listing()
    observation.records = {table: [] for table in observation.records}
    findings, _ = compare(observation, wanted)

    assert findings.parity("tasks") == 100.0
    assert findings.lowest() == ("contacts", 100.0)


def test_repair_plan_restores_hand_edits() -> None:
    observation = listing()
    observation.members[0]["customFields"]["first-name"] = "Changed by hand"
    observation.members[1]["planConnections"] = []
    wanted = desired()
    actual = pf.actual_state(observation, MAPPING, location_id=LOCATION, desired=wanted)
    operations = plan_operations(
        wanted, pf.planning_state(actual, wanted), MAPPING, observed_contact_ids=wanted.members.index
    )
    by_kind = {(op.kind, op.contact_id): op for op in operations}

    assert len(operations) == 2
    assert by_kind[(OpKind.MEMBER_UPDATE, "C1")].fields["cf:first-name"] == "Ada"
    assert by_kind[(OpKind.MEMBER_UPDATE, "C1")].member_id == "mem_C1"
    assert by_kind[(OpKind.PLAN_ADD, "C2")].fields == {"plan": "pln_members-free"}


def test_repair_plan_relinks_records_of_recreated_member() -> None:
    observation = listing()
    observation.members = [m for m in observation.members if m["id"] != "mem_C2"]
    wanted = desired()
    actual = pf.actual_state(observation, MAPPING, location_id=LOCATION, desired=wanted)
    operations = plan_operations(
        wanted, pf.planning_state(actual, wanted), MAPPING, observed_contact_ids=wanted.members.index
    )
    relinks = {op.ghl_id: op for op in operations if op.kind is OpKind.RECORD_UPDATE}

    assert [op.contact_id for op in operations if op.kind is OpKind.MEMBER_CREATE] == ["C2"]
    assert set(relinks) == {"T2", "A1"}
    assert relinks["T2"].fields == {MEMBER_LINK_FIELD: None}
    assert relinks["T2"].record_id == "rec_T2"
    assert actual.applied.records["ghl_tasks"].at["T2", "contact_id"] == "C2"


def test_repair_plan_deactivates_gone_contact() -> None:
    wanted = desired_state(
        CONTACTS[:2], tasks=TASKS, appointments=APPOINTMENTS, notes=NOTES[:1], complete=True
    )
    actual = pf.actual_state(listing(), MAPPING, location_id=LOCATION, desired=wanted)
    operations = plan_operations(
        wanted, pf.planning_state(actual, wanted), MAPPING, observed_contact_ids=wanted.members.index
    )

    assert [(op.kind, op.contact_id) for op in operations] == [(OpKind.MEMBER_UPDATE, "C3")]
    assert operations[0].fields["cf:ghl-status"] == "deleted"


def test_findings_to_dict_is_json_ready() -> None:
    observation = listing()
    observation.members[0]["customFields"]["phone"] = "+15555550100"
    findings, _ = compare(observation)
    body = findings.to_dict()

    assert json.loads(json.dumps(body)) == body
    assert body["lowest"] == {"entity": "contacts", "parity": findings.parity("contacts")}


def test_examples_are_capped_per_kind() -> None:
    rows = [contact(f"K{i:02d}") for i in range(pf.EXAMPLES_PER_KIND + 5)]
    wanted = desired_state(rows, complete=True)
    observation = pf.MemberstackObservation(members=[], records={table: [] for table in TABLE_ROWS})
    findings, _ = compare(observation, wanted)

    assert findings.counts["contacts"]["missing_member"] == len(rows)
    assert len(findings.examples[pf.MISSING_MEMBER]) == pf.EXAMPLES_PER_KIND


def test_observation_reads_json_only_when_mapped() -> None:
    calls: list[Any] = []

    class Hook:
        def list_members(self, *, include_json: bool = False):
            calls.append(("members", include_json))
            return iter([])

        def query_records(self, table: str):
            calls.append(("records", table))
            return iter([])

    pf.observe_memberstack(Hook(), JSON_MAPPING)

    assert calls == [("members", True), ("records", "ghl_tasks"), ("records", "ghl_appointments")]


def test_partial_read_leaves_unread_contacts_out() -> None:
    wanted = desired_state(
        CONTACTS[:2], tasks=TASKS, appointments=APPOINTMENTS, notes=NOTES[:1], complete=False
    )
    findings, _ = compare(listing(), wanted)

    assert findings.counts["contacts"]["extra_member"] == 0
    assert findings.counts["contacts"]["not_covered"] == 1
    assert findings.counts["notes"]["not_covered"] == 1
    assert findings.parity("contacts") == 100.0
