"""The seed generator: determinism, the demo constants and the messy data the pipeline must handle."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from email_validator import EmailNotValidError, validate_email

from sandbox import seedgen


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    return seedgen.generate_demo_seed()


def _contacts(seed: dict[str, Any]) -> list[dict[str, Any]]:
    return [contact for location in seed["ghl"]["locations"] for contact in location["contacts"]]


def _is_valid_email(address: str) -> bool:
    try:
        validate_email(address.strip().lower(), check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def test_same_arguments_same_seed(demo: dict[str, Any]) -> None:
    again = seedgen.generate_demo_seed()

    assert json.dumps(again, sort_keys=True) == json.dumps(demo, sort_keys=True)


def test_other_random_seed_differs(demo: dict[str, Any]) -> None:
    other = seedgen.generate_demo_seed(random_seed=8)

    assert _contacts(other)[0]["id"] != _contacts(demo)[0]["id"]


def test_locations_draw_independently() -> None:
    small = seedgen.generate_seed(contacts_per_location=(50, 10))
    larger = seedgen.generate_seed(contacts_per_location=(50, 40))

    assert larger["ghl"]["locations"][0] == small["ghl"]["locations"][0]
    assert len(larger["ghl"]["locations"][1]["contacts"]) == 40


def test_demo_generation_is_fast() -> None:
    started = time.process_time()
    seedgen.generate_demo_seed()

    assert time.process_time() - started < 1.0


def test_demo_credentials(demo: dict[str, Any]) -> None:
    location_a, location_b = demo["ghl"]["locations"]
    app_a, app_b = demo["memberstack"]["apps"]

    assert demo["ghl"]["oauth_clients"] == [{"client_id": "sandbox-demo-client",
                                              "client_secret": "sandbox-demo-client-secret"}]
    assert location_a["id"] == "DemoLocationPit00001"
    assert location_a["private_integration_tokens"] == ["pit-sandbox-demo-location-a"]
    assert location_a["oauth_grants"] == []
    assert location_b["id"] == "DemoLocationOAuth001"
    assert location_b["private_integration_tokens"] == []
    assert location_b["oauth_grants"] == [{"client_id": "sandbox-demo-client",
                                           "refresh_token": "sandbox-demo-refresh-b"}]
    assert app_a["secret_key"] == "sk_sb_demo_app_a"
    assert app_b["secret_key"] == "sk_sb_demo_app_b"


def test_demo_contact_split(demo: dict[str, Any]) -> None:
    location_a, location_b = demo["ghl"]["locations"]

    assert len(location_a["contacts"]) == 1100
    assert len(location_b["contacts"]) == 900


def test_demo_apps_match_mapping(demo: dict[str, Any]) -> None:
    for app in demo["memberstack"]["apps"]:
        plans = {plan["id"]: plan["type"] for plan in app["plans"]}
        tables = {table["key"]: {field["key"]: field["type"] for field in table["fields"]}
                  for table in app["data_tables"]}

        assert app["custom_fields"] == ["first-name", "last-name", "phone", "ghl-tags", "ghl-status",
                                        "membership-tier"]
        assert plans == {"pln_vip-free": "FREE", "pln_members-free": "FREE", "pln_premium-paid": "PAID"}
        assert set(tables) == {"ghl_tasks", "ghl_notes", "ghl_appointments"}
        assert tables["ghl_tasks"]["ghl_task_id"] == "TEXT_UNIQUE"
        assert tables["ghl_tasks"]["due_date"] == "DATE"
        assert tables["ghl_tasks"]["completed"] == "BOOLEAN"
        assert tables["ghl_notes"]["ghl_contact_id"] == "TEXT_FILTERABLE"
        assert tables["ghl_notes"]["member"] == "MEMBER_REFERENCE"
        assert tables["ghl_appointments"]["status"] == "TEXT"
        assert tables["ghl_appointments"]["start_time"] == "DATE"
        assert app["members"] == []


def test_membership_tier_field_defined(demo: dict[str, Any]) -> None:
    for location in demo["ghl"]["locations"]:
        keys = {field["fieldKey"]: field for field in location["custom_fields"]}

        assert keys["contact.membership_tier"]["model"] == "contact"
        assert keys["contact.membership_tier"]["locationId"] == location["id"]


def test_emails_are_messy(demo: dict[str, Any]) -> None:
    contacts = _contacts(demo)
    emails = [contact["email"] for contact in contacts if "email" in contact]
    valid = [email.strip().lower() for email in emails if _is_valid_email(email)]

    assert len(contacts) - len(emails) >= 20
    assert len(emails) - len(valid) >= 20
    assert len(valid) - len(set(valid)) >= 10
    assert sum(1 for email in emails if email != email.lower()) >= 100
    assert sum(1 for email in emails if email != email.strip()) >= 40


def test_names_include_non_ascii(demo: dict[str, Any]) -> None:
    names = [contact.get("firstName", "") + contact.get("lastName", "") for contact in _contacts(demo)]

    assert sum(1 for name in names if not name.isascii()) >= 500


def test_phones_mix_formats(demo: dict[str, Any]) -> None:
    phones = [contact["phone"] for contact in _contacts(demo) if "phone" in contact]
    e164 = [phone for phone in phones if phone.startswith("+") and phone[1:].isdigit()]

    assert len(e164) >= 500
    assert len(phones) - len(e164) >= 400


def test_tags_vary_in_case_and_spacing(demo: dict[str, Any]) -> None:
    tags = Counter(tag for contact in _contacts(demo) for tag in contact["tags"])
    vip_variants = {tag for tag in tags if tag.strip().casefold() == "vip"}

    assert {"vip", "VIP"} <= vip_variants
    assert any(tag != tag.strip() for tag in vip_variants)
    assert any("," in tag for tag in tags)


def test_custom_field_value_types(demo: dict[str, Any]) -> None:
    values = [field["value"] for contact in _contacts(demo) for field in contact["customFields"]]
    kinds = {type(value).__name__ for value in values}

    assert {"str", "int", "list"} <= kinds


def test_some_notes_are_html(demo: dict[str, Any]) -> None:
    bodies = [note["body"] for location in demo["ghl"]["locations"] for note in location["notes"]]

    assert sum(1 for body in bodies if "<p>" in body or "<br" in body) >= 100
    assert any("<script>" in body for body in bodies)


def test_objects_belong_to_contacts(demo: dict[str, Any]) -> None:
    for location in demo["ghl"]["locations"]:
        contact_ids = {contact["id"] for contact in location["contacts"]}
        for entity in ("tasks", "notes", "appointments"):
            owners = {item["contactId"] for item in location[entity]}

            assert owners <= contact_ids, entity
            assert len(location[entity]) > len(contact_ids), entity


def test_ids_are_unique(demo: dict[str, Any]) -> None:
    ids = [item["id"] for location in demo["ghl"]["locations"]
           for entity in ("contacts", "tasks", "notes", "appointments", "custom_fields")
           for item in location[entity]]

    assert len(ids) == len(set(ids))
    assert all(len(item_id) == 20 and item_id.isalnum() for item_id in ids)


def test_date_updated_not_before_added(demo: dict[str, Any]) -> None:
    for contact in _contacts(demo):
        assert contact["dateUpdated"] >= contact["dateAdded"], contact["id"]
        assert contact["dateUpdated"] < "2025-06-01T00:00:00.000Z", contact["id"]


@pytest.mark.parametrize(("spec", "allowed"), [
    (2, {2}),
    ((1, 3), {1, 2, 3}),
    ({0: 1, 4: 1}, {0, 4}),
])
def test_count_specs(spec: seedgen.CountSpec, allowed: set[int]) -> None:
    seed = seedgen.generate_seed(contacts_per_location=(60,), tasks=spec, notes=0, appointments=0)
    location = seed["ghl"]["locations"][0]
    per_contact = Counter(task["contactId"] for task in location["tasks"])
    counts = {per_contact.get(contact["id"], 0) for contact in location["contacts"]}

    assert counts <= allowed
    assert location["notes"] == []
    assert location["appointments"] == []


@pytest.mark.parametrize("spec", [-1, (3, 1), {}, {1: 0}, True, "2"])
def test_invalid_count_spec(spec: Any) -> None:
    with pytest.raises(ValueError, match="tasks"):
        seedgen.generate_seed(contacts_per_location=(1,), tasks=spec)


def test_shared_date_updated_share() -> None:
    seed = seedgen.generate_seed(contacts_per_location=(2000,), tasks=0, notes=0, appointments=0,
                                 same_date_updated_share=0.5, same_date_updated_values=2)
    counts = Counter(contact["dateUpdated"] for contact in _contacts(seed))
    top_two = counts.most_common(2)

    assert 900 <= top_two[0][1] + top_two[1][1] <= 1100


def test_members_per_app() -> None:
    seed = seedgen.generate_seed(contacts_per_location=(1, 1), members_per_app=25)
    apps = seed["memberstack"]["apps"]
    emails = [member["auth"]["email"] for app in apps for member in app["members"]]
    paid = [member for member in apps[0]["members"]
            if any(plan["planId"] == "pln_premium-paid" for plan in member["planConnections"])]

    assert [len(app["members"]) for app in apps] == [25, 25]
    assert len(set(emails)) == 50
    assert all(member["id"].startswith("mem_") for app in apps for member in app["members"])
    assert len(paid) == 3


def test_extra_locations_get_own_credentials() -> None:
    seed = seedgen.generate_seed(contacts_per_location=(1, 1, 2))
    third = seed["ghl"]["locations"][2]

    assert third["id"] == "DemoLocationExtra003"
    assert third["private_integration_tokens"] == ["pit-sandbox-location-3"]
    assert seed["memberstack"]["apps"][2]["secret_key"] == "sk_sb_app_3"


def test_demo_seed_matches_seed_schema(demo: dict[str, Any]) -> None:
    seeding = pytest.importorskip("sandbox.seeding")
    if not seeding.SCHEMA_PATH.exists():
        pytest.skip(f"seed schema {seeding.SCHEMA_PATH} does not exist yet")

    seeding.validate_seed(demo)
    seeding.validate_seed(seedgen.generate_seed((3, 2, 1), members_per_app=4))


def test_cli_writes_seed(tmp_path: Path) -> None:
    out = tmp_path / "seed.json"

    exit_code = seedgen.main(["--out", str(out), "--contacts", "40", "--random-seed", "3"])

    assert exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8")) == seedgen.generate_demo_seed(40, random_seed=3)
