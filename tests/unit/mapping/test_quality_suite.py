"""The Great Expectations batch suite: which batches pass, which fail, and which columns GX receives."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from ghl_records import contact, desired, frame_of, task

from ghl_memberstack.quality import QualityResult, contacts_view, records_view, validate_batch
from ghl_memberstack.state import DesiredState


def batch(count: int, *, bad_emails: int = 0, phones: bool = True):
    """Return a contacts frame and its desired state, with the first ``bad_emails`` emails invalid."""
    records = [
        contact(
            f"c{i:04d}",
            email="not-an-email" if i < bad_emails else f"person{i}@example.org",
            firstName=f"Secretname{i}",
            phone="+1 555 555 0123" if phones else None,
        )
        for i in range(count)
    ]
    tasks = [task(f"t{i:04d}", f"c{i:04d}") for i in range(bad_emails, count)]
    return frame_of("contacts", records), desired(records, tasks)


def outcomes(result: QualityResult) -> dict[str, bool]:
    return {entry["name"]: entry["success"] for entry in result.expectations}


def entry(result: QualityResult, name: str) -> dict:
    return next(item for item in result.expectations if item["name"] == name)


def test_good_batch_passes():
    contacts, state = batch(120, bad_emails=5)

    result = validate_batch(contacts, state, complete=True, snapshot_size=100)

    assert result.success is True
    assert outcomes(result) == {
        "contact_ids_not_null": True,
        "contact_ids_unique": True,
        "date_updated_not_null": True,
        "valid_email_share": True,
        "phone_share": True,
        "extract_not_empty": True,
        "record_ids_unique": True,
        "records_have_contacts": True,
    }
    assert entry(result, "valid_email_share")["observed"] == round(115 / 120, 4)
    assert entry(result, "extract_not_empty")["observed"] == 120
    assert entry(result, "contact_ids_unique")["observed"] == {"element_count": 120, "unexpected_count": 0}


def test_low_email_share_fails_complete_batch():
    contacts, state = batch(100, bad_emails=20)

    result = validate_batch(contacts, state, complete=True, snapshot_size=0)

    assert result.success is False
    assert outcomes(result)["valid_email_share"] is False
    assert entry(result, "valid_email_share")["observed"] == 0.8
    assert entry(result, "valid_email_share")["skipped"] is False


def test_email_threshold_is_a_setting():
    contacts, state = batch(100, bad_emails=20)

    result = validate_batch(contacts, state, complete=True, snapshot_size=0, min_valid_email_share=0.75)

    assert result.success is True
    assert entry(result, "valid_email_share")["note"] == "minimum share 0.75"


@pytest.mark.parametrize(("count", "complete"), [(99, True), (150, False)])
def test_share_skipped_small_or_partial(count, complete):
    contacts, state = batch(count, bad_emails=count // 2)

    result = validate_batch(contacts, state, complete=complete, snapshot_size=500)

    assert outcomes(result)["valid_email_share"] is True
    assert entry(result, "valid_email_share")["skipped"] is True
    assert entry(result, "phone_share")["skipped"] is True


def test_phone_share_threshold():
    contacts, state = batch(100, phones=False)

    result = validate_batch(contacts, state, complete=True, snapshot_size=0, min_phone_share=0.5)

    assert outcomes(result)["phone_share"] is False
    assert entry(result, "phone_share")["observed"] == 0.0


def test_empty_complete_extract_fails():
    contacts, state = batch(0)

    result = validate_batch(contacts, state, complete=True, snapshot_size=2000)

    assert result.success is False
    assert outcomes(result)["extract_not_empty"] is False
    assert entry(result, "extract_not_empty")["observed"] == 0


@pytest.mark.parametrize(("complete", "snapshot_size"), [(False, 2000), (True, 0)])
def test_empty_extract_allowed(complete, snapshot_size):
    contacts, state = batch(0)

    result = validate_batch(contacts, state, complete=complete, snapshot_size=snapshot_size)

    assert result.success is True
    assert entry(result, "extract_not_empty")["skipped"] is True


def test_duplicate_contact_ids_fail():
    contacts, state = batch(3)
    repeated = pd.concat([contacts, contacts.iloc[[0]]], ignore_index=True)

    result = validate_batch(repeated, state, complete=False, snapshot_size=0)

    assert result.success is False
    assert outcomes(result)["contact_ids_unique"] is False
    assert entry(result, "contact_ids_unique")["observed"]["unexpected_count"] == 2


def test_missing_ids_and_dates_fail():
    contacts, state = batch(3)
    broken = contacts.copy()
    broken.loc[0, "id"] = pd.NA
    broken.loc[1, "date_updated_ms"] = pd.NA

    result = validate_batch(broken, state, complete=False, snapshot_size=0)

    assert outcomes(result)["contact_ids_not_null"] is False
    assert outcomes(result)["date_updated_not_null"] is False


def test_record_without_member_fails():
    contacts, state = batch(3)
    tasks = state.records["ghl_tasks"].copy()
    tasks.loc["t9999"] = tasks.iloc[0]
    tasks.loc["t9999", "contact_id"] = "c-gone"
    broken = DesiredState(members=state.members, records={**state.records, "ghl_tasks": tasks})

    result = validate_batch(contacts, broken, complete=False, snapshot_size=0)

    assert outcomes(result)["records_have_contacts"] is False
    assert entry(result, "records_have_contacts")["observed"]["unexpected_count"] == 1


def test_duplicate_record_ids_fail():
    contacts, state = batch(3)
    tasks = state.records["ghl_tasks"]
    repeated = pd.concat([tasks, tasks.iloc[[0]]])
    broken = DesiredState(members=state.members, records={**state.records, "ghl_tasks": repeated})

    result = validate_batch(contacts, broken, complete=False, snapshot_size=0)

    assert outcomes(result)["record_ids_unique"] is False


def test_same_id_in_two_tables_allowed():
    contacts, state = batch(2)
    tasks = state.records["ghl_tasks"]
    notes = tasks.rename(columns={"ghl_task_id": "ghl_note_id"})[["contact_id", "ghl_note_id"]]
    shared = DesiredState(members=state.members, records={"ghl_tasks": tasks, "ghl_notes": notes})

    result = validate_batch(contacts, shared, complete=False, snapshot_size=0)

    assert outcomes(result)["record_ids_unique"] is True


def test_views_hold_no_personal_values():
    contacts, state = batch(5, bad_emails=1)

    people = contacts_view(contacts, state)
    records = records_view(state)

    assert list(people.columns) == ["id_code", "email_valid", "has_phone", "date_updated_ms"]
    assert list(records.columns) == ["record_code", "contact_known"]
    assert people["email_valid"].tolist() == [False, True, True, True, True]
    assert people["has_phone"].all()
    text = people.to_csv() + records.to_csv()
    assert "@" not in text
    assert "Secretname" not in text
    assert "555" not in text


def test_duplicate_email_counts_as_valid():
    records = [contact("c1", email="same@example.org"), contact("c2", email="same@example.org")]
    contacts = frame_of("contacts", records)

    people = contacts_view(contacts, desired(records))

    assert people["email_valid"].tolist() == [True, True]


def test_result_holds_no_personal_values():
    contacts, state = batch(100, bad_emails=50)

    result = validate_batch(contacts, state, complete=True, snapshot_size=10)

    text = json.dumps(result.expectations)
    assert "@" not in text
    assert "Secretname" not in text
    assert "c00" not in text


def test_data_docs_built(tmp_path):
    contacts, state = batch(5)
    docs = tmp_path / "docs"

    result = validate_batch(contacts, state, complete=True, snapshot_size=1, docs_dir=docs)

    assert result.success is True
    assert (docs / "index.html").is_file()
    pages = list(docs.rglob("*.html"))
    assert len(pages) >= 3
    text = "".join(page.read_text(encoding="utf-8") for page in pages)
    assert "person1@example.org" not in text
    assert "Secretname" not in text


def test_gx_info_logging_silenced(caplog, tmp_path):
    contacts, state = batch(3)
    caplog.set_level(logging.INFO)

    # With Data Docs, GX 1.24 logs its datasource loading at INFO.
    validate_batch(contacts, state, complete=False, snapshot_size=0, docs_dir=tmp_path)

    assert [record for record in caplog.records if record.name.startswith("great_expectations")] == []
