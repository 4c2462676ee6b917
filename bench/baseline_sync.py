"""A straightforward GHL → Memberstack sync, written as a user might write it without this project.

It is the reference of the side-by-side benchmark. Every run re-syncs everything, since it keeps
no state between runs. It loops over the contacts one by one:

1. GHL, through the official SDK ``gohighlevel-api-client`` (package ``highlevel``): all contacts
   by search pages, then per contact its tasks, notes and appointments, one request at a time.
   The SDK raises on HTTP 429, so the script sleeps the GHL interval (10 s) and retries.
2. Memberstack, through sequential httpx calls paced at 25 requests per second. It reads the
   member by email, creates it or updates the fields that differ, and adds each missing plan. Per
   Data Table it then queries the contact's records, and creates or updates each record that is
   missing or differs. On HTTP 429 it sleeps the interval (1 s) and retries.

The script writes the same members, plans and records as the pipeline's default mapping, without
its validation: emails are only trimmed and lowercased, and phones are sent as GHL has them.
Comparing before writing makes an unchanged run cost reads only, which favours the script.

    python bench/baseline_sync.py --ghl-url URL --memberstack-url URL
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

import httpx

GHL_INTERVAL_S = 10.0
MEMBERSTACK_INTERVAL_S = 1.0
MEMBERSTACK_RATE_PER_S = 25.0
SEARCH_PAGE_SIZE = 100
MAX_ATTEMPTS = 20
TIER_FIELD_KEY = "contact.membership_tier"
TAG_PLANS = {"vip": "pln_vip-free", "member": "pln_members-free"}
SIMPLE_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclasses.dataclass
class BaselineStats:
    """Counts of one baseline run."""

    contacts: int = 0
    members_created: int = 0
    members_updated: int = 0
    records_written: int = 0
    skipped_contacts: int = 0
    failed_writes: int = 0
    ghl_requests: int = 0
    ghl_429: int = 0
    memberstack_requests: int = 0
    memberstack_429: int = 0
    seconds: float = 0.0
    errors: Counter[str] = dataclasses.field(default_factory=Counter)


class PacedMemberstack:
    """Sequential Memberstack Admin API calls, at most 25 per second, retried after HTTP 429."""

    def __init__(self, base_url: str, secret_key: str, stats: BaselineStats, *, rate_scale: float = 1.0) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"X-API-KEY": secret_key}, timeout=30.0)
        self.stats = stats
        self.gap_s = 1 / (MEMBERSTACK_RATE_PER_S * rate_scale)
        self.interval_s = MEMBERSTACK_INTERVAL_S / rate_scale
        self.next_send = 0.0

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """Send one request at the paced rate, and after HTTP 429 sleep the interval and resend it."""
        for _ in range(MAX_ATTEMPTS):
            wait = self.next_send - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.next_send = time.monotonic() + self.gap_s
            self.stats.memberstack_requests += 1
            response = self.client.request(method, path, json=body)
            if response.status_code != 429:
                return response
            self.stats.memberstack_429 += 1
            time.sleep(self.interval_s)
        raise RuntimeError(f"Memberstack {method} {path} was still rate-limited after {MAX_ATTEMPTS} attempts")

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


class RetryingGhl:
    """Caller of SDK methods, one at a time, that sleeps the GHL interval after HTTP 429 and calls again."""

    def __init__(self, stats: BaselineStats, *, rate_scale: float = 1.0) -> None:
        self.stats = stats
        self.interval_s = GHL_INTERVAL_S / rate_scale

    async def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Return the SDK method's result, retrying it after each HTTP 429."""
        from highlevel.error import GHLError

        for _ in range(MAX_ATTEMPTS):
            self.stats.ghl_requests += 1
            try:
                return await function(*args, **kwargs)
            except GHLError as error:
                if error.status_code != 429:
                    raise
                self.stats.ghl_429 += 1
                await asyncio.sleep(self.interval_s)
        raise RuntimeError(f"GHL {function.__name__} was still rate-limited after {MAX_ATTEMPTS} attempts")


