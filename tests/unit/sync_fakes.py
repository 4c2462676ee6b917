"""An in-memory stand-in for GoHighLevelHook, for tests of extraction and the sync steps."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from ghl_memberstack import extract
from ghl_memberstack.exceptions import GoHighLevelBudgetExhaustedError, GoHighLevelRequestError

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def contact(number: int, updated_ms: int, **extra: Any) -> dict[str, Any]:
    record = {
        "id": f"c{number:03d}",
        "locationId": "loc1",
        "email": f"person{number}@example.org",
        "firstName": f"First{number}",
        "dateAdded": iso(BASE_MS),
        "dateUpdated": iso(updated_ms),
        "customFields": [],
    }
    record.update(extra)
    return record


class FakeHook:
    """Serves contacts and their children from memory, the way GoHighLevelHook pages them."""

    location_id = "loc1"

    def __init__(self, contacts: list[dict[str, Any]], *, page_limit: int = 2) -> None:
        self.contacts = sorted(contacts, key=lambda c: (extract.parse_iso_ms(c["dateUpdated"]), c["id"]))
        self.page_limit = page_limit
        self.calls: list[tuple[str, Any]] = []
        self.fail_search_after_pages: int | None = None
        self.search_error: Exception | None = None
        self.fail_notes_for: set[str] = set()
        self.budget_after_notes: int | None = None
        self.custom_field_defs = [{"id": "cf1", "fieldKey": "contact.membership_tier", "name": "Tier"}]
        self.notes_served = 0

    @property
    def request_count(self) -> int:
        return len(self.calls)

    def search_contacts(
        self,
        *,
        updated_gte_ms: int | None = None,
        updated_lte_ms: int | None = None,
        contact_ids: list[str] | None = None,
        page_limit: int = 500,
    ) -> Iterator[list[dict[str, Any]]]:
        matches = [
            c
            for c in self.contacts
            if (updated_gte_ms is None or extract.parse_iso_ms(c["dateUpdated"]) >= updated_gte_ms)
            and (updated_lte_ms is None or extract.parse_iso_ms(c["dateUpdated"]) <= updated_lte_ms)
            and (contact_ids is None or c["id"] in contact_ids)
        ]
        for page_number, start in enumerate(range(0, max(len(matches), 1), self.page_limit)):
            if self.fail_search_after_pages is not None and page_number >= self.fail_search_after_pages:
                self.calls.append(("search", "error"))
                raise self.search_error or GoHighLevelBudgetExhaustedError("budget used up")
            self.calls.append(("search", (updated_gte_ms, updated_lte_ms, contact_ids)))
            page = matches[start : start + self.page_limit]
            if page:
                yield [dict(c) for c in page]

    def search_location_tasks(self, *, contact_ids: list[str] | None = None, limit: int = 100):
        self.calls.append(("tasks", contact_ids))
        targets = set(contact_ids) if contact_ids is not None else {c["id"] for c in self.contacts}
        yield [
            {"id": f"t-{cid}", "contactId": cid, "title": "Call", "dueDate": iso(BASE_MS), "completed": False}
            for cid in sorted(targets)
        ]

    def get_contact_notes(self, contact_id: str) -> list[dict[str, Any]]:
        self.calls.append(("notes", contact_id))
        if self.budget_after_notes is not None and self.notes_served >= self.budget_after_notes:
            raise GoHighLevelBudgetExhaustedError("budget used up")
        if contact_id in self.fail_notes_for:
            raise GoHighLevelRequestError("server error", status=500)
        self.notes_served += 1
        return [{"id": f"n-{contact_id}", "body": "<b>hi</b>", "dateAdded": iso(BASE_MS)}]

    def get_contact_appointments(self, contact_id: str) -> list[dict[str, Any]]:
        self.calls.append(("appointments", contact_id))
        return []

    def get_custom_fields(self) -> list[dict[str, Any]]:
        self.calls.append(("custom_fields", None))
        return list(self.custom_field_defs)

    def map_concurrently(self, fn, items, max_workers=None):  # noqa: ANN001, ANN201
        return [fn(item) for item in items]

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]
