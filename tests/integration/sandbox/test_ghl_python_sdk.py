"""The official GHL Python SDK (``gohighlevel-api-client``, package ``highlevel``), unmodified, against the sandbox.

The SDK is pointed at the sandbox through its ``HighLevel.BASE_URL`` class attribute, which its
constructor reads. It sends ``Version: v3`` on every call and camelCase fields to ``/oauth/token``,
so these tests also show that the sandbox accepts both.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from highlevel import HighLevel
from highlevel.error import GHLError
from highlevel.storage import MemorySessionStorage

from sandbox import seedgen
from sandbox.testing import running_sandbox

pytestmark = pytest.mark.integration

LOCATION_A = seedgen.DEMO_LOCATION_A_ID
LOCATION_B = seedgen.DEMO_LOCATION_B_ID
SEARCH_PAGE_LIMIT = 100

SEED = seedgen.generate_seed(
    contacts_per_location=(230, 30),
    tasks=(0, 3),
    notes=(0, 3),
    appointments=(0, 3),
    random_seed=11,
)
SEED_A = SEED["ghl"]["locations"][0]
SEED_B = SEED["ghl"]["locations"][1]


def _first_contact_with(entity: str) -> str:
    """Return the id of the first seeded contact of location A that has at least one ``entity``."""
    owners = {item["contactId"] for item in SEED_A[entity]}
    return next(contact["id"] for contact in SEED_A["contacts"] if contact["id"] in owners)


def _seeded(entity: str, contact_id: str) -> list[dict[str, Any]]:
    return [item for item in SEED_A[entity] if item["contactId"] == contact_id]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    with running_sandbox(seed=SEED) as sb:
        sb.set_config("ghl", rate_limits=False, latency_ms=0, search_lag_ms=0)
        yield sb


@pytest.fixture()
def run_sdk(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Return a runner that calls a coroutine with a fresh SDK client on a freshly reset sandbox."""
    sandbox.reset()
    monkeypatch.setattr(HighLevel, "BASE_URL", sandbox.ghl_url)
    # The SDK's httpx client reads proxy variables, and the sandbox must be reached directly.
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)

    def run(scenario: Callable[[HighLevel], Awaitable[Any]], **client_options: Any) -> Any:
        async def main() -> Any:
            options = client_options or {"private_integration_token": seedgen.DEMO_LOCATION_A_PIT}
            client = HighLevel(**options)
            try:
                return await scenario(client)
            finally:
                await client.close()

        return asyncio.run(main())

    return run


async def _search_all(client: HighLevel, location_id: str) -> tuple[list[dict[str, Any]], int, int]:
    """Page through the location's contacts with searchAfter and return contacts, page count and total."""
    body: dict[str, Any] = {
        "locationId": location_id,
        "pageLimit": SEARCH_PAGE_LIMIT,
        "sort": [{"field": "dateUpdated", "direction": "asc"}],
    }
    contacts: list[dict[str, Any]] = []
    pages = 0
    total = -1
    while True:
        page = await client.contacts.search_contacts_advanced(body)
        pages += 1
        total = page["total"]
        contacts.extend(page["contacts"])
        if len(page["contacts"]) < SEARCH_PAGE_LIMIT:
            return contacts, pages, total
        body["searchAfter"] = page["contacts"][-1]["searchAfter"]


def test_search_pages_to_the_end(run_sdk: Callable[..., Any]) -> None:
    contacts, pages, total = run_sdk(lambda client: _search_all(client, LOCATION_A))

    ids = [contact["id"] for contact in contacts]
    assert len(ids) == len(SEED_A["contacts"])
    assert len(set(ids)) == len(ids)
    assert set(ids) == {contact["id"] for contact in SEED_A["contacts"]}
    assert pages == 3
    assert total == len(SEED_A["contacts"])


def test_search_records_carry_search_after(run_sdk: Callable[..., Any]) -> None:
    contacts, _, _ = run_sdk(lambda client: _search_all(client, LOCATION_A))

    seeded = {contact["id"]: contact for contact in SEED_A["contacts"]}
    for contact in contacts:
        date_updated_ms, contact_id = contact["searchAfter"]
        assert contact_id == contact["id"]
        assert isinstance(date_updated_ms, int)
        assert contact["dateUpdated"] == seeded[contact["id"]]["dateUpdated"]
        assert "dndSettings" not in contact
    keys = [tuple(contact["searchAfter"]) for contact in contacts]
    assert keys == sorted(keys)