def member_fields(contact: dict[str, Any], tier_field_id: str | None) -> dict[str, str]:
    """Return the Memberstack custom fields of one contact."""
    tier = ""
    for field in contact.get("customFields") or []:
        if field.get("id") == tier_field_id and field.get("value") is not None:
            tier = str(field["value"])
    return {
        "first-name": contact.get("firstName") or "",
        "last-name": contact.get("lastName") or "",
        "phone": contact.get("phone") or "",
        "ghl-tags": ",".join(sorted(contact.get("tags") or [])),
        "ghl-status": "active",
        "membership-tier": tier,
    }


def wanted_plans(contact: dict[str, Any]) -> set[str]:
    """Return the free plans the contact's tags grant."""
    tags = {" ".join(str(tag).split()).casefold() for tag in contact.get("tags") or []}
    return {plan for tag, plan in TAG_PLANS.items() if tag in tags}


def record_rows(contact: dict[str, Any], tasks: list, notes: list, appointments: list) -> dict[str, dict[str, dict]]:
    """Return the Data Table rows of one contact, per table and keyed by GHL id."""
    common = {"ghl_contact_id": contact["id"], "ghl_location_id": contact.get("locationId") or ""}
    return {
        "ghl_tasks": {
            task["id"]: {
                **common,
                "ghl_task_id": task["id"],
                "title": task.get("title") or "",
                "body": task.get("body") or "",
                "due_date": task.get("dueDate"),
                "completed": bool(task.get("completed")),
            }
            for task in tasks
        },
        "ghl_notes": {
            note["id"]: {**common, "ghl_note_id": note["id"], "body": note.get("body") or "", "date_added": note.get("dateAdded")}
            for note in notes
        },
        "ghl_appointments": {
            event["id"]: {
                **common,
                "ghl_appointment_id": event["id"],
                "title": event.get("title") or "",
                "status": event.get("appointmentStatus") or "",
                "start_time": event.get("startTime"),
                "end_time": event.get("endTime"),
            }
            for event in appointments
        },
    }


def upsert_member(ms: PacedMemberstack, contact: dict[str, Any], email: str, fields: dict[str, str], stats: BaselineStats) -> str | None:
    """Create or update the member of one contact, connect its plans and return the member id."""
    found = ms.call("GET", f"/members/{quote(email, safe='')}").json().get("data")
    meta = {"ghlContactId": contact["id"], "ghlLocationId": contact.get("locationId") or ""}
    if found is None:
        response = ms.call("POST", "/members", {"email": email, "password": "Baseline-" + contact["id"], "customFields": fields, "metaData": meta})
        if response.status_code >= 300:
            stats.failed_writes += 1
            stats.errors[f"POST /members {response.status_code}"] += 1
            return None
        member = response.json()["data"]
        stats.members_created += 1
    else:
        member = found
        held = member.get("customFields") or {}
        if any((held.get(key) or "") != value for key, value in fields.items()):
            ms.call("PATCH", f"/members/{member['id']}", {"customFields": fields, "metaData": meta})
            stats.members_updated += 1
    held_plans = {connection.get("planId") for connection in member.get("planConnections") or []}
    for plan in sorted(wanted_plans(contact) - held_plans):
        ms.call("POST", f"/members/{member['id']}/add-plan", {"planId": plan})
    return member["id"]


def upsert_records(ms: PacedMemberstack, member_id: str, contact_id: str, rows: dict[str, dict[str, dict]], stats: BaselineStats) -> None:
    """Create the contact's missing records and update those whose fields differ."""
    for table, wanted in rows.items():
        id_field = {"ghl_tasks": "ghl_task_id", "ghl_notes": "ghl_note_id", "ghl_appointments": "ghl_appointment_id"}[table]
        query = {"query": {"findMany": {"where": {"ghl_contact_id": contact_id}, "take": 100}}}
        found = ms.call("POST", f"/v2/data-tables/{table}/records/query", query).json()["data"]["records"]
        held = {record["data"].get(id_field): record for record in found}
        for ghl_id, data in wanted.items():
            data = {**data, "member": member_id}
            record = held.get(ghl_id)
            if record is None:
                response = ms.call("POST", f"/v2/data-tables/{table}/records", {"data": data})
            elif any(record["data"].get(key) != value for key, value in data.items() if value is not None):
                response = ms.call("PUT", f"/v2/data-tables/{table}/records/{record['id']}", {"data": data})
            else:
                continue
            if response.status_code >= 300:
                stats.failed_writes += 1
                stats.errors[f"{table} {response.status_code}"] += 1
            else:
                stats.records_written += 1


