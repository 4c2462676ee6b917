"""Diff rules: which writes a change of the desired state plans, and which it does not."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from ghl_memberstack.diff import operation_hash, plan_operations
from ghl_memberstack.state import AppliedState, OpKind, QuarantineEntry

from loader_frames import JSON_MAPPING, MAPPING, contact, desired_state, ids, note, task


def applied_from(desired, member_ids=None, record_ids=None) -> AppliedState:
    """Return the applied state that loading ``desired`` in full would have produced."""
    members = desired.members.copy()
    members["member_id"] = pd.array(
        [(member_ids or {}).get(cid, f"mem_{cid}") for cid in members.index], dtype="string"
    )
    records = {}
    for table, frame in desired.records.items():
        frame = frame.copy()
        frame["record_id"] = pd.array([f"rec_{ghl_id}" for ghl_id in frame.index], dtype="string")
        frame["member_id"] = pd.array([f"mem_{cid}" for cid in frame["contact_id"]], dtype="string")
        records[table] = frame
    return AppliedState(members=members, records=records)


def summary(operations) -> list[tuple[str, str, dict]]:
    return [(op.kind.value, op.ghl_id or op.contact_id, op.fields) for op in operations]


BASE = [contact("C1", tags="vip", phone="+15550100"), contact("C2", tags="member")]
BASE_TASKS = [task("T1", "C1"), task("T2", "C2", title="Renew")]
BASE_NOTES = [note("N1", "C1")]

CASES = [
    pytest.param({}, [], id="unchanged"),
    pytest.param(
        {
            "members": [
                contact("C1", tags="vip", phone="+15550100"),
                contact("C2", tags="member"),
                contact("C3"),
            ]
        },
        [("member_create", "C3", None)],
        id="new-contact",
    ),
    pytest.param(
        {"members": [contact("C1", first="Ado", tags="vip", phone="+15550100"), BASE[1]]},
        [("member_update", "C1", {"cf:first-name": "Ado", "status": "active"})],
        id="one-field-changed",
    ),
    pytest.param(
        {"members": [contact("C1", email="new@example.org", tags="vip", phone="+15550100"), BASE[1]]},
        [("member_update", "C1", {"email": "new@example.org", "status": "active"})],
        id="email-change",
    ),
    pytest.param(
        {"members": [contact("C1", tags="vip,member", phone="+15550100"), BASE[1]]},
        [
            ("member_update", "C1", {"cf:ghl-tags": "member,vip", "status": "active"}),
            ("plan_add", "C1", {"plan": "pln_members-free"}),
        ],
        id="tag-adds-plan",
    ),
    pytest.param(
        {"members": [contact("C1", tags="", phone="+15550100"), BASE[1]]},
        [
            ("member_update", "C1", {"cf:ghl-tags": "", "status": "active"}),
            ("plan_remove", "C1", {"plan": "pln_vip-free"}),
        ],
        id="tag-removes-plan",
    ),
    pytest.param(
        {"tasks": [task("T1", "C1", title="Call again"), BASE_TASKS[1]]},
        [("record_update", "T1", {"title": "Call again"})],
        id="record-field-changed",
    ),
    pytest.param({"tasks": [BASE_TASKS[0]]}, [("record_delete", "T2", {})], id="record-gone"),
    pytest.param(
        {"notes": BASE_NOTES + [note("N2", "C2")]}, [("record_create", "N2", None)], id="record-new"
    ),
]


@pytest.mark.parametrize(("change", "expected"), CASES)
def test_diff_cases(change, expected):
    applied = applied_from(desired_state(BASE, tasks=BASE_TASKS, notes=BASE_NOTES))
    desired = desired_state(
        change.get("members", BASE),
        tasks=change.get("tasks", BASE_TASKS),
        notes=change.get("notes", BASE_NOTES),
    )

    operations = plan_operations(desired, applied, MAPPING, observed_contact_ids=ids(desired))

    got = [(kind, target, fields) for kind, target, fields in summary(operations)]
    assert [(kind, target) for kind, target, _ in got] == [(kind, target) for kind, target, _ in expected]
    for (_, _, fields), (_, _, wanted) in zip(got, expected, strict=True):
        if wanted is not None:
            assert fields == wanted


def test_missing_null_and_empty_compare_equal():
    desired = desired_state([contact("C1", phone="")])
    applied = applied_from(desired)
    applied.members["cf:phone"] = pd.array([None], dtype="string")
    applied.members = applied.members.drop(columns=["cf:membership-tier"])

    assert plan_operations(desired, applied, MAPPING, observed_contact_ids=["C1"]) == []


def test_cleared_field_is_reported():
    applied = applied_from(desired_state([contact("C1", phone="+15550100")]))
    desired = desired_state([contact("C1", phone="")])

    [operation] = plan_operations(desired, applied, MAPPING, observed_contact_ids=["C1"])

    assert operation.kind is OpKind.MEMBER_UPDATE
    assert operation.cleared == ("cf:phone",)
    assert operation.fields["cf:phone"] == ""


def test_new_contact_plans_and_records():
    desired = desired_state(
        [contact("C1", tags="vip,member")], tasks=[task("T1", "C1")], notes=[note("N1", "C1")]
    )
    empty = applied_from(desired_state([]))

    operations = plan_operations(desired, empty, MAPPING, observed_contact_ids=["C1"])

    kinds = [(op.kind, op.fields.get("plan") or op.table) for op in operations]
    assert kinds == [
        (OpKind.MEMBER_CREATE, None),
        (OpKind.PLAN_ADD, "pln_members-free"),
        (OpKind.PLAN_ADD, "pln_vip-free"),
        (OpKind.RECORD_CREATE, "ghl_tasks"),
        (OpKind.RECORD_CREATE, "ghl_notes"),
    ]
    create = operations[0]
    assert create.fields["email"] == "c1@example.org"
    assert create.fields["cf:ghl-tags"] == "member,vip"
    assert "json" not in create.fields
    assert operations[3].fields["completed"] is False
    assert operations[3].member_id is None


def test_unmanaged_plan_is_never_touched():
    applied = applied_from(desired_state([contact("C1", tags="vip")]))
    applied.members.loc["C1", "plans"] = "pln_premium-paid,pln_vip-free"
    desired = desired_state([contact("C1", tags="")])

    operations = plan_operations(desired, applied, MAPPING, observed_contact_ids=["C1"])

    plan_ops = [
        (op.kind, op.fields["plan"]) for op in operations if op.kind in (OpKind.PLAN_ADD, OpKind.PLAN_REMOVE)
    ]
    assert plan_ops == [(OpKind.PLAN_REMOVE, "pln_vip-free")]


def test_unobserved_contact_untouched():
    applied = applied_from(desired_state(BASE, tasks=BASE_TASKS))
    desired = desired_state(
        [contact("C1", first="Changed", tags="vip", phone="+15550100"), BASE[1]], tasks=[]
    )

    operations = plan_operations(desired, applied, MAPPING, observed_contact_ids=["C2"])

    assert summary(operations) == [("record_delete", "T2", {})]


def test_partial_observation_deletes_nothing():
    applied = applied_from(desired_state(BASE, tasks=BASE_TASKS))
    desired = desired_state([BASE[1]], tasks=[BASE_TASKS[1]], complete=False)

    assert plan_operations(desired, applied, MAPPING, observed_contact_ids=["C2"]) == []


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param("deactivate", [("plan_remove", "C1"), ("member_update", "C1")], id="deactivate"),
        pytest.param(
            "delete", [("record_delete", "T1"), ("record_delete", "N1"), ("member_delete", "C1")], id="delete"
        ),
        pytest.param("ignore", [], id="ignore"),
    ],
)
def test_gone_contact_follows_delete_policy(policy, expected):
    applied = applied_from(desired_state(BASE, tasks=BASE_TASKS, notes=BASE_NOTES))
    desired = desired_state([BASE[1]], tasks=[BASE_TASKS[1]], complete=True)
    mapping = MAPPING.model_copy(update={"delete_policy": policy})

    operations = plan_operations(desired, applied, mapping, observed_contact_ids=["C2"])

    assert [(kind, target) for kind, target, _ in summary(operations)] == expected
    if policy == "deactivate":
        assert operations[1].fields == {"status": "deleted", "cf:ghl-status": "deleted"}


def test_deactivated_contact_not_deactivated_twice():
    applied = applied_from(desired_state(BASE))
    applied.members.loc["C1", ["status", "cf:ghl-status", "plans"]] = ["deleted", "deleted", ""]
    desired = desired_state([BASE[1]], complete=True)

    assert plan_operations(desired, applied, MAPPING, observed_contact_ids=["C2"]) == []


def test_quarantined_contact_is_not_deleted():
    applied = applied_from(desired_state(BASE, tasks=BASE_TASKS))
    quarantine = [
        QuarantineEntry("contacts", "C1", "invalid_email"),
        QuarantineEntry("tasks", "T1", "contact_quarantined"),
    ]
    desired = desired_state([BASE[1]], tasks=[BASE_TASKS[1]], complete=True, quarantine=quarantine)

    assert plan_operations(desired, applied, MAPPING, observed_contact_ids=["C1", "C2"]) == []


def test_json_target_one_update_per_member():
    base_notes = [note("N1", "C1"), note("N2", "C1")]
    applied = applied_from(desired_state(BASE, notes=base_notes, mapping=JSON_MAPPING))
    changed = [note("N1", "C1", body="edited"), note("N2", "C1"), note("N3", "C1")]
    desired = desired_state(BASE, notes=changed, mapping=JSON_MAPPING)

    operations = plan_operations(desired, applied, JSON_MAPPING, observed_contact_ids=ids(desired))

    assert [(op.kind, op.contact_id) for op in operations] == [(OpKind.MEMBER_UPDATE, "C1")]
    assert set(operations[0].fields) == {"json", "status"}
    assert '"edited"' in operations[0].fields["json"]


def test_json_absent_is_never_diffed():
    applied = applied_from(desired_state(BASE))
    applied.members["json"] = pd.array(['{"notes":[]}', None], dtype="string")
    desired = desired_state(BASE)

    assert plan_operations(desired, applied, MAPPING, observed_contact_ids=ids(desired)) == []


def test_record_moved_to_other_contact_relinks():
    applied = applied_from(desired_state(BASE, tasks=BASE_TASKS))
    desired = desired_state(BASE, tasks=[task("T1", "C2"), BASE_TASKS[1]])

    [operation] = plan_operations(desired, applied, MAPPING, observed_contact_ids=ids(desired))

    assert operation.kind is OpKind.RECORD_UPDATE
    assert operation.contact_id == "C2"
    assert operation.member_id == "mem_C2"
    assert operation.fields == {"ghl_contact_id": "C2", "member": None}


def test_keys_stable_across_rebuilds():
    empty = applied_from(desired_state([]))
    desired = desired_state([contact("C1", tags="vip")], tasks=[task("T1", "C1")])
    first = plan_operations(desired, empty, MAPPING, observed_contact_ids=["C1"])
    rebuilt = desired_state([contact("C1", tags="vip")], tasks=[task("T1", "C1")])
    second = plan_operations(rebuilt, empty, MAPPING, observed_contact_ids=["C1"])
    changed = desired_state([contact("C1", tags="vip")], tasks=[task("T1", "C1", title="Other")])
    third = plan_operations(changed, empty, MAPPING, observed_contact_ids=["C1"])

    assert [op.key for op in first] == [op.key for op in second]
    assert first[-1].key != third[-1].key
    assert first[0].key == third[0].key


def test_operation_hash_ignores_key_order():
    assert operation_hash({"a": 1, "b": "x"}) == operation_hash({"b": "x", "a": 1})
    assert operation_hash({"a": 1}) != operation_hash({"a": 2})


def test_new_mapping_field_is_written():
    applied = applied_from(desired_state([contact("C1")]))
    applied.members = applied.members.drop(columns=["cf:membership-tier"])
    desired = desired_state([contact("C1", tier="Gold")])

    [operation] = plan_operations(desired, applied, MAPPING, observed_contact_ids=["C1"])

    assert operation.fields == {"cf:membership-tier": "Gold", "status": "active"}


def test_invalid_delete_policy_raises():
    desired = desired_state([], complete=True)
    bad = dataclasses.make_dataclass("BadMapping", [("tag_plans", dict), ("delete_policy", str)])({}, "purge")

    with pytest.raises(ValueError, match="purge"):
        plan_operations(desired, applied_from(desired_state([])), bad, observed_contact_ids=[])