def test_get_contact_matches_seed(run_sdk: Callable[..., Any]) -> None:
    seeded = SEED_A["contacts"][0]

    response = run_sdk(lambda client: client.contacts.get_contact(seeded["id"]))

    contact = response["contact"]
    assert contact["id"] == seeded["id"]
    assert contact.get("email") == seeded.get("email")
    assert contact["dateUpdated"] == seeded["dateUpdated"]
    assert contact["customFields"] == seeded["customFields"]
    assert "dndSettings" in contact


def test_contact_create_update_delete(run_sdk: Callable[..., Any], sandbox: Any) -> None:
    tier_field = next(field for field in SEED_A["custom_fields"]
                      if field["fieldKey"] == seedgen.MEMBERSHIP_TIER_FIELD_KEY)
    new_contact = {
        "locationId": LOCATION_A,
        "firstName": "Zoë",
        "lastName": "Quist",
        "email": "zoe.quist@example.com",
        "phone": "+14155550142",
        "tags": ["sdk"],
        "customFields": [{"key": seedgen.MEMBERSHIP_TIER_FIELD_KEY, "field_value": "Gold"}],
    }

    async def scenario(client: HighLevel) -> dict[str, Any]:
        created = (await client.contacts.create_contact(new_contact))["contact"]
        fetched = (await client.contacts.get_contact(created["id"]))["contact"]
        with pytest.raises(GHLError) as duplicate:
            await client.contacts.create_contact(new_contact)
        sandbox.advance_clock(5)
        updated = await client.contacts.update_contact(created["id"], {"lastName": "Quist-Ng"})
        deleted = await client.contacts.delete_contact(created["id"])
        with pytest.raises(GHLError) as gone:
            await client.contacts.get_contact(created["id"])
        return {"created": created, "fetched": fetched, "duplicate": duplicate.value,
                "updated": updated, "deleted": deleted, "gone": gone.value}

    result = run_sdk(scenario)

    created = result["created"]
    assert created["id"]
    assert result["fetched"]["email"] == "zoe.quist@example.com"
    assert result["fetched"]["customFields"] == [{"id": tier_field["id"], "value": "Gold"}]
    assert result["duplicate"].status_code == 400
    assert result["duplicate"].response["meta"]["contactId"] == created["id"]
    assert result["updated"]["succeded"] is True
    assert result["updated"]["contact"]["lastName"] == "Quist-Ng"
    assert result["updated"]["contact"]["dateUpdated"] > result["fetched"]["dateUpdated"]
    assert result["deleted"]["succeded"] is True
    assert result["gone"].status_code == 400


def test_tags_add_and_remove(run_sdk: Callable[..., Any], sandbox: Any) -> None:
    seeded = SEED_A["contacts"][1]

    async def scenario(client: HighLevel) -> dict[str, Any]:
        added = await client.contacts.add_tags(seeded["id"], {"tags": ["sdk-added", "sdk-second"]})
        sandbox.advance_clock(5)
        removed = await client.contacts.remove_tags(seeded["id"], {"tags": ["sdk-added"]})
        contact = (await client.contacts.get_contact(seeded["id"]))["contact"]
        return {"added": added, "removed": removed, "contact": contact}

    result = run_sdk(scenario)

    assert {"sdk-added", "sdk-second"} <= set(result["added"]["tags"])
    assert "sdk-added" not in result["removed"]["tags"]
    assert "sdk-second" in result["removed"]["tags"]
    assert "sdk-added" not in result["contact"]["tags"]
    assert "sdk-second" in result["contact"]["tags"]
    assert result["contact"]["dateUpdated"] > seeded["dateUpdated"]


