"""Validation of raw GHL records into flat rows and typed frames."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from ghl_records import appointment, contact, note, task

from ghl_memberstack import models


def parse_one(entity, record):
    rows, quarantine = models.parse_page(entity, [record])
    assert quarantine == []
    assert len(rows) == 1
    return rows[0]


def test_contact_row_fields():
    row = parse_one(
        "contacts",
        contact("c1", phone=" +1 555 0100 ", country="US", tags=["vip"], companyName="Ltd", dnd=False),
    )

    assert row["id"] == "c1"
    assert row["location_id"] == "LocTest0001"
    assert row["email"] == "c1@example.org"
    assert row["first_name"] == "Ada"
    assert row["last_name"] == "Byron"
    assert row["phone"] == " +1 555 0100 "
    assert row["country"] == "US"
    assert row["tags"] == ["vip"]
    assert row["custom_fields"] == {}
    assert row["date_added"] == "2024-03-01T09:15:00.000Z"
    assert row["date_added_ms"] == 1709284500000
    assert "searchAfter" not in row
    assert "companyName" not in row


@pytest.mark.parametrize(
    ("sent", "iso", "epoch_ms"),
    [
        ("2024-03-05T10:00:00.000Z", "2024-03-05T10:00:00.000Z", 1709632800000),
        ("2024-03-05T10:00:00Z", "2024-03-05T10:00:00.000Z", 1709632800000),
        ("2024-03-05T15:30:00+05:30", "2024-03-05T10:00:00.000Z", 1709632800000),
        ("2024-03-05T05:00:00.999-05:00", "2024-03-05T10:00:00.999Z", 1709632800999),
        ("2024-03-05 10:00:00", "2024-03-05T10:00:00.000Z", 1709632800000),
        (1709632800000, "2024-03-05T10:00:00.000Z", 1709632800000),
    ],
)
def test_date_updated_formats(sent, iso, epoch_ms):
    row = parse_one("contacts", contact("c1", dateUpdated=sent))

    assert row["date_updated"] == iso
    assert row["date_updated_ms"] == epoch_ms


def test_missing_date_updated_invalid():
    record = contact("c1")
    del record["dateUpdated"]

    rows, quarantine = models.parse_page("contacts", [record])

    assert rows == []
    assert [(q.entity, q.ghl_id, q.reason) for q in quarantine] == [("contacts", "c1", "invalid_record")]
    assert "dateUpdated" in quarantine[0].detail


def test_invalid_detail_omits_input_values():
    record = contact("c1", dateUpdated="secret-ada@example.org", email=["secret-bob@example.org"])

    _, quarantine = models.parse_page("contacts", [record])

    assert quarantine[0].reason == "invalid_record"
    assert "secret" not in quarantine[0].detail
    assert "dateUpdated" in quarantine[0].detail
    assert "email" in quarantine[0].detail


def test_record_without_id_or_not_object():
    records = [{"email": "x@example.org", "dateUpdated": "2024-03-05T10:00:00Z"}, None, "c9", contact("")]

    rows, quarantine = models.parse_page("contacts", records)

    assert rows == []
    assert [q.reason for q in quarantine] == ["invalid_record"] * 4
    assert [q.ghl_id for q in quarantine] == ["", "", "", ""]


def test_one_bad_record_keeps_others():
    rows, quarantine = models.parse_page(
        "contacts", [contact("c1"), contact("c2", dateUpdated="soon"), contact("c3")]
    )

    assert [row["id"] for row in rows] == ["c1", "c3"]
    assert [q.ghl_id for q in quarantine] == ["c2"]


@pytest.mark.parametrize("spelling", ["value", "field_value", "fieldValue"])
def test_custom_field_value_spellings(spelling):
    row = parse_one("contacts", contact("c1", customFields=[{"id": "cf1", spelling: "Gold"}]))

    assert row["custom_fields"] == {"cf1": "Gold"}


def test_custom_field_value_types():
    fields = [
        {"id": "cfList", "value": ["a", "b"]},
        {"id": "cfInt", "value": 3},
        {"id": "cfFloat", "value": 2.5},
        {"id": "cfNull", "value": None},
        {"id": "cfAbsent"},
        {"key": "contact.tier", "field_value": "Gold"},
    ]

    row = parse_one("contacts", contact("c1", customFields=fields))

    assert row["custom_fields"] == {
        "cfList": ["a", "b"],
        "cfInt": 3,
        "cfFloat": 2.5,
        "cfNull": None,
        "cfAbsent": None,
        "contact.tier": "Gold",
    }


def test_custom_field_without_id_invalid():
    _, quarantine = models.parse_page("contacts", [contact("c1", customFields=[{"value": "Gold"}])])

    assert [(q.ghl_id, q.reason) for q in quarantine] == [("c1", "invalid_record")]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [(None, []), ("vip", ["vip"]), (["VIP", None, " a, b "], ["VIP", " a, b "]), ([], [])],
)
def test_tag_shapes(sent, kept):
    row = parse_one("contacts", contact("c1", tags=sent))

    assert row["tags"] == kept


def test_unicode_and_emoji_names_kept():
    row = parse_one("contacts", contact("c1", firstName="Zoë 🎉", lastName="Łukasiewicz-李"))

    assert row["first_name"] == "Zoë 🎉"
    assert row["last_name"] == "Łukasiewicz-李"


def test_task_without_due_date():
    row = parse_one("tasks", task("t1", "c1", dueDate=None, completed=None, body=None))

    assert row["due_date"] is None
    assert row["due_date_ms"] is None
    assert row["completed"] is False
    assert row["body"] is None


def test_task_empty_due_date_is_missing():
    row = parse_one("tasks", task("t1", "c1", dueDate=""))

    assert row["due_date"] is None


@pytest.mark.parametrize("entity", ["tasks", "notes", "appointments"])
def test_missing_contact_id_quarantined(entity):
    build = {"tasks": task, "notes": note, "appointments": appointment}[entity]
    without_key = build("x1", None)
    del without_key["contactId"]

    rows, quarantine = models.parse_page(entity, [build("x0", "c1"), without_key, build("x2", "")])

    assert [row["id"] for row in rows] == ["x0"]
    assert [(q.entity, q.ghl_id, q.reason) for q in quarantine] == [
        (entity, "x1", "missing_contact_id"),
        (entity, "x2", "missing_contact_id"),
    ]


def test_long_html_note_body_kept_exactly():
    body = "<p>Hello</p><script>alert('x')</script>" + "é" * 100_000

    row = parse_one("notes", note("n1", "c1", body=body))

    assert row["body"] == body
    assert row["date_added"] == "2024-03-02T08:00:00.000Z"


def test_appointment_times_in_utc():
    row = parse_one("appointments", appointment("a1", "c1"))

    assert row["start_time"] == "2024-03-10T10:30:00.000Z"
    assert row["end_time"] == "2024-03-10T11:00:00.000Z"
    assert row["appointment_status"] == "confirmed"


def test_custom_field_definitions():
    rows, quarantine = models.parse_page(
        "custom_fields",
        [
            {"id": "cf1", "fieldKey": "contact.tier", "name": "Tier", "dataType": "TEXT", "position": 0},
            {"id": "cf2"},
        ],
    )

    assert rows == [
        {"id": "cf1", "field_key": "contact.tier", "name": "Tier", "data_type": "TEXT", "model": None}
    ]
    assert [(q.ghl_id, q.reason) for q in quarantine] == [("cf2", "invalid_record")]


def test_unknown_entity_rejected():
    with pytest.raises(ValueError, match="unknown entity 'opportunities'"):
        models.parse_page("opportunities", [])


@pytest.mark.parametrize("entity", list(models.MODELS))
def test_frame_dtypes_explicit(entity):
    empty = models.empty_frame(entity)

    assert list(empty.columns) == list(models.ENTITY_COLUMNS[entity])
    assert {name: str(dtype) for name, dtype in empty.dtypes.items()} == models.ENTITY_COLUMNS[entity]
    assert len(empty) == 0


def test_contact_frame_values():
    rows, _ = models.parse_page(
        "contacts",
        [
            contact("c1", tags=["vip", "Zoë"], customFields=[{"id": "cf1", "value": [1, 2]}]),
            contact("c2", email=None),
        ],
    )

    frame = models.frame("contacts", rows)

    assert frame.loc[0, "tags"] == '["vip","Zoë"]'
    assert frame.loc[0, "custom_fields"] == '{"cf1":[1,2]}'
    assert frame.loc[0, "date_updated_ms"] == 1709632800000
    assert pd.isna(frame.loc[1, "email"])
    assert str(frame["date_updated_ms"].dtype) == "Int64"


def test_task_frame_boolean_and_missing_dates():
    rows, _ = models.parse_page("tasks", [task("t1", "c1", completed=True), task("t2", "c1", dueDate=None)])

    frame = models.frame("tasks", rows)

    assert frame["completed"].tolist() == [True, False]
    assert str(frame["completed"].dtype) == "boolean"
    assert pd.isna(frame.loc[1, "due_date"])
    assert pd.isna(frame.loc[1, "due_date_ms"])


def test_is_member_ignores_missing():
    values = pd.Series(["a", None, "c"], dtype="string")

    found = models.is_member(values, pd.Index(["a", None, "a"], dtype="string"))

    assert found.tolist() == [True, False, False]
    assert models.is_member(values, set()).tolist() == [False, False, False]


def test_parse_ten_thousand_contacts_fast():
    records = [
        contact(f"c{i:05d}", phone="+1 555 0100", tags=["vip"], customFields=[{"id": "cf1", "value": "Gold"}])
        for i in range(10_000)
    ]

    started = time.perf_counter()
    rows, quarantine = models.parse_page("contacts", records)
    frame = models.frame("contacts", rows)
    elapsed = time.perf_counter() - started

    assert quarantine == []
    assert len(frame) == 10_000
    # About 0.3 s on a 2-core VM. The bound only catches a pathological slowdown.
    assert elapsed < 5.0
