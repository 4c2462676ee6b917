"""Small raw GHL records and frames for the model, mapping and quality tests."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ghl_memberstack import models
from ghl_memberstack.mapping import Mapping, build_desired
from ghl_memberstack.state import DesiredState

LOCATION_ID = "LocTest0001"
UPDATED = "2024-03-05T10:00:00.000Z"
TIER_FIELD_ID = "cfTier01"
DEFINITIONS = [
    {"id": TIER_FIELD_ID, "fieldKey": "contact.membership_tier", "name": "Tier", "dataType": "TEXT"}
]
MAPPING = Mapping(
    custom_fields={"contact.membership_tier": "membership-tier"},
    tag_plans={"vip": "pln_vip-free", "member": "pln_members-free"},
)


def contact(contact_id: str, **fields: Any) -> dict[str, Any]:
    """Return a raw contact as the search endpoint sends it, with fields overridden."""
    record: dict[str, Any] = {
        "id": contact_id,
        "locationId": LOCATION_ID,
        "email": f"{contact_id}@example.org",
        "firstName": "Ada",
        "lastName": "Byron",
        "dateAdded": "2024-03-01T09:15:00.000Z",
        "dateUpdated": UPDATED,
        "searchAfter": [1709632800000, contact_id],
    }
    record.update(fields)
    return record


def task(task_id: str, contact_id: str | None, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": task_id,
        "contactId": contact_id,
        "title": "Call back",
        "body": "re invoice",
        "dueDate": "2024-03-08T15:00:00.000Z",
        "completed": False,
    }
    record.update(fields)
    return record


def note(note_id: str, contact_id: str | None, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": note_id,
        "contactId": contact_id,
        "body": "Prefers email",
        "dateAdded": "2024-03-02T08:00:00.000Z",
    }
    record.update(fields)
    return record


def appointment(appointment_id: str, contact_id: str | None, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": appointment_id,
        "contactId": contact_id,
        "title": "Intro call",
        "status": "booked",
        "appointmentStatus": "confirmed",
        "startTime": "2024-03-10T16:00:00+05:30",
        "endTime": "2024-03-10T16:30:00+05:30",
    }
    record.update(fields)
    return record


def frame_of(entity: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Parse raw records into a typed frame, failing when any record is quarantined."""
    rows, quarantine = models.parse_page(entity, records)
    assert quarantine == [], quarantine
    return models.frame(entity, rows)


def desired(
    contacts: list[dict[str, Any]],
    tasks: list[dict[str, Any]] | None = None,
    notes: list[dict[str, Any]] | None = None,
    appointments: list[dict[str, Any]] | None = None,
    *,
    mapping: Mapping = MAPPING,
    definitions: Any = DEFINITIONS,
    complete: bool = True,
) -> DesiredState:
    """Build the desired state of raw records under a mapping."""
    return build_desired(
        frame_of("contacts", contacts),
        frame_of("tasks", tasks) if tasks is not None else None,
        frame_of("notes", notes) if notes is not None else None,
        frame_of("appointments", appointments) if appointments is not None else None,
        definitions,
        mapping,
        location_id=LOCATION_ID,
        complete=complete,
    )


def reasons(state: DesiredState) -> dict[tuple[str, str], str]:
    """Return the quarantine as (entity, GHL id) to reason code."""
    return {(entry.entity, entry.ghl_id): entry.reason for entry in state.quarantine}