async def all_contacts(ghl: Any, caller: RetryingGhl, location_id: str) -> list[dict[str, Any]]:
    """Read every contact of the location through the search, one page after the other."""
    contacts: list[dict[str, Any]] = []
    page = 1
    while True:
        body = {"locationId": location_id, "pageLimit": SEARCH_PAGE_SIZE, "page": page}
        batch = (await caller.call(ghl.contacts.search_contacts_advanced, body)).get("contacts") or []
        contacts.extend(batch)
        if len(batch) < SEARCH_PAGE_SIZE:
            return contacts
        page += 1


async def sync_everything(
    ghl_url: str, memberstack_url: str, location_id: str, token: str, secret_key: str, *, rate_scale: float = 1.0
) -> BaselineStats:
    """Re-sync every contact of the location into the Memberstack app and return the run's counts.

    ``rate_scale`` multiplies the pace and divides the retry intervals, for a sandbox whose limits
    are scaled by the same factor.
    """
    from highlevel import HighLevel

    stats = BaselineStats()
    started = time.monotonic()
    # The SDK reads its base URL from this class attribute when it builds its client.
    HighLevel.BASE_URL = ghl_url
    ghl = HighLevel(private_integration_token=token, log_level="none")
    caller = RetryingGhl(stats, rate_scale=rate_scale)
    ms = PacedMemberstack(memberstack_url, secret_key, stats, rate_scale=rate_scale)
    try:
        definitions = (await caller.call(ghl.locations.get_custom_fields, location_id, model="contact")).get("customFields") or []
        tier_field_id = next((d["id"] for d in definitions if d.get("fieldKey") == TIER_FIELD_KEY), None)
        for contact in await all_contacts(ghl, caller, location_id):
            stats.contacts += 1
            tasks = (await caller.call(ghl.contacts.get_all_tasks, contact["id"])).get("tasks") or []
            notes = (await caller.call(ghl.contacts.get_all_notes, contact["id"])).get("notes") or []
            events = (await caller.call(ghl.contacts.get_appointments_for_contact, contact["id"])).get("events") or []
            email = (contact.get("email") or "").strip().lower()
            if not SIMPLE_EMAIL.match(email):
                stats.skipped_contacts += 1
                continue
            member_id = upsert_member(ms, contact, email, member_fields(contact, tier_field_id), stats)
            if member_id is not None:
                upsert_records(ms, member_id, contact["id"], record_rows(contact, tasks, notes, events), stats)
    finally:
        ms.close()
        await ghl.http_client.aclose()
    stats.seconds = round(time.monotonic() - started, 2)
    return stats


def run(
    ghl_url: str, memberstack_url: str, location_id: str, token: str, secret_key: str, *, rate_scale: float = 1.0
) -> BaselineStats:
    """Run :func:`sync_everything` in a new event loop."""
    return asyncio.run(
        sync_everything(ghl_url, memberstack_url, location_id, token, secret_key, rate_scale=rate_scale)
    )


def main(argv: list[str] | None = None) -> int:
    """Sync once against the given servers and print the counts as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ghl-url", required=True, help="GHL API base URL, such as http://127.0.0.1:8701")
    parser.add_argument("--memberstack-url", required=True, help="Memberstack API base URL")
    parser.add_argument("--location-id", default="DemoLocationPit00001", help="GHL location id")
    parser.add_argument("--token", default="pit-sandbox-demo-location-a", help="GHL Private Integration Token")
    parser.add_argument("--secret-key", default="sk_sb_demo_app_a", help="Memberstack secret key")
    args = parser.parse_args(argv)
    stats = run(args.ghl_url, args.memberstack_url, args.location_id, args.token, args.secret_key)
    print(json.dumps(dataclasses.asdict(stats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