def test_tasks_with_completion(run_sdk: Callable[..., Any]) -> None:
    contact_id = _first_contact_with("tasks")
    seeded_ids = {task["id"] for task in _seeded("tasks", contact_id)}
    new_task = {"title": "Call back", "body": "Asked for the annual plan",
                "dueDate": "2025-07-01T09:00:00.000Z", "completed": False}

    async def scenario(client: HighLevel) -> dict[str, Any]:
        before = (await client.contacts.get_all_tasks(contact_id))["tasks"]
        contact_before = (await client.contacts.get_contact(contact_id))["contact"]
        created = (await client.contacts.create_task(contact_id, new_task))["task"]
        fetched = (await client.contacts.get_task(contact_id, created["id"]))["task"]
        renamed = await client.contacts.update_task(contact_id, created["id"], {"title": "Call back today"})
        completed = await client.contacts.update_task_completed(contact_id, created["id"], {"completed": True})
        listed = (await client.contacts.get_all_tasks(contact_id))["tasks"]
        contact_after = (await client.contacts.get_contact(contact_id))["contact"]
        deleted = await client.contacts.delete_task(contact_id, created["id"])
        after = (await client.contacts.get_all_tasks(contact_id))["tasks"]
        return {"before": before, "created": created, "fetched": fetched, "renamed": renamed,
                "completed": completed, "listed": listed, "deleted": deleted, "after": after,
                "contact_before": contact_before, "contact_after": contact_after}

    result = run_sdk(scenario)

    assert {task["id"] for task in result["before"]} == seeded_ids
    assert result["created"]["contactId"] == contact_id
    assert result["created"]["completed"] is False
    assert result["fetched"]["title"] == "Call back"
    assert result["renamed"]["task"]["title"] == "Call back today"
    assert result["completed"]["task"]["completed"] is True
    listed = {task["id"]: task for task in result["listed"]}
    assert listed[result["created"]["id"]]["completed"] is True
    assert result["deleted"]["succeded"] is True
    assert {task["id"] for task in result["after"]} == seeded_ids
    # Task changes leave the contact's dateUpdated alone under the default settings.
    assert result["contact_after"]["dateUpdated"] == result["contact_before"]["dateUpdated"]


def test_notes_keep_html_bodies(run_sdk: Callable[..., Any]) -> None:
    contact_id = _first_contact_with("notes")
    seeded = {note["id"]: note["body"] for note in _seeded("notes", contact_id)}
    html_body = '<p>Paid &amp; <b>signed</b> <a href="https://www.example.com/">form</a></p>'

    async def scenario(client: HighLevel) -> dict[str, Any]:
        before = (await client.contacts.get_all_notes(contact_id))["notes"]
        created = (await client.contacts.create_note(contact_id, {"body": html_body}))["note"]
        fetched = (await client.contacts.get_note(contact_id, created["id"]))["note"]
        updated = (await client.contacts.update_note(contact_id, created["id"], {"body": "plain"}))["note"]
        deleted = await client.contacts.delete_note(contact_id, created["id"])
        after = (await client.contacts.get_all_notes(contact_id))["notes"]
        return {"before": before, "created": created, "fetched": fetched, "updated": updated,
                "deleted": deleted, "after": after}

    result = run_sdk(scenario)

    assert {note["id"]: note["body"] for note in result["before"]} == seeded
    assert result["created"]["body"] == html_body
    assert result["created"]["contactId"] == contact_id
    assert result["fetched"]["body"] == html_body
    assert result["updated"]["body"] == "plain"
    assert result["deleted"]["succeded"] is True
    assert {note["id"] for note in result["after"]} == set(seeded)


def test_appointments_match_seed(run_sdk: Callable[..., Any]) -> None:
    contact_id = _first_contact_with("appointments")
    seeded = {event["id"]: event for event in _seeded("appointments", contact_id)}

    response = run_sdk(lambda client: client.contacts.get_appointments_for_contact(contact_id))

    events = {event["id"]: event for event in response["events"]}
    assert set(events) == set(seeded)
    for event_id, event in events.items():
        assert event["contactId"] == contact_id
        assert event["startTime"] == seeded[event_id]["startTime"]
        assert event["appointmentStatus"] == seeded[event_id]["appointmentStatus"]


def test_oauth_refresh_with_camel_case(run_sdk: Callable[..., Any], sandbox: Any) -> None:
    """The SDK refreshes a token that expires within 30 s before it calls, sending camelCase fields."""

    async def scenario(client: HighLevel) -> dict[str, Any]:
        storage = client.get_session_storage()
        await storage.set_session(LOCATION_B, {
            "access_token": "expired-access-token",
            "refresh_token": seedgen.DEMO_REFRESH_TOKEN_B,
            "expires_in": 5,
            "userType": "Location",
            "locationId": LOCATION_B,
        })
        contacts, _, total = await _search_all(client, LOCATION_B)
        session = await storage.get_session(LOCATION_B)
        return {"contacts": contacts, "total": total, "session": session}

    result = run_sdk(
        scenario,
        client_id=seedgen.DEMO_OAUTH_CLIENT_ID,
        client_secret=seedgen.DEMO_OAUTH_CLIENT_SECRET,
        session_storage=MemorySessionStorage(),
    )

    assert {contact["id"] for contact in result["contacts"]} == {c["id"] for c in SEED_B["contacts"]}
    assert result["total"] == len(SEED_B["contacts"])
    assert result["session"]["refresh_token"] != seedgen.DEMO_REFRESH_TOKEN_B
    assert result["session"]["access_token"] != "expired-access-token"
    assert sandbox.stats("ghl")["refresh"]["granted"] == 1
