"""Build desired-state frames by hand for the diff and loader tests, with the mapping's columns."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ghl_memberstack.mapping import Mapping, member_columns, record_columns
from ghl_memberstack.state import DesiredState, QuarantineEntry

LOCATION = "LocTest0001"
MAPPING = Mapping(
    custom_fields={"contact.membership_tier": "membership-tier"},
    tag_plans={"vip": "pln_vip-free", "member": "pln_members-free"},
)
JSON_MAPPING = Mapping(
    custom_fields={"contact.membership_tier": "membership-tier"},
    tag_plans={"vip": "pln_vip-free", "member": "pln_members-free"},
    entities={"notes": "json"},
)
TAG_PLANS = {"vip": "pln_vip-free", "member": "pln_members-free"}


def contact(
    contact_id: str,
    email: str | None = None,
    *,
    first: str = "Ada",
    last: str = "Byron",
    phone: str = "",
    tags: str = "",
    tier: str = "",
    status: str = "active",
    json_text: str | None = None,
    date_updated: int = 1_700_000_000_000,
    plans: str | None = None,
) -> dict[str, Any]:
    """Return one desired member row; unless given, plans follow from the tags as in ``MAPPING``."""
    tag_list = [tag for tag in tags.split(",") if tag]
    if plans is None:
        plans = ",".join(sorted({TAG_PLANS[tag] for tag in tag_list if tag in TAG_PLANS}))
    return {
        "contact_id": contact_id,
        "email": email or f"{contact_id.lower()}@example.org",
        "cf:first-name": first,
        "cf:last-name": last,
        "cf:phone": phone,
        "cf:ghl-tags": ",".join(sorted(tag_list)),
        "cf:ghl-status": status,
        "cf:membership-tier": tier,
        "plans": plans,
        "status": status,
        "json": json_text,
        "date_updated": date_updated,
    }


def members_frame(rows: list[dict[str, Any]], mapping: Mapping = MAPPING) -> pd.DataFrame:
    """Return a desired members frame with the mapping's columns and dtypes."""
    columns = member_columns(mapping)
    data = {
        column: pd.array(
            [row.get(column) for row in rows], dtype="Int64" if column == "date_updated" else "string"
        )
        for column in columns
    }
    index = pd.Index([row["contact_id"] for row in rows], dtype="string", name="contact_id")
    return pd.DataFrame(data, index=index)


def task(
    task_id: str,
    contact_id: str,
    *,
    title: str = "Call back",
    body: str = "",
    due: str | None = None,
    completed: bool = False,
) -> dict[str, Any]:
    """Return one desired ghl_tasks row."""
    return {
        "ghl_id": task_id,
        "contact_id": contact_id,
        "ghl_task_id": task_id,
        "ghl_contact_id": contact_id,
        "ghl_location_id": LOCATION,
        "title": title,
        "body": body,
        "due_date": due,
        "completed": completed,
    }


def note(
    note_id: str, contact_id: str, *, body: str = "<p>Hello</p>", date_added: str = "2024-03-01T09:15:00.000Z"
) -> dict[str, Any]:
    """Return one desired ghl_notes row."""
    return {
        "ghl_id": note_id,
        "contact_id": contact_id,
        "ghl_note_id": note_id,
        "ghl_contact_id": contact_id,
        "ghl_location_id": LOCATION,
        "body": body,
        "date_added": date_added,
    }


def appointment(
    appointment_id: str,
    contact_id: str,
    *,
    title: str = "Intro call",
    status: str = "confirmed",
    start: str = "2025-06-02T09:00:00.000Z",
    end: str = "2025-06-02T09:30:00.000Z",
) -> dict[str, Any]:
    """Return one desired ghl_appointments row."""
    return {
        "ghl_id": appointment_id,
        "contact_id": contact_id,
        "ghl_appointment_id": appointment_id,
        "ghl_contact_id": contact_id,
        "ghl_location_id": LOCATION,
        "title": title,
        "status": status,
        "start_time": start,
        "end_time": end,
    }


def record_frame(table: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Return a desired record frame of one Data Table."""
    columns = record_columns(table)
    data = {
        column: pd.array(
            [row.get(column) for row in rows], dtype="boolean" if column == "completed" else "string"
        )
        for column in columns
    }
    return pd.DataFrame(data, index=pd.Index([row["ghl_id"] for row in rows], dtype="string", name="ghl_id"))


def desired_state(
    members: list[dict[str, Any]],
    *,
    tasks: list[dict[str, Any]] = (),
    notes: list[dict[str, Any]] = (),
    appointments: list[dict[str, Any]] = (),
    complete: bool = False,
    quarantine: list[QuarantineEntry] = (),
    mapping: Mapping = MAPPING,
) -> DesiredState:
    """Return a desired state; tables that the mapping sends to json get empty record frames."""
    records = {
        "ghl_tasks": record_frame("ghl_tasks", list(tasks)),
        "ghl_notes": record_frame("ghl_notes", [] if mapping.target("notes") == "json" else list(notes)),
        "ghl_appointments": record_frame("ghl_appointments", list(appointments)),
    }
    if mapping.target("notes") == "json":
        by_contact: dict[str, list[dict[str, Any]]] = {}
        for row in sorted(notes, key=lambda r: r["ghl_id"]):
            by_contact.setdefault(row["contact_id"], []).append(
                {"ghl_note_id": row["ghl_id"], "body": row["body"], "date_added": row["date_added"]}
            )
        members = [
            m
            | {
                "json": json.dumps(
                    {"notes": by_contact.get(m["contact_id"], [])}, sort_keys=True, separators=(",", ":")
                )
            }
            for m in members
        ]
    return DesiredState(
        members=members_frame(members, mapping),
        records=records,
        quarantine=list(quarantine),
        complete=complete,
    )


def ids(desired: DesiredState) -> list[str]:
    """Return the contact ids of a desired state, the usual observed set."""
    return list(desired.members.index)
