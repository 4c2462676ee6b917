"""Extraction: which contacts and children are read, partial extracts, and the parquet output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sync_fakes import BASE_MS, FakeHook, contact

from ghl_memberstack import extract
from ghl_memberstack.exceptions import GoHighLevelCursorError
from ghl_memberstack.snapshot import Manifest
from ghl_memberstack.storage import as_storage_path

@pytest.fixture
def work(tmp_path: Path) -> Any:
    return as_storage_path(tmp_path / "work")


def run(hook: FakeHook, work: Any, request: extract.ExtractRequest, **kwargs: Any) -> extract.ExtractResult:
    kwargs.setdefault("applied_updated", {})
    kwargs.setdefault("cached_custom_fields", None)
    return extract.Extractor(hook, work, page_limit=2, **kwargs).run(request)


def seen_by_id(work: Any) -> dict[str, dict[str, Any]]:
    frame = extract.read_seen(work)
    return {row["contact_id"]: row for row in frame.to_dict("records")}


def full() -> extract.ExtractRequest:
    return extract.ExtractRequest(extract.MODE_FULL, None, None, ())


def test_full_refresh_reads_everything(work: Any) -> None:
    hook = FakeHook([contact(i, BASE_MS + i * 1000) for i in range(5)])
    result = run(hook, work, full())

    assert result.complete is True
    assert result.partial_reason is None
    assert result.counts["contacts"] == {"extracted": 5, "valid": 5, "quarantined": 0}
    assert result.counts["notes"]["valid"] == 5
    assert result.counts["tasks"]["valid"] == 5
    # The full refresh searches tasks location-wide once instead of per contact.
    assert [c for c in hook.calls if c[0] == "tasks"] == [("tasks", None)]
    assert result.custom_fields_refreshed is True
    contacts = extract.read_entity(work, "contacts")
    assert sorted(contacts["id"].tolist()) == [f"c{i:03d}" for i in range(5)]
    notes = extract.read_entity(work, "notes")
    assert set(notes["contact_id"].tolist()) == {f"c{i:03d}" for i in range(5)}
    assert all(row["fetched"] for row in seen_by_id(work).values())


def test_incremental_reads_moved_children(work: Any) -> None:
    contacts = [contact(i, BASE_MS + i * 1000) for i in range(4)]
    hook = FakeHook(contacts)
    applied = {f"c{i:03d}": BASE_MS + i * 1000 for i in range(4)}
    applied["c002"] = BASE_MS  # c002 changed since the last commit
    request = extract.ExtractRequest(extract.MODE_INCREMENTAL, BASE_MS, None, ())
    result = run(hook, work, request, applied_updated=applied, cached_custom_fields=[])

    assert result.complete is False
    assert [cid for kind, cid in hook.calls if kind == "notes"] == ["c002"]
    assert [ids for kind, ids in hook.calls if kind == "tasks"] == [["c002"]]
    seen = seen_by_id(work)
    assert seen["c002"]["moved"] and seen["c002"]["fetched"]
    assert not seen["c001"]["moved"]
    assert "custom_fields" not in hook.kinds()


def test_unchanged_run_makes_one_request(work: Any) -> None:
    contacts = [contact(i, BASE_MS + i * 1000) for i in range(3)]
    hook = FakeHook(contacts, page_limit=10)
    applied = {c["id"]: extract.parse_iso_ms(c["dateUpdated"]) for c in contacts}
    request = extract.ExtractRequest(extract.MODE_INCREMENTAL, BASE_MS, None, ())
    result = run(hook, work, request, applied_updated=applied, cached_custom_fields=[])

    assert result.requests == 1
    assert hook.kinds() == ["search"]


def test_pending_contacts_are_reread_and_forced(work: Any) -> None:
    contacts = [contact(i, BASE_MS + i * 1000) for i in range(4)]
    hook = FakeHook(contacts)
    applied = {c["id"]: extract.parse_iso_ms(c["dateUpdated"]) for c in contacts}
    request = extract.ExtractRequest(extract.MODE_INCREMENTAL, BASE_MS + 10_000, None, ("c000",))
    run(hook, work, request, applied_updated=applied, cached_custom_fields=[])

    assert hook.calls[0] == ("search", (None, None, ["c000"]))
    assert [cid for kind, cid in hook.calls if kind == "notes"] == ["c000"]
    assert seen_by_id(work)["c000"]["moved"]


def test_budget_exhaustion_gives_partial_extract(work: Any) -> None:
    hook = FakeHook([contact(i, BASE_MS + i * 1000) for i in range(6)])
    hook.fail_search_after_pages = 2
    result = run(hook, work, full())

    assert result.complete is False
    assert result.partial_reason == "budget_exhausted"
    assert result.counts["contacts"]["extracted"] == 4
    # After the budget is gone, no child is read and the read contacts stay unfetched.
    assert "notes" not in hook.kinds()
    assert not any(row["fetched"] for row in seen_by_id(work).values())


def test_cursor_error_gives_partial_extract(work: Any) -> None:
    hook = FakeHook([contact(i, BASE_MS + i * 1000) for i in range(6)])
    hook.fail_search_after_pages = 1
    hook.search_error = GoHighLevelCursorError("cursor repeated")
    result = run(hook, work, full())

    assert result.complete is False
    assert result.partial_reason == "cursor_error"
    # The contacts read before the cursor failed still get their children.
    assert [cid for kind, cid in hook.calls if kind == "notes"] == ["c000", "c001"]


def test_failed_child_read_leaves_contact_unfetched(work: Any) -> None:
    hook = FakeHook([contact(i, BASE_MS + i * 1000) for i in range(3)])
    hook.fail_notes_for = {"c001"}
    result = run(hook, work, full())

    seen = seen_by_id(work)
    assert result.complete is False
    assert result.partial_reason == "child_read_failed"
    assert seen["c000"]["fetched"] and seen["c002"]["fetched"]
    assert not seen["c001"]["fetched"]


def test_budget_exhaustion_during_children(work: Any) -> None:
    hook = FakeHook([contact(i, BASE_MS + i * 1000) for i in range(4)])
    hook.budget_after_notes = 2
    result = run(hook, work, full())

    seen = seen_by_id(work)
    assert result.partial_reason == "budget_exhausted"
    assert [cid for cid, row in seen.items() if row["fetched"]] == ["c000", "c001"]


def test_unknown_custom_field_id_rereads_definitions(work: Any) -> None:
    record = contact(1, BASE_MS, customFields=[{"id": "cf-new", "value": "Gold"}])
    hook = FakeHook([record])
    cached = [{"id": "cf1", "field_key": "contact.membership_tier"}]
    request = extract.ExtractRequest(extract.MODE_INCREMENTAL, BASE_MS, None, ())
    result = run(hook, work, request, cached_custom_fields=cached)

    assert "custom_fields" in hook.kinds()
    assert result.custom_fields_refreshed is True
    assert result.custom_fields[0]["field_key"] == "contact.membership_tier"


def test_known_custom_field_ids_use_the_cache(work: Any) -> None:
    record = contact(1, BASE_MS, customFields=[{"id": "cf1", "value": "Gold"}])
    hook = FakeHook([record])
    cached = [{"id": "cf1", "field_key": "contact.membership_tier"}]
    request = extract.ExtractRequest(extract.MODE_INCREMENTAL, BASE_MS, None, ())
    result = run(hook, work, request, cached_custom_fields=cached)

    assert "custom_fields" not in hook.kinds()
    assert result.custom_fields == cached


def test_invalid_contact_is_quarantined_without_children(work: Any) -> None:
    broken = {"id": "c009", "email": "x@example.org"}  # no dateUpdated
    hook = FakeHook([contact(1, BASE_MS)])
    hook.contacts.append(broken)
    result = run(hook, work, full())

    assert result.counts["contacts"]["quarantined"] == 1
    assert "c009" not in [cid for kind, cid in hook.calls if kind == "notes"]
    quarantine = extract.read_quarantine(work / "quarantine.json")
    assert [(q.entity, q.ghl_id, q.reason) for q in quarantine] == [("contacts", "c009", "invalid_record")]


def manifest(**fields: Any) -> Manifest:
    return Manifest(snapshot_id="s1", **fields)


def test_plan_request_without_state_is_full() -> None:
    request = extract.plan_request(
        manifest=None, run_type="scheduled", full_refresh=False,
        interval_start_ms=None, interval_end_ms=None, overlap_ms=1000,
    )
    assert request.mode == extract.MODE_FULL


def test_plan_request_manual_run_ignores_interval() -> None:
    request = extract.plan_request(
        manifest=manifest(watermark_ms=50_000), run_type="manual", full_refresh=False,
        interval_start_ms=1, interval_end_ms=2, overlap_ms=1000,
    )
    assert request.mode == extract.MODE_INCREMENTAL
    assert request.updated_gte_ms == 49_000
    assert request.updated_lte_ms is None


def test_plan_request_backfill_uses_interval() -> None:
    request = extract.plan_request(
        manifest=manifest(watermark_ms=90_000, pending=("c1",)), run_type="backfill", full_refresh=False,
        interval_start_ms=10_000, interval_end_ms=20_000, overlap_ms=1000,
    )
    assert request.mode == extract.MODE_BACKFILL
    assert (request.updated_gte_ms, request.updated_lte_ms) == (9_000, 20_000)
    assert request.pending == ("c1",)


def test_plan_request_old_schema_is_full_refresh() -> None:
    request = extract.plan_request(
        manifest=manifest(schema_version=0, watermark_ms=5, pending=("c1",)), run_type="scheduled",
        full_refresh=False, interval_start_ms=None, interval_end_ms=None, overlap_ms=0,
    )
    assert request.mode == extract.MODE_FULL
    assert request.pending == ()


def test_parse_iso_ms_forms() -> None:
    assert extract.parse_iso_ms("2026-01-01T00:00:00.000Z") == BASE_MS
    assert extract.parse_iso_ms("2026-01-01T01:00:00+01:00") == BASE_MS
    assert extract.parse_iso_ms("2026-01-01T00:00:00") == BASE_MS
    assert extract.parse_iso_ms(BASE_MS) == BASE_MS
    assert extract.parse_iso_ms("not a date") is None
    assert extract.parse_iso_ms(None) is None
