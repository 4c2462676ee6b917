"""Memberstack emulator behaviour over HTTP: keys, rate limit, members, plans and Data Tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox.core import DEFAULT_CONFIG
from sandbox.seeding import EXAMPLE_SEED_PATH
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = pytest.mark.integration

KEY_A = "sk_sb_demo_app_a"
EXISTING = "mem_example00000000000000001"
SCORE_FIELDS = [
    {"key": "code", "type": "TEXT_UNIQUE", "required": True},
    {"key": "score", "type": "DECIMAL", "required": False},
    {"key": "visits", "type": "NUMBER", "required": False, "defaultValue": 0},
    {"key": "active", "type": "BOOLEAN", "required": False},
    {"key": "seen", "type": "DATE", "required": False},
    {"key": "owner", "type": "MEMBER_REFERENCE", "required": False},
    {"key": "note", "type": "REFERENCE", "required": False, "referencedTableId": "ghl_notes"},
]


def memberstack_seed() -> dict[str, Any]:
    seed = json.loads(EXAMPLE_SEED_PATH.read_text(encoding="utf-8"))
    app = seed["memberstack"]["apps"][0]
    app["data_tables"].append({"key": "scores", "name": "Scores", "fields": SCORE_FIELDS, "records": []})
    return seed


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(seed=memberstack_seed()) as handle:
        yield handle


@pytest.fixture()
def sb(sandbox: SandboxHandle) -> Iterator[SandboxHandle]:
    sandbox.reset(memberstack_seed())
    yield sandbox
    for which in ("ghl", "memberstack"):
        sandbox.set_config(which, **DEFAULT_CONFIG)
    sandbox.freeze_clock(False)


@pytest.fixture()
def api(sb: SandboxHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sb.memberstack_url, headers={"X-API-KEY": KEY_A}, trust_env=False,
                      timeout=10) as client:
        yield client


def create_member(api: httpx.Client, email: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/members", json={"email": email, "password": "a-long-password", **fields})
    assert response.status_code == 201, response.text
    return response.json()["data"]


def create_score(api: httpx.Client, **data: Any) -> httpx.Response:
    return api.post("/v2/data-tables/scores/records", json={"data": data})


# -- keys and limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "status"), [(None, 400), ("pk_sb_public", 400), ("sk_sb_unknown", 401)])
def test_api_key_checked(sb: SandboxHandle, key: str | None, status: int) -> None:
    headers = {"X-API-KEY": key} if key else {}
    response = httpx.get(f"{sb.memberstack_url}/members", headers=headers, trust_env=False)
    assert response.status_code == status
    assert response.json()["code"] == "validation/invalid-secret-key"


def test_26th_request_in_one_second_gets_429(sb: SandboxHandle, api: httpx.Client) -> None:
    sb.freeze_clock()
    passed = [api.get(f"/members/{EXISTING}") for _ in range(25)]
    refused = api.get(f"/members/{EXISTING}")
    sb.advance_clock(1.0)
    after = api.get(f"/members/{EXISTING}")
    assert all(response.status_code == 200 for response in passed)
    assert refused.status_code == 429
    assert refused.json() == {"code": "generic-message", "message": "Too many requests"}
    assert after.status_code == 200


def test_rate_limit_counts_every_key(sb: SandboxHandle, api: httpx.Client) -> None:
    sb.freeze_clock()
    sb.set_config("memberstack", memberstack_rate=3)
    other = httpx.Client(base_url=sb.memberstack_url, headers={"X-API-KEY": "sk_sb_demo_app_b"}, trust_env=False)
    statuses = [api.get("/members").status_code, other.get("/members").status_code, api.get("/members").status_code,
                other.get("/members").status_code]
    assert statuses == [200, 200, 200, 429]


def test_invalid_json_body_rejected(api: httpx.Client) -> None:
    response = api.post("/members", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "validation/invalid-json"


# -- members ------------------------------------------------------------------------------------


def test_members_list_pages(api: httpx.Client) -> None:
    for number in range(4):
        create_member(api, f"page{number}@example.org")
    first = api.get("/members", params={"first": 2}).json()
    second = api.get("/members", params={"first": 2, "after": first["endCursor"]}).json()
    last = api.get("/members", params={"first": 2, "after": second["endCursor"]}).json()
    beyond = api.get("/members", params={"first": 2, "after": last["endCursor"]}).json()
    assert first["totalCount"] == 5
    assert first["hasNextPage"] is True
    assert isinstance(first["endCursor"], int)
    assert [m["id"] for m in first["data"]][0] == EXISTING
    assert len(second["data"]) == 2
    assert len(last["data"]) == 1
    assert last["hasNextPage"] is False
    assert isinstance(last["endCursor"], int)
    assert beyond["data"] == []
    assert beyond["endCursor"] == last["endCursor"]


def test_members_list_quirks(api: httpx.Client) -> None:
    create_member(api, "quirk@example.org", json={"prefs": {"news": True}})
    stray = api.get("/members?&after=")
    capped = api.get("/members", params={"limit": 500})
    with_json = api.get("/members", params={"includeJSON": "true"}).json()["data"]
    descending = api.get("/members", params={"order": "DESC"}).json()["data"]
    assert stray.status_code == 200
    assert capped.status_code == 200
    assert all("json" not in member for member in stray.json()["data"])
    assert with_json[1]["json"] == {"prefs": {"news": True}}
    assert descending[0]["auth"]["email"] == "quirk@example.org"


def test_get_member_by_id_or_email(api: httpx.Client) -> None:
    created = create_member(api, "Plus+Tag@Example.org")
    by_id = api.get(f"/members/{created['id']}").json()["data"]
    by_email = api.get("/members/plus%2Btag%40example.org").json()["data"]
    missing = api.get("/members/nobody%40example.org")
    assert by_id["auth"]["email"] == "plus+tag@example.org"
    assert by_email["id"] == created["id"]
    assert missing.status_code == 200
    assert missing.json() == {"data": None}


def test_create_member_drops_unknown_custom_fields(api: httpx.Client) -> None:
    created = create_member(api, "fields@example.org", customFields={"first-name": "Ana", "shoe-size": "42"},
                            metaData={"ghlContactId": "abc"}, plans=[{"planId": "pln_vip-free"}])
    assert created["customFields"] == {"first-name": "Ana"}
    assert created["metaData"] == {"ghlContactId": "abc"}
    assert [c["planId"] for c in created["planConnections"]] == ["pln_vip-free"]
    assert created["planConnections"][0]["type"] == "FREE"


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"password": "a-long-password"}, "generic-message", "Email is required"),
        ({"email": "no-password@example.org"}, "generic-message", "Password is required"),
        ({"email": "short@example.org", "password": "short"}, "generic-message", "at least 8"),
        ({"email": "bad email", "password": "a-long-password"}, "invalid-email", "invalid"),
        ({"email": "EXISTING.member@example.org", "password": "a-long-password"}, "generic-message", "already exists"),
        ({"email": "paid@example.org", "password": "a-long-password", "plans": [{"planId": "pln_premium-paid"}]},
         "generic-message", "paid plan"),
        ({"email": "ghost@example.org", "password": "a-long-password", "plans": [{"planId": "pln_nope"}]},
         "plan-not-found", "not found"),
        ({"email": "cf@example.org", "password": "a-long-password", "customFields": {"first-name": 1}},
         "generic-message", "must be strings"),
        ({"email": "meta@example.org", "password": "a-long-password", "metaData": {"blob": "x" * 600}},
         "generic-message", "500 characters"),
    ],
)
def test_create_member_rejects(api: httpx.Client, body: dict[str, Any], code: str, fragment: str) -> None:
    response = api.post("/members", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert fragment in response.json()["message"]


def test_update_member_merge_rules(api: httpx.Client) -> None:
    created = create_member(api, "merge@example.org", customFields={"first-name": "Ana", "last-name": "Ruiz"},
                            metaData={"a": "1", "b": "2"}, json={"keep": False, "x": 1})
    response = api.patch(f"/members/{created['id']}", json={
        "customFields": {"last-name": "Ruíz", "unknown": "dropped"}, "metaData": {"b": None, "c": "3"},
        "json": {"only": True}})
    updated = response.json()["data"]
    assert response.status_code == 200
    assert updated["customFields"] == {"first-name": "Ana", "last-name": "Ruíz"}
    assert updated["metaData"] == {"a": "1", "c": "3"}
    assert updated["json"] == {"only": True}


def test_update_member_email_unique(api: httpx.Client) -> None:
    created = create_member(api, "first@example.org")
    clash = api.patch(f"/members/{created['id']}", json={"email": "existing.member@example.org"})
    changed = api.patch(f"/members/{created['id']}", json={"email": "Renamed@Example.org"})
    assert clash.status_code == 400
    assert changed.json()["data"]["auth"]["email"] == "renamed@example.org"
    assert api.get("/members/renamed%40example.org").json()["data"]["id"] == created["id"]


def test_unknown_member_gets_400(api: httpx.Client) -> None:
    for response in (api.patch("/members/mem_missing", json={"verified": True}), api.delete("/members/mem_missing"),
                     api.post("/members/mem_missing/add-plan", json={"planId": "pln_vip-free"})):
        assert response.status_code == 400
        assert response.json()["message"] == "There is no member with this identifier."


def test_plans_answer_ok_text(api: httpx.Client) -> None:
    added = api.post(f"/members/{EXISTING}/add-plan", json={"planId": "pln_vip-free"})
    twice = api.post(f"/members/{EXISTING}/add-plan", json={"planId": "pln_vip-free"})
    paid = api.post(f"/members/{EXISTING}/add-plan", json={"planId": "pln_premium-paid"})
    removed = api.post(f"/members/{EXISTING}/remove-plan", json={"planId": "pln_members-free"})
    not_held = api.post(f"/members/{EXISTING}/remove-plan", json={"planId": "pln_members-free"})
    member = api.get(f"/members/{EXISTING}").json()["data"]
    assert added.status_code == 200
    assert added.text == "OK"
    assert twice.status_code == 400
    assert paid.status_code == 400
    assert removed.text == "OK"
    assert not_held.status_code == 400
    assert [c["planId"] for c in member["planConnections"]] == ["pln_vip-free"]


def test_delete_member(api: httpx.Client) -> None:
    created = create_member(api, "bye@example.org")
    response = api.delete(f"/members/{created['id']}")
    assert response.json() == {"data": {"id": created["id"]}}
    assert api.get(f"/members/{created['id']}").json() == {"data": None}


# -- data tables --------------------------------------------------------------------------------


def test_tables_list_and_get(api: httpx.Client) -> None:
    tables = api.get("/v2/data-tables").json()["data"]["tables"]
    by_key = api.get("/v2/data-tables/scores").json()["data"]
    by_id = api.get(f"/v2/data-tables/{by_key['id']}").json()["data"]
    missing = api.get("/v2/data-tables/nothing")
    bad_key = api.get("/v2/data-tables/bad%20key")
    assert [table["key"] for table in tables] == ["ghl_tasks", "ghl_notes", "ghl_appointments", "scores"]
    assert [field["key"] for field in by_key["fields"]] == [field["key"] for field in SCORE_FIELDS]
    assert by_id["key"] == "scores"
    assert missing.status_code == 404
    assert missing.json()["message"] == "Data table not found"
    assert bad_key.status_code == 400
    assert bad_key.json()["message"] == "Invalid table key or ID format"


def test_decimal_text_from_writes_number_from_reads(api: httpx.Client) -> None:
    created = create_score(api, code="a", score=19.90, owner=EXISTING, seen="2024-03-01T00:00:00Z")
    record_id = created.json()["data"]["id"]
    updated = api.put(f"/v2/data-tables/scores/records/{record_id}", json={"data": {"score": "7.25"}})
    read = api.post("/v2/data-tables/scores/records/query",
                    json={"query": {"findUnique": {"where": {"id": record_id}}}}).json()["data"]["record"]
    deleted = api.delete(f"/v2/data-tables/scores/records/{record_id}")
    assert created.status_code == 201
    assert created.json()["data"]["data"]["score"] == "19.9"
    assert created.json()["data"]["data"]["visits"] == 0
    assert updated.json()["data"]["data"]["score"] == "7.25"
    assert read["data"]["score"] == 7.25
    assert deleted.json()["data"]["data"]["score"] == "7.25"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"score": 1}, "Field 'code' is required"),
        ({"code": "x", "visits": 1.5}, "must be an integer"),
        ({"code": "x", "active": "yes"}, "true or false"),
        ({"code": "x", "seen": "yesterday"}, "ISO 8601"),
        ({"code": "x", "owner": "mem_nobody"}, "existing member"),
        ({"code": "x", "note": "rec_nothing"}, "existing record"),
        ({"code": "x", "score": "ten"}, "decimal"),
        ({"code": "x", "colour": "red"}, "Unknown field 'colour'"),
    ],
)
def test_record_field_rules(api: httpx.Client, data: dict[str, Any], fragment: str) -> None:
    response = create_score(api, **data)
    assert response.status_code == 400
    assert fragment in response.json()["message"]


def test_text_unique_enforced(api: httpx.Client) -> None:
    first = create_score(api, code="same")
    second = create_score(api, code="same")
    other = create_score(api, code="other").json()["data"]
    clash = api.put(f"/v2/data-tables/scores/records/{other['id']}", json={"data": {"code": "same"}})
    keep = api.put(f"/v2/data-tables/scores/records/{other['id']}", json={"data": {"code": "other"}})
    assert first.status_code == 201
    assert second.status_code == 400
    assert "unique" in second.json()["message"]
    assert clash.status_code == 400
    assert keep.status_code == 200


def test_record_create_checks_member_id(api: httpx.Client) -> None:
    response = api.post("/v2/data-tables/scores/records", json={"data": {"code": "m"}, "memberId": "mem_nobody"})
    ok = api.post("/v2/data-tables/scores/records", json={"data": {"code": "n"}, "memberId": EXISTING})
    assert response.status_code == 400
    assert ok.json()["data"]["createdByMemberId"] == EXISTING


def test_find_many_where_order_take_after(api: httpx.Client) -> None:
    for number in range(7):
        create_score(api, code=f"c{number}", score=number / 2, active=number % 2 == 0)
    query = "/v2/data-tables/scores/records/query"

    def find(**options: Any) -> dict[str, Any]:
        response = api.post(query, json={"query": {"findMany": options}})
        assert response.status_code == 200, response.text
        return response.json()["data"]

    collected, cursor = [], None
    while True:
        page = find(take=3, **({"after": cursor} if cursor is not None else {}))
        collected += [record["data"]["code"] for record in page["records"]]
        if not page["pagination"]["hasMore"]:
            break
        cursor = page["pagination"]["endCursor"]
    assert collected == [f"c{n}" for n in range(7)]
    high = find(where={"score": {"gte": 2}}, orderBy={"score": "desc"})["records"]
    assert [record["data"]["code"] for record in high] == ["c6", "c5", "c4"]
    mixed = find(where={"OR": [{"code": {"in": ["c1", "c2"]}}, {"code": {"endsWith": "6"}}], "active": True})
    assert [record["data"]["code"] for record in mixed["records"]] == ["c2", "c6"]
    negated = find(where={"NOT": {"code": {"startsWith": "c"}}})
    assert negated["records"] == []
    counted = api.post(query, json={"query": {"findMany": {"where": {"active": False}, "_count": True}}})
    assert counted.json()["data"] == {"_count": 3}
    ordered = find(orderBy=[{"active": "desc"}, {"score": "asc"}], take=2)
    assert [record["data"]["code"] for record in ordered["records"]] == ["c0", "c2"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "Query parameter is required"),
        ({"query": {}}, 400, "Either query.findMany or query.findUnique parameter is required"),
        ({"query": {"findMany": {}, "findUnique": {}}}, 400, "Cannot specify both query.findMany and query.findUnique"),
        ({"query": {"findUnique": {"where": {}}}}, 400, "query.findUnique requires where.id"),
        ({"query": {"findUnique": {"where": {"id": "rec_none"}}}}, 404, "Record not found"),
        ({"query": {"findMany": {"take": 0}}}, 400, "take must be between 1 and 100"),
        ({"query": {"findMany": {"take": 101}}}, 400, "take must be between 1 and 100"),
        ({"query": {"findMany": {"skip": 1, "after": 1}}}, 400, "skip and after cannot be used together"),
        ({"query": {"findMany": {"where": {"nope": 1}}}}, 400, "Unknown field 'nope' for table 'scores'"),
    ],
)
def test_query_errors(api: httpx.Client, body: dict[str, Any], status: int, message: str) -> None:
    response = api.post("/v2/data-tables/scores/records/query", json=body)
    assert response.status_code == status
    assert response.json()["message"] == message


def test_update_and_delete_record_rules(api: httpx.Client) -> None:
    record = create_score(api, code="u", score="1.5", active=True).json()["data"]
    path = f"/v2/data-tables/scores/records/{record['id']}"
    empty = api.put(path, json={"data": {}})
    partial = api.put(path, json={"data": {"active": False}}).json()["data"]
    missing = api.put("/v2/data-tables/scores/records/rec_none", json={"data": {"active": True}})
    deleted = api.delete(path)
    again = api.delete(path)
    assert empty.status_code == 400
    assert empty.json()["message"] == "data cannot be empty"
    assert partial["data"] == {"code": "u", "score": "1.5", "active": False, "visits": 0}
    assert missing.status_code == 404
    assert missing.json()["message"] == "Data record not found"
    assert deleted.json()["data"]["id"] == record["id"]
    assert again.status_code == 404


def test_memberstack_faults_and_stats(sb: SandboxHandle, api: httpx.Client) -> None:
    sb.set_config("memberstack", faults={"503": 1.0})
    unavailable = api.get("/members")
    sb.set_config("memberstack", faults={})
    api.get(f"/members/{EXISTING}")
    stats = sb.stats("memberstack")
    assert unavailable.status_code == 503
    assert unavailable.headers["content-type"].startswith("text/html")
    assert stats["by_route"] == {"GET /members": {"503": 1}, "GET /members/{id}": {"200": 1}}
    assert stats["faults"] == {"503": 1}
