"""The default mapping rules: from parsed GHL frames to the desired Memberstack state."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from ghl_records import (
    DEFINITIONS,
    LOCATION_ID,
    MAPPING,
    TIER_FIELD_ID,
    appointment,
    contact,
    desired,
    frame_of,
    note,
    reasons,
    task,
)

from ghl_memberstack import models
from ghl_memberstack.mapping import (
    TABLE_FIELD_TYPES,
    Mapping,
    build_desired,
    field_keys_by_id,
    member_columns,
    record_columns,
    unknown_custom_field_ids,
)

JSON_MAPPING = Mapping(
    tag_plans={"vip": "pln_vip-free"},
    entities={"tasks": "json", "notes": "json", "appointments": "data_table"},
)


def member(state, contact_id: str) -> dict:
    return state.members.loc[contact_id].to_dict()


def test_members_frame_shape():
    state = desired([contact("c1")])

    assert list(state.members.columns) == [
        "email",
        "cf:first-name",
        "cf:last-name",
        "cf:phone",
        "cf:ghl-tags",
        "cf:ghl-status",
        "cf:membership-tier",
        "plans",
        "status",
        "json",
        "date_updated",
    ]
    assert list(state.members.columns) == member_columns(MAPPING)
    assert state.members.index.name == "contact_id"
    assert str(state.members.index.dtype) == "string"
    assert str(state.members["date_updated"].dtype) == "Int64"
    assert all(str(state.members[column].dtype) == "string" for column in state.members.columns[:-1])
    assert state.complete is True


def test_member_values():
    state = desired([contact("c1", firstName="Ada", lastName="Byron", tags=["vip"], country="GB")])

    row = member(state, "c1")

    assert row["email"] == "c1@example.org"
    assert row["cf:first-name"] == "Ada"
    assert row["cf:last-name"] == "Byron"
    assert row["cf:ghl-tags"] == "vip"
    assert row["cf:ghl-status"] == "active"
    assert row["status"] == "active"
    assert row["plans"] == "pln_vip-free"
    assert row["date_updated"] == 1709632800000
    assert pd.isna(row["json"])


def test_email_trimmed_and_lower_cased():
    state = desired([contact("c1", email="  Ada.Byron@Example.ORG ")])

    assert member(state, "c1")["email"] == "ada.byron@example.org"


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        (None, "missing_email"),
        ("   ", "missing_email"),
        ("ada@", "invalid_email"),
        ("ada at example", "invalid_email"),
    ],
)
def test_bad_email_quarantined(email, reason):
    state = desired([contact("c1", email=email), contact("c2")])

    assert reasons(state) == {("contacts", "c1"): reason}
    assert list(state.members.index) == ["c2"]


def test_contact_without_email_key():
    record = contact("c1")
    del record["email"]

    assert reasons(desired([record])) == {("contacts", "c1"): "missing_email"}


def test_duplicate_email_earliest_added_wins():
    state = desired(
        [
            contact("c1", email="Ada@Example.org", dateAdded="2024-03-02T00:00:00Z"),
            contact("c2", email=" ada@example.org", dateAdded="2024-03-01T00:00:00Z"),
            contact("c3", email="ada@example.org", dateAdded="2024-03-03T00:00:00Z"),
        ]
    )

    assert list(state.members.index) == ["c2"]
    assert reasons(state) == {("contacts", "c1"): "duplicate_email", ("contacts", "c3"): "duplicate_email"}
    assert all("c2" in entry.detail for entry in state.quarantine)


def test_duplicate_email_tie_smaller_id_wins():
    state = desired([contact("c9", email="x@example.org"), contact("c10", email="x@example.org")])

    assert list(state.members.index) == ["c10"]
    assert reasons(state) == {("contacts", "c9"): "duplicate_email"}


def test_duplicate_without_date_added_loses():
    state = desired(
        [contact("a1", email="x@example.org", dateAdded=None), contact("z9", email="x@example.org")]
    )

    assert list(state.members.index) == ["z9"]
    assert reasons(state) == {("contacts", "a1"): "duplicate_email"}


def test_records_of_quarantined_contacts():
    state = desired(
        [
            contact("c1", email="bad"),
            contact("c2"),
            contact("c3", email="c2@example.org", dateAdded="2025-01-01T00:00:00Z"),
        ],
        tasks=[task("t1", "c1"), task("t2", "c2"), task("t3", "c3")],
        notes=[note("n1", "c1")],
        appointments=[appointment("a3", "c3")],
    )

    assert reasons(state) == {
        ("contacts", "c1"): "invalid_email",
        ("contacts", "c3"): "duplicate_email",
        ("tasks", "t1"): "contact_quarantined",
        ("tasks", "t3"): "contact_quarantined",
        ("notes", "n1"): "contact_quarantined",
        ("appointments", "a3"): "contact_quarantined",
    }
    assert list(state.records["ghl_tasks"].index) == ["t2"]
    assert state.records["ghl_notes"].empty


def test_record_of_unextracted_contact():
    state = desired([contact("c1")], tasks=[task("t1", "c1"), task("t2", "c404")])

    assert reasons(state) == {("tasks", "t2"): "unknown_contact"}
    assert list(state.records["ghl_tasks"].index) == ["t1"]


def test_task_frame_without_contact_id():
    rows, _ = models.parse_page("tasks", [task("t1", "c1")])
    orphan = dict(rows[0], id="t2", contact_id=None)
    tasks = models.frame("tasks", [*rows, orphan])

    state = build_desired(
        frame_of("contacts", [contact("c1")]),
        tasks,
        None,
        None,
        DEFINITIONS,
        MAPPING,
        location_id=LOCATION_ID,
        complete=True,
    )

    assert reasons(state) == {("tasks", "t2"): "missing_contact_id"}


def test_unicode_and_emoji_names():
    state = desired([contact("c1", firstName="Zoë 🎉", lastName=None)])

    assert member(state, "c1")["cf:first-name"] == "Zoë 🎉"
    assert member(state, "c1")["cf:last-name"] == ""


def test_phone_uses_contact_country():
    state = desired(
        [contact("c1", phone="020 7946 0958", country="GB"), contact("c2", phone="(555) 555-0123")]
    )

    assert member(state, "c1")["cf:phone"] == "+442079460958"
    assert member(state, "c2")["cf:phone"] == "+15555550123"


def test_phone_default_region_from_mapping():
    mapping = MAPPING.model_copy(update={"default_region": "GB"})

    state = desired([contact("c1", phone="020 7946 0958")], mapping=mapping)

    assert member(state, "c1")["cf:phone"] == "+442079460958"


def test_unparseable_phone_kept_with_warning(caplog):
    caplog.set_level(logging.WARNING, logger="ghl_memberstack.mapping")

    state = desired([contact("c1", phone="  call me maybe  "), contact("c2", phone=None)])

    assert member(state, "c1")["cf:phone"] == "call me maybe"
    assert member(state, "c2")["cf:phone"] == ""
    warnings = [record.getMessage() for record in caplog.records if "phone" in record.getMessage()]
    assert len(warnings) == 1
    assert "c1" in warnings[0]
    assert "call me" not in warnings[0]


def test_tags_normalised_and_plans():
    state = desired(
        [
            contact("c1", tags=[" VIP ", "Member, newsletter", "vip", "Premium"]),
            contact("c2", tags=["  member  "]),
            contact("c3", tags=None),
        ]
    )

    assert member(state, "c1")["cf:ghl-tags"] == "member,newsletter,premium,vip"
    assert member(state, "c1")["plans"] == "pln_members-free,pln_vip-free"
    assert member(state, "c2")["plans"] == "pln_members-free"
    assert member(state, "c3")["cf:ghl-tags"] == ""
    assert member(state, "c3")["plans"] == ""


def test_two_tags_one_plan():
    mapping = Mapping(tag_plans={"gold": "pln_paid-tier-free", "silver": "pln_paid-tier-free"})

    state = desired([contact("c1", tags=["Gold", "SILVER"])], mapping=mapping)

    assert member(state, "c1")["plans"] == "pln_paid-tier-free"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"id": TIER_FIELD_ID, "value": "Gold"}, "Gold"),
        ({"id": TIER_FIELD_ID, "field_value": ["Gold", "Silver"]}, "Gold,Silver"),
        ({"id": TIER_FIELD_ID, "fieldValue": 3}, "3"),
        ({"id": TIER_FIELD_ID, "value": 2.5}, "2.5"),
        ({"id": TIER_FIELD_ID, "value": None}, ""),
        ({"key": "contact.membership_tier", "field_value": "Gold"}, "Gold"),
        ({"id": "cfUnknown", "value": "Gold"}, ""),
    ],
)
def test_custom_field_values(entry, expected):
    state = desired([contact("c1", customFields=[entry])])

    assert member(state, "c1")["cf:membership-tier"] == expected


def test_custom_field_absent_is_empty():
    state = desired([contact("c1")])

    assert member(state, "c1")["cf:membership-tier"] == ""


def test_unknown_custom_field_id_warned(caplog):
    caplog.set_level(logging.WARNING, logger="ghl_memberstack.mapping")
    fields = [{"id": "cfUnknown", "value": "x"}, {"id": TIER_FIELD_ID, "value": "Gold"}]

    state = desired([contact("c1", customFields=fields)])

    assert member(state, "c1")["cf:membership-tier"] == "Gold"
    assert reasons(state) == {}
    assert any("cfUnknown" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "definitions",
    [
        DEFINITIONS,
        {TIER_FIELD_ID: "contact.membership_tier"},
        [{"id": TIER_FIELD_ID, "field_key": "contact.membership_tier"}],
        frame_of("custom_fields", DEFINITIONS),
    ],
)
def test_definition_shapes(definitions):
    assert field_keys_by_id(definitions) == {TIER_FIELD_ID: "contact.membership_tier"}
    state = desired(
        [contact("c1", customFields=[{"id": TIER_FIELD_ID, "value": "Gold"}])], definitions=definitions
    )
    assert member(state, "c1")["cf:membership-tier"] == "Gold"


def test_unknown_custom_field_ids():
    contacts = frame_of(
        "contacts",
        [
            contact("c1", customFields=[{"id": TIER_FIELD_ID, "value": "a"}, {"id": "cfNew", "value": "b"}]),
            contact("c2", customFields=[{"key": "contact.other", "value": "c"}]),
            contact("c3"),
        ],
    )

    assert unknown_custom_field_ids(contacts, DEFINITIONS) == {"cfNew"}


def test_task_records():
    state = desired(
        [contact("c1")],
        tasks=[
            task("t1", "c1", dueDate="2024-03-08T10:00:00-05:00", completed=True),
            task("t2", "c1", dueDate=None, title=None, body=None),
        ],
    )

    tasks = state.records["ghl_tasks"]
    assert tasks.index.name == "ghl_id"
    assert list(tasks.columns) == record_columns("ghl_tasks")
    assert tasks.loc["t1"].to_dict() == {
        "contact_id": "c1",
        "ghl_task_id": "t1",
        "ghl_contact_id": "c1",
        "ghl_location_id": LOCATION_ID,
        "title": "Call back",
        "body": "re invoice",
        "due_date": "2024-03-08T15:00:00.000Z",
        "completed": True,
    }
    assert pd.isna(tasks.loc["t2", "due_date"])
    assert tasks.loc["t2", "title"] == ""
    assert tasks.loc["t2", "body"] == ""
    assert str(tasks["completed"].dtype) == "boolean"


def test_note_body_kept_as_is():
    body = "<h1>Notes</h1><script>alert(1)</script>" + "x" * 100_000

    state = desired([contact("c1")], notes=[note("n1", "c1", body=body)])

    notes = state.records["ghl_notes"]
    assert notes.loc["n1", "body"] == body
    assert notes.loc["n1", "date_added"] == "2024-03-02T08:00:00.000Z"
    assert list(notes.columns) == record_columns("ghl_notes")


def test_appointment_records():
    state = desired([contact("c1")], appointments=[appointment("a1", "c1")])

    row = state.records["ghl_appointments"].loc["a1"].to_dict()

    assert row == {
        "contact_id": "c1",
        "ghl_appointment_id": "a1",
        "ghl_contact_id": "c1",
        "ghl_location_id": LOCATION_ID,
        "title": "Intro call",
        "status": "confirmed",
        "start_time": "2024-03-10T10:30:00.000Z",
        "end_time": "2024-03-10T11:00:00.000Z",
    }


def test_record_columns_follow_table_fields():
    for table, fields in TABLE_FIELD_TYPES.items():
        assert record_columns(table) == ["contact_id", *(key for key in fields if key != "member")]


def test_all_tables_present_without_records():
    state = desired([contact("c1")])

    assert set(state.records) == {"ghl_tasks", "ghl_notes", "ghl_appointments"}
    assert all(frame.empty for frame in state.records.values())
    assert all(list(frame.columns) == record_columns(table) for table, frame in state.records.items())


def test_duplicate_record_read_once():
    state = desired([contact("c1")], tasks=[task("t1", "c1", title="first"), task("t1", "c1", title="again")])

    assert list(state.records["ghl_tasks"].index) == ["t1"]
    assert state.records["ghl_tasks"].loc["t1", "title"] == "first"


def test_json_target_subtree():
    state = desired(
        [contact("c1"), contact("c2")],
        tasks=[task("t2", "c1", completed=True), task("t1", "c1", dueDate=None)],
        notes=[note("n1", "c2", body="<b>hi</b>")],
        appointments=[appointment("a1", "c1")],
        mapping=JSON_MAPPING,
    )

    first = json.loads(member(state, "c1")["json"])
    second = json.loads(member(state, "c2")["json"])
    assert set(first) == {"tasks", "notes"}
    assert [item["ghl_task_id"] for item in first["tasks"]] == ["t1", "t2"]
    assert first["tasks"][0] == {
        "ghl_task_id": "t1",
        "title": "Call back",
        "body": "re invoice",
        "due_date": None,
        "completed": False,
    }
    assert first["tasks"][1]["completed"] is True
    assert first["notes"] == []
    assert second == {
        "tasks": [],
        "notes": [{"ghl_note_id": "n1", "body": "<b>hi</b>", "date_added": "2024-03-02T08:00:00.000Z"}],
    }
    assert state.records["ghl_tasks"].empty
    assert state.records["ghl_notes"].empty
    assert list(state.records["ghl_appointments"].index) == ["a1"]


def test_json_text_is_stable():
    records = [contact("c1")], [task("t1", "c1"), task("t2", "c1")]
    reordered = [contact("c1")], [task("t2", "c1"), task("t1", "c1")]

    first = desired(*records, mapping=JSON_MAPPING).members.loc["c1", "json"]
    second = desired(*reordered, mapping=JSON_MAPPING).members.loc["c1", "json"]

    assert first == second


def test_contact_read_twice_keeps_latest():
    state = desired(
        [
            contact("c1", firstName="Old", dateUpdated="2024-03-05T10:00:00Z"),
            contact("c1", firstName="New", dateUpdated="2024-03-06T10:00:00Z"),
            contact("c1", firstName="Older", dateUpdated="2024-03-04T10:00:00Z"),
        ]
    )

    assert list(state.members.index) == ["c1"]
    assert member(state, "c1")["cf:first-name"] == "New"
    assert reasons(state) == {}


def test_no_frames_at_all():
    state = build_desired(None, None, None, None, None, MAPPING, location_id=LOCATION_ID, complete=False)

    assert state.members.empty
    assert list(state.members.columns) == member_columns(MAPPING)
    assert state.complete is False
    assert state.quarantine == []


def test_frame_missing_columns_rejected():
    bad = pd.DataFrame({"id": ["c1"]})

    with pytest.raises(ValueError, match="lacks the columns"):
        build_desired(bad, None, None, None, None, MAPPING, location_id=LOCATION_ID, complete=True)


def test_mapped_field_columns_follow_mapping():
    mapping = Mapping(custom_fields={"contact.city": "city", "contact.tier": "tier"})

    state = desired([contact("c1")], mapping=mapping)

    assert [column for column in state.members.columns if column.startswith("cf:")][-2:] == [
        "cf:city",
        "cf:tier",
    ]
