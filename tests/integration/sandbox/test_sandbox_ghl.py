"""GHL emulator behaviour over HTTP: OAuth, limits, search, contacts, activities, faults and stats."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox.core import DEFAULT_CONFIG, parse_iso_ms
from sandbox.seeding import EXAMPLE_SEED_PATH, validate_seed
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = pytest.mark.integration

LOCATION_A = "DemoLocationPit00001"
LOCATION_B = "DemoLocationOAuth001"
PIT_A = "pit-sandbox-demo-location-a"
CLIENT_ID = "sandbox-demo-client"
CLIENT_SECRET = "sandbox-demo-client-secret"
REFRESH_B = "sandbox-demo-refresh-b"
CODE_B = "sandbox-demo-code-b"
CONTACT_A1 = "ExA0000000000000001a"
CONTACT_A2 = "ExA0000000000000002b"
CONTACT_B1 = "ExB0000000000000001a"
TIER_FIELD_A = "DemoLocaField0000000"
RATE_HEADERS = ("x-ratelimit-limit-daily", "x-ratelimit-daily-remaining", "x-ratelimit-interval-milliseconds",
                "x-ratelimit-max", "x-ratelimit-remaining")


def example_seed() -> dict[str, Any]:
    return json.loads(EXAMPLE_SEED_PATH.read_text(encoding="utf-8"))


def tied_seed(count: int) -> dict[str, Any]:
    """Return the example seed with `count` extra contacts in location A sharing one dateUpdated."""
    seed = example_seed()
    contacts = seed["ghl"]["locations"][0]["contacts"]
    for number in range(count):
        contacts.append({"id": f"Tie{number:017d}", "firstName": f"Tie {number}", "email": f"tie{number}@example.org",
                         "dateAdded": "2024-01-01T00:00:00.000Z", "dateUpdated": "2024-04-01T00:00:00.000Z"})
    return seed


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(seed=example_seed()) as handle:
        yield handle


@pytest.fixture()
def sb(sandbox: SandboxHandle) -> Iterator[SandboxHandle]:
    sandbox.reset(example_seed())
    yield sandbox
    for which in ("ghl", "memberstack"):
        sandbox.set_config(which, **DEFAULT_CONFIG)
    sandbox.freeze_clock(False)


def ghl(sb: SandboxHandle, token: str | None = PIT_A, version: str | None = "2021-07-28") -> httpx.Client:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if version is not None:
        headers["Version"] = version
    return httpx.Client(base_url=sb.ghl_url, headers=headers, trust_env=False, timeout=10)


def token_request(sb: SandboxHandle, **fields: str) -> httpx.Response:
    form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **fields}
    return httpx.post(f"{sb.ghl_url}/oauth/token", data=form, trust_env=False, timeout=10)


def access_token_b(sb: SandboxHandle) -> str:
    response = token_request(sb, grant_type="refresh_token", refresh_token=REFRESH_B, user_type="Location")
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def search(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/contacts/search", json={"locationId": LOCATION_A, "pageLimit": 100, **body})


def contact(client: httpx.Client, contact_id: str) -> dict[str, Any]:
    response = client.get(f"/contacts/{contact_id}")
    assert response.status_code == 200, response.text
    return response.json()["contact"]


# -- state and OAuth ----------------------------------------------------------------------------


def test_state_fed_back_gives_same_state(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        assert client.post("/contacts/", json={"locationId": LOCATION_A, "firstName": "Neu",
                                               "email": "neu@example.org"}).status_code == 201
        assert client.post(f"/contacts/{CONTACT_A1}/tasks", json={
            "title": "Follow up", "dueDate": "2024-05-01T10:00:00Z", "completed": False}).status_code == 201
    access_token_b(sb)
    members = httpx.Client(base_url=sb.memberstack_url, headers={"X-API-KEY": "sk_sb_demo_app_a"}, trust_env=False)
    created = members.post("/members", json={"email": "round@example.org", "password": "long-enough-1"})
    assert created.status_code == 201
    record = members.post("/v2/data-tables/ghl_notes/records", json={"data": {
        "ghl_note_id": "n1", "ghl_contact_id": CONTACT_A1, "ghl_location_id": LOCATION_A,
        "member": created.json()["data"]["id"], "body": "<p>hi</p>"}})
    assert record.status_code == 201
    state = sb.state()
    validate_seed(state)
    sb.reset(state)
    assert sb.state() == state


def test_reused_refresh_token_gets_invalid_grant(sb: SandboxHandle) -> None:
    first = token_request(sb, grant_type="refresh_token", refresh_token=REFRESH_B)
    again = token_request(sb, grant_type="refresh_token", refresh_token=REFRESH_B)
    rotated = token_request(sb, grant_type="refresh_token", refresh_token=first.json()["refresh_token"])
    assert first.status_code == 200
    assert first.json()["refresh_token"] != REFRESH_B
    assert first.json()["expires_in"] == 86399
    assert first.json()["locationId"] == LOCATION_B
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert rotated.status_code == 200
    assert sb.stats("ghl")["refresh"] == {"granted": 2, "rejected": 1}


def test_refresh_accepts_camel_case_fields(sb: SandboxHandle) -> None:
    form = {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "grantType": "refresh_token",
            "refreshToken": REFRESH_B, "userType": "Location"}
    response = httpx.post(f"{sb.ghl_url}/oauth/token", data=form, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


@pytest.mark.parametrize(
    ("fields", "status", "error"),
    [
        ({"grant_type": "refresh_token", "refresh_token": REFRESH_B, "client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ({"grant_type": "refresh_token"}, 400, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": REFRESH_B, "user_type": "Company"}, 400, "invalid_request"),
    ],
)
def test_token_endpoint_rejects_bad_requests(sb: SandboxHandle, fields: dict[str, str], status: int,
                                             error: str) -> None:
    response = token_request(sb, **fields)
    assert response.status_code == status
    assert response.json()["error"] == error


def test_token_endpoint_needs_form_body(sb: SandboxHandle) -> None:
    response = httpx.post(f"{sb.ghl_url}/oauth/token", trust_env=False, json={
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "grant_type": "refresh_token",
        "refresh_token": REFRESH_B})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_authorization_code_is_single_use(sb: SandboxHandle) -> None:
    first = token_request(sb, grant_type="authorization_code", code=CODE_B)
    second = token_request(sb, grant_type="authorization_code", code=CODE_B)
    assert first.status_code == 200
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    with ghl(sb, first.json()["access_token"]) as client:
        assert client.get(f"/contacts/{CONTACT_B1}").status_code == 200


def test_inactive_location_keeps_refresh_token(sb: SandboxHandle) -> None:
    seed = example_seed()
    seed["ghl"]["locations"][1]["active"] = False
    sb.reset(seed)
    response = token_request(sb, grant_type="refresh_token", refresh_token=REFRESH_B)
    assert response.status_code == 400
    assert response.json()["message"] == "Location is not active"
    grants = sb.state()["ghl"]["locations"][1]["oauth_grants"]
    assert grants[0]["refresh_token"] == REFRESH_B


def test_expired_access_token_gets_401(sb: SandboxHandle) -> None:
    sb.set_config("ghl", access_token_ttl_s=60)
    token = access_token_b(sb)
    with ghl(sb, token) as client:
        assert client.get(f"/contacts/{CONTACT_B1}").status_code == 200
        sb.advance_clock(61)
        expired = client.get(f"/contacts/{CONTACT_B1}")
    assert expired.status_code == 401
    assert expired.json()["message"] == "Invalid JWT"


def test_old_access_token_valid_after_refresh(sb: SandboxHandle) -> None:
    old = access_token_b(sb)
    state = sb.state()["ghl"]["locations"][1]["oauth_grants"][0]
    assert token_request(sb, grant_type="refresh_token", refresh_token=state["refresh_token"]).status_code == 200
    with ghl(sb, old) as client:
        assert client.get(f"/contacts/{CONTACT_B1}").status_code == 200


def test_unknown_token_gets_401(sb: SandboxHandle) -> None:
    with ghl(sb, "not-a-token") as client:
        response = client.get(f"/contacts/{CONTACT_A1}")
    assert response.status_code == 401
    assert response.json()["message"] == "Invalid token: access token is invalid"


def test_scope_limits_grant(sb: SandboxHandle) -> None:
    seed = example_seed()
    seed["ghl"]["locations"][1]["oauth_grants"][0]["scope"] = "contacts.readonly"
    sb.reset(seed)
    with ghl(sb, access_token_b(sb)) as client:
        assert client.get(f"/contacts/{CONTACT_B1}").status_code == 200
        denied = client.post(f"/contacts/{CONTACT_B1}/tags", json={"tags": ["x"]})
    assert denied.status_code == 401
    assert denied.json()["message"] == "The token is not authorized for this scope."


# -- headers, versions and limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "status", "message"),
    [(None, 401, "version header was not found."), ("2020-01-01", 401, "version header is invalid"),
     ("v3", 200, None), ("2021-04-15", 200, None)],
)
def test_version_header_checked(sb: SandboxHandle, version: str | None, status: int, message: str | None) -> None:
    with ghl(sb, version=version) as client:
        response = client.get(f"/contacts/{CONTACT_A1}")
    assert response.status_code == status
    if message is not None:
        assert response.json()["message"] == message


def test_every_bearer_response_has_rate_headers(sb: SandboxHandle) -> None:
    sb.set_config("ghl", ghl_burst_limit=8)
    with ghl(sb) as client:
        responses = [
            client.get(f"/contacts/{CONTACT_A1}"),
            client.get("/contacts/missing0000000000001"),
            client.post("/contacts/search", json={"locationId": LOCATION_A}),
            client.post("/contacts/search", json={"locationId": LOCATION_B, "pageLimit": 10}),
            client.post("/contacts/", json={"locationId": LOCATION_A, "firstName": "Header"}),
            client.get(f"/contacts/{CONTACT_A1}/notes"),
            client.get("/locations/DemoLocationPit00001/customFields"),
            client.put(f"/contacts/{CONTACT_A1}", json={"lastName": "Neu"}),
        ]
        responses += [client.get(f"/contacts/{CONTACT_A1}") for _ in range(2)]
    with ghl(sb, "not-a-token") as client:
        responses.append(client.get(f"/contacts/{CONTACT_A1}"))
    assert [r.status_code for r in responses] == [200, 400, 422, 403, 201, 200, 200, 200, 429, 429, 401]
    for response in responses:
        missing = [name for name in RATE_HEADERS if name not in response.headers]
        assert not missing, f"{response.request.method} {response.request.url.path} lacks {missing}"
    token = token_request(sb, grant_type="refresh_token", refresh_token=REFRESH_B)
    admin = httpx.get(f"{sb.ghl_url}/_sandbox/stats", trust_env=False)
    assert "x-ratelimit-max" not in token.headers
    assert "x-ratelimit-max" not in admin.headers


def test_101st_request_in_10s_gets_429(sb: SandboxHandle) -> None:
    sb.freeze_clock()
    with ghl(sb) as client:
        passed = [client.get(f"/contacts/{CONTACT_A1}") for _ in range(100)]
        refused = client.get(f"/contacts/{CONTACT_A1}")
        again = client.get(f"/contacts/{CONTACT_A1}")
        sb.advance_clock(10.001)
        after_window = client.get(f"/contacts/{CONTACT_A1}")
    assert all(r.status_code == 200 for r in passed)
    assert passed[0].headers["x-ratelimit-remaining"] == "99"
    assert passed[-1].headers["x-ratelimit-remaining"] == "0"
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-max"] == "100"
    assert refused.headers["x-ratelimit-interval-milliseconds"] == "10000"
    assert again.status_code == 429
    assert after_window.status_code == 200
    # Refused requests are not counted, so the new window holds only this one.
    assert after_window.headers["x-ratelimit-remaining"] == "99"
    assert after_window.headers["x-ratelimit-daily-remaining"] == str(200_000 - 101)


def test_window_slides(sb: SandboxHandle) -> None:
    sb.freeze_clock()
    sb.set_config("ghl", ghl_burst_limit=4)
    with ghl(sb) as client:
        statuses = [client.get(f"/contacts/{CONTACT_A1}").status_code for _ in range(2)]
        sb.advance_clock(6)
        statuses += [client.get(f"/contacts/{CONTACT_A1}").status_code for _ in range(3)]
        sb.advance_clock(4.5)
        statuses.append(client.get(f"/contacts/{CONTACT_A1}").status_code)
    assert statuses == [200, 200, 200, 200, 429, 200]


def test_buckets_per_location_and_grant(sb: SandboxHandle) -> None:
    seed = example_seed()
    seed["ghl"]["locations"][0]["private_integration_tokens"].append("pit-second-token-a")
    sb.reset(seed)
    sb.freeze_clock()
    sb.set_config("ghl", ghl_burst_limit=3)
    oauth_token = access_token_b(sb)
    with ghl(sb) as first, ghl(sb, "pit-second-token-a") as second, ghl(sb, oauth_token) as other:
        statuses = [first.get(f"/contacts/{CONTACT_A1}").status_code for _ in range(2)]
        statuses.append(second.get(f"/contacts/{CONTACT_A1}").status_code)
        statuses.append(second.get(f"/contacts/{CONTACT_A1}").status_code)
        statuses.append(other.get(f"/contacts/{CONTACT_B1}").status_code)
    assert statuses == [200, 200, 200, 429, 200]


def test_daily_limit_refuses(sb: SandboxHandle) -> None:
    sb.set_config("ghl", ghl_daily_limit=3)
    with ghl(sb) as client:
        responses = [client.get(f"/contacts/{CONTACT_A1}") for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert responses[-1].headers["x-ratelimit-daily-remaining"] == "0"


def test_rate_limit_scale_and_switch(sb: SandboxHandle) -> None:
    sb.set_config("ghl", rate_limit_scale=10)
    with ghl(sb) as client:
        assert client.get(f"/contacts/{CONTACT_A1}").headers["x-ratelimit-max"] == "1000"
        sb.set_config("ghl", rate_limit_scale=1, ghl_burst_limit=1, rate_limits=False)
        statuses = {client.get(f"/contacts/{CONTACT_A1}").status_code for _ in range(3)}
    assert statuses == {200}


def test_token_of_other_location_gets_403(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        by_search = search(client, locationId=LOCATION_B)
        by_id = client.get(f"/contacts/{CONTACT_B1}")
        by_path = client.get(f"/locations/{LOCATION_B}/customFields")
    for response in (by_search, by_id, by_path):
        assert response.status_code == 403
        assert response.json()["message"] == "The token does not have access to this location."


# -- search -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"locationId": None}, "locationId should not be empty"),
        ({"pageLimit": None}, "pageLimit should not be empty"),
        ({"pageLimit": 501}, "pageLimit must be between 1 and 500"),
        ({"page": 21, "pageLimit": 500}, "must not exceed 10000"),
        ({"page": 101, "pageLimit": 100}, "must not exceed 10000"),
        ({"filters": [{"field": "contact_name", "operator": "eq", "value": "x"}]}, "Invalid field contact_name"),
        ({"filters": [{"field": "dateUpdated", "operator": "eq", "value": 1}]}, "must be one of: range"),
        ({"filters": [{"field": "email", "operator": "eq", "value": "x" * 76}]}, "75 characters"),
        ({"sort": [{"field": "name", "direction": "asc"}]}, "sort[0].field"),
        ({"searchAfter": ["x", 1]}, "searchAfter must be"),
        ({"page": 2, "searchAfter": [1, "a"]}, "cannot be used together"),
        ({"unknown": 1}, "property unknown should not exist"),
    ],
)
def test_search_rejects_invalid_body(sb: SandboxHandle, body: dict[str, Any], fragment: str) -> None:
    payload = {"locationId": LOCATION_A, "pageLimit": 100, **body}
    payload = {key: value for key, value in payload.items() if value is not None}
    with ghl(sb) as client:
        response = client.post("/contacts/search", json=payload)
    assert response.status_code == 422
    assert isinstance(response.json()["message"], list)
    assert any(fragment in message for message in response.json()["message"]), response.json()


def test_page_mode_reaches_10000(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        response = search(client, page=20, pageLimit=500)
    assert response.status_code == 200
    assert response.json()["contacts"] == []


def test_search_after_returns_each_contact_once(sb: SandboxHandle) -> None:
    sb.reset(tied_seed(57))
    seen: list[str] = []
    cursor = None
    with ghl(sb) as client:
        for _ in range(30):
            extra = {"searchAfter": cursor} if cursor else {}
            body = search(client, pageLimit=7, sort=[{"field": "dateUpdated", "direction": "asc"}], **extra).json()
            if not body["contacts"]:
                break
            seen += [record["id"] for record in body["contacts"]]
            cursor = body["contacts"][-1]["searchAfter"]
    assert len(seen) == 61
    assert len(set(seen)) == 61
    assert body["total"] == 61


def test_search_descending_order(sb: SandboxHandle) -> None:
    sb.reset(tied_seed(9))
    with ghl(sb) as client:
        first = search(client, pageLimit=5, sort=[{"field": "dateUpdated", "direction": "desc"}]).json()["contacts"]
        rest = search(client, pageLimit=50, sort=[{"field": "dateUpdated", "direction": "desc"}],
                      searchAfter=first[-1]["searchAfter"]).json()["contacts"]
    keys = [tuple(record["searchAfter"]) for record in first + rest]
    assert keys == sorted(keys, reverse=True)
    assert len(keys) == 13


def test_search_record_shape(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        body = search(client, filters=[{"field": "id", "operator": "eq", "value": CONTACT_A1}]).json()
        full = contact(client, CONTACT_A1)
    record = body["contacts"][0]
    assert body["total"] == 1
    assert "traceId" in body
    assert "dndSettings" in full
    assert "dndSettings" not in record
    assert record["searchAfter"] == [parse_iso_ms(full["dateUpdated"]), CONTACT_A1]
    assert {key: value for key, value in record.items() if key != "searchAfter"} == {
        key: value for key, value in full.items() if key != "dndSettings"}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([{"field": "dateUpdated", "operator": "range", "value": {"gt": "2024-03-01T10:00:00.000Z"}}],
         {"ExA0000000000000003c", "ExA0000000000000004d"}),
        ([{"field": "dateUpdated", "operator": "range", "value": {"lte": 1709287200000}}], {CONTACT_A1, CONTACT_A2}),
        ([{"field": "dateAdded", "operator": "range",
           "value": {"gte": "2024-01-06T00:00:00Z", "lt": "2024-01-08T00:00:00Z"}}],
         {CONTACT_A2, "ExA0000000000000003c"}),
        ([{"field": "email", "operator": "eq", "value": "ZOE@example.org"}], {CONTACT_A2}),
        ([{"field": "email", "operator": "not_exists"}], {"ExA0000000000000003c"}),
        ([{"field": "tags", "operator": "eq", "value": "vip"}], {CONTACT_A1}),
        ([{"field": "id", "operator": "eq", "value": [CONTACT_A1, CONTACT_A2]}], {CONTACT_A1, CONTACT_A2}),
        ([{"group": "OR", "filters": [{"field": "tags", "operator": "eq", "value": "member"},
                                      {"field": "email", "operator": "eq", "value": "not-an-email"}]}],
         {CONTACT_A2, "ExA0000000000000004d"}),
    ],
)
def test_search_filters(sb: SandboxHandle, filters: list[dict[str, Any]], expected: set[str]) -> None:
    with ghl(sb) as client:
        body = search(client, filters=filters).json()
    assert {record["id"] for record in body["contacts"]} == expected
    assert body["total"] == len(expected)


def test_search_query_text(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        body = search(client, query="müller").json()
    assert [record["id"] for record in body["contacts"]] == [CONTACT_A1]


def test_search_lag_hides_writes(sb: SandboxHandle) -> None:
    sb.freeze_clock()
    sb.set_config("ghl", search_lag_ms=5000)
    with ghl(sb) as client:
        before = search(client).json()["total"]
        client.post("/contacts/", json={"locationId": LOCATION_A, "firstName": "Lagging", "email": "lag@example.org"})
        client.put(f"/contacts/{CONTACT_A1}", json={"lastName": "Neumann"})
        during = search(client).json()
        by_id = contact(client, CONTACT_A1)
        sb.advance_clock(5)
        after = search(client).json()
    old_a1 = next(r for r in during["contacts"] if r["id"] == CONTACT_A1)
    new_a1 = next(r for r in after["contacts"] if r["id"] == CONTACT_A1)
    assert during["total"] == before
    assert old_a1["lastName"] == "Müller"
    assert by_id["lastName"] == "Neumann"
    assert after["total"] == before + 1
    assert new_a1["lastName"] == "Neumann"


def test_deprecated_list_pages(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        too_many = client.get("/contacts/", params={"locationId": LOCATION_A, "limit": 101})
        first = client.get("/contacts/", params={"locationId": LOCATION_A, "limit": 3}).json()
        meta = first["meta"]
        second = client.get("/contacts/", params={"locationId": LOCATION_A, "limit": 3,
                                                  "startAfter": meta["startAfter"],
                                                  "startAfterId": meta["startAfterId"]}).json()
        only_id = client.get("/contacts/", params={"locationId": LOCATION_A, "limit": 3,
                                                   "startAfterId": meta["startAfterId"]}).json()
    assert too_many.status_code == 422
    assert [c["id"] for c in first["contacts"]] == [CONTACT_A1, CONTACT_A2, "ExA0000000000000003c"]
    assert meta["total"] == 4
    assert meta["nextPage"] == 2
    assert meta["nextPageUrl"].startswith(sb.ghl_url)
    assert [c["id"] for c in second["contacts"]] == ["ExA0000000000000004d"]
    assert second["meta"]["nextPage"] is None
    assert second["meta"]["nextPageUrl"] is None
    assert [c["id"] for c in only_id["contacts"]] == [c["id"] for c in first["contacts"]]


# -- contacts -----------------------------------------------------------------------------------


def test_contact_create_update_delete(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        created = client.post("/contacts/", json={
            "locationId": LOCATION_A, "firstName": "Åsa", "lastName": "Lind", "email": "Asa.Lind@example.org",
            "tags": ["new"], "customFields": [{"key": "contact.membership_tier", "field_value": "Gold"}]})
        contact_id = created.json()["contact"]["id"]
        updated = client.put(f"/contacts/{contact_id}", json={
            "customFields": [{"id": TIER_FIELD_A, "field_value": "Silver"}], "tags": ["a", "b"]})
        fetched = contact(client, contact_id)
        deleted = client.delete(f"/contacts/{contact_id}")
        gone = client.get(f"/contacts/{contact_id}")
    assert created.status_code == 201
    assert created.json()["contact"]["customFields"] == [{"id": TIER_FIELD_A, "value": "Gold"}]
    assert created.json()["contact"]["emailLowerCase"] == "asa.lind@example.org"
    assert updated.status_code == 200
    assert updated.json()["succeded"] is True
    assert fetched["customFields"] == [{"id": TIER_FIELD_A, "value": "Silver"}]
    assert fetched["tags"] == ["a", "b"]
    assert fetched["name"] == "Åsa Lind"
    assert deleted.json() == {"succeded": True}
    assert gone.status_code == 400
    assert gone.json()["message"] == f"Contact with id {contact_id} not found"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"firstName": 5}, "firstName must be a string"),
        ({"email": "not an email"}, "email must be an email"),
        ({"bogus": 1}, "property bogus should not exist"),
        ({"customFields": [{"key": "contact.unknown", "field_value": "x"}]}, "no custom field"),
        ({"customFields": [{"id": TIER_FIELD_A, "value": "x"}]}, "field_value should not be empty"),
    ],
)
def test_contact_create_validates(sb: SandboxHandle, body: dict[str, Any], fragment: str) -> None:
    with ghl(sb) as client:
        response = client.post("/contacts/", json={"locationId": LOCATION_A, **body})
    assert response.status_code == 422
    assert any(fragment in message for message in response.json()["message"]), response.json()


def test_duplicate_contact_gets_400_with_meta(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        response = client.post("/contacts/", json={"locationId": LOCATION_A, "email": "ZOE@Example.org"})
    assert response.status_code == 400
    assert response.json()["message"] == "This location does not allow duplicated contacts."
    assert response.json()["meta"] == {"contactId": CONTACT_A2, "contactName": "Zoë Ånström",
                                       "matchingField": "email"}


def test_duplicates_allowed_location_creates(sb: SandboxHandle) -> None:
    with ghl(sb, access_token_b(sb)) as client:
        response = client.post("/contacts/", json={"locationId": LOCATION_B, "email": "jose@example.com"})
    assert response.status_code == 201


def test_upsert_matches_email_then_creates(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        matched = client.post("/contacts/upsert", json={"locationId": LOCATION_A, "email": "zoe@example.org",
                                                        "lastName": "Neu"})
        created = client.post("/contacts/upsert", json={"locationId": LOCATION_A, "email": "fresh@example.org"})
    assert matched.status_code == 200
    assert matched.json()["new"] is False
    assert matched.json()["contact"]["id"] == CONTACT_A2
    assert matched.json()["contact"]["lastName"] == "Neu"
    assert created.json()["new"] is True


def test_tag_changes_bump_date_updated(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        before = contact(client, CONTACT_A1)["dateUpdated"]
        sb.advance_clock(5)
        added = client.post(f"/contacts/{CONTACT_A1}/tags", json={"tags": ["fresh", "VIP"]})
        after_add = contact(client, CONTACT_A1)["dateUpdated"]
        sb.advance_clock(5)
        removed = client.request("DELETE", f"/contacts/{CONTACT_A1}/tags", json={"tags": ["newsletter"]})
        after_remove = contact(client, CONTACT_A1)["dateUpdated"]
        empty = client.post(f"/contacts/{CONTACT_A1}/tags", json={"tags": []})
    assert added.status_code == 201
    assert added.json()["tags"] == ["VIP", "newsletter", "fresh"]
    assert removed.json()["tags"] == ["VIP", "fresh"]
    assert parse_iso_ms(before) < parse_iso_ms(after_add) < parse_iso_ms(after_remove)
    assert empty.status_code == 422


def test_child_changes_leave_date_updated(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        before = contact(client, CONTACT_A1)["dateUpdated"]
        sb.advance_clock(5)
        task = client.post(f"/contacts/{CONTACT_A1}/tasks", json={
            "title": "Check in", "dueDate": "2024-06-01T09:00:00Z", "completed": False}).json()["task"]
        client.put(f"/contacts/{CONTACT_A1}/tasks/{task['id']}/completed", json={"completed": True})
        client.post(f"/contacts/{CONTACT_A1}/notes", json={"body": "quiet note"})
        unchanged = contact(client, CONTACT_A1)["dateUpdated"]
        sb.set_config("ghl", child_changes_bump_contact=True)
        client.post(f"/contacts/{CONTACT_A1}/notes", json={"body": "loud note"})
        bumped = contact(client, CONTACT_A1)["dateUpdated"]
    assert unchanged == before
    assert parse_iso_ms(bumped) > parse_iso_ms(before)


# -- tasks, notes, appointments, custom fields --------------------------------------------------


def test_task_routes(sb: SandboxHandle) -> None:
    base = f"/contacts/{CONTACT_A1}/tasks"
    with ghl(sb) as client:
        invalid = client.post(base, json={"title": "No due date"})
        created = client.post(base, json={"title": "Call", "dueDate": "2024-06-01T09:00:00.000Z",
                                          "completed": False, "body": "about renewal"})
        task_id = created.json()["task"]["id"]
        completed = client.put(f"{base}/{task_id}/completed", json={"completed": True})
        updated = client.put(f"{base}/{task_id}", json={"title": "Call again"})
        listed = client.get(base).json()["tasks"]
        missing = client.get(f"{base}/nosuchtask")
        deleted = client.delete(f"{base}/{task_id}")
    assert invalid.status_code == 422
    assert created.status_code == 201
    assert created.json()["task"]["contactId"] == CONTACT_A1
    assert completed.json()["task"]["completed"] is True
    assert updated.json()["task"]["title"] == "Call again"
    assert len(listed) == 2
    assert missing.status_code == 400
    assert deleted.json() == {"succeded": True}


def test_location_task_search(sb: SandboxHandle) -> None:
    path = f"/locations/{LOCATION_A}/tasks/search"
    with ghl(sb) as client:
        by_contact = client.post(path, json={"contactId": [CONTACT_A2]}).json()["tasks"]
        open_tasks = client.post(path, json={"completed": False}).json()["tasks"]
        paged = client.post(path, json={"limit": 1, "skip": 1}).json()["tasks"]
        too_many = client.post(path, json={"limit": 101})
    assert [task["contactId"] for task in by_contact] == [CONTACT_A2]
    assert [task["id"] for task in open_tasks] == ["ExATask000000000001a"]
    assert [task["id"] for task in paged] == ["ExATask000000000002b"]
    assert too_many.status_code == 422


def test_note_routes(sb: SandboxHandle) -> None:
    base = f"/contacts/{CONTACT_A1}/notes"
    with ghl(sb) as client:
        empty = client.post(base, json={"title": "no body"})
        created = client.post(base, json={"body": "<p>Likes <i>HIIT</i></p>", "pinned": True})
        note_id = created.json()["note"]["id"]
        updated = client.put(f"{base}/{note_id}", json={"body": "changed"})
        fetched = client.get(f"{base}/{note_id}").json()["note"]
        deleted = client.delete(f"{base}/{note_id}")
        after = client.get(base).json()["notes"]
    assert empty.status_code == 422
    assert created.status_code == 201
    assert created.json()["note"]["body"] == "<p>Likes <i>HIIT</i></p>"
    assert updated.status_code == 200
    assert fetched["body"] == "changed"
    assert deleted.json() == {"succeded": True}
    assert [note["id"] for note in after] == ["ExANote000000000001a"]


def test_appointment_routes(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        listed = client.get(f"/contacts/{CONTACT_A2}/appointments").json()["events"]
        window = client.get("/calendars/events", params={
            "locationId": LOCATION_A, "calendarId": "ExampleCalendar00001",
            "startTime": str(parse_iso_ms("2024-03-12T00:00:00Z")), "endTime": str(parse_iso_ms("2024-03-13T00:00:00Z"))})
        no_selector = client.get("/calendars/events", params={"locationId": LOCATION_A, "startTime": "1",
                                                              "endTime": "2"})
        created = client.post("/calendars/events/appointments", json={
            "calendarId": "ExampleCalendar00001", "locationId": LOCATION_A, "contactId": CONTACT_A1,
            "startTime": "2024-07-01T10:00:00Z", "endTime": "2024-07-01T11:00:00Z", "title": "Review"})
        event_id = created.json()["id"]
        updated = client.put(f"/calendars/events/appointments/{event_id}", json={"appointmentStatus": "cancelled"})
        fetched = client.get(f"/calendars/events/appointments/{event_id}").json()["event"]
        deleted = client.delete(f"/calendars/events/{event_id}")
    assert [event["id"] for event in listed] == ["ExAAppt000000000001a"]
    assert [event["id"] for event in window.json()["events"]] == ["ExAAppt000000000001a"]
    assert no_selector.status_code == 422
    assert created.status_code == 201
    assert updated.json()["appointmentStatus"] == "cancelled"
    assert fetched["contactId"] == CONTACT_A1
    assert deleted.status_code == 200


def test_custom_field_definitions(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        listed = client.get(f"/locations/{LOCATION_A}/customFields", params={"model": "contact"}).json()
        by_key = client.get(f"/locations/{LOCATION_A}/customFields/contact.membership_tier")
        bad_model = client.get(f"/locations/{LOCATION_A}/customFields", params={"model": "deal"})
    assert [field["fieldKey"] for field in listed["customFields"]] == ["contact.membership_tier"]
    assert by_key.json()["customField"]["id"] == TIER_FIELD_A
    assert bad_model.status_code == 422


# -- faults and stats ---------------------------------------------------------------------------


def _statuses_under_faults(sb: SandboxHandle, count: int) -> list[int]:
    with ghl(sb) as client:
        return [client.get(f"/contacts/{CONTACT_A1}").status_code for _ in range(count)]


def test_faults_reproducible_from_random_seed(sb: SandboxHandle) -> None:
    sb.set_config("ghl", random_seed=11, faults={"500": 0.2, "503": 0.2, "429": 0.1})
    first = _statuses_under_faults(sb, 40)
    sb.reset(example_seed())
    second = _statuses_under_faults(sb, 40)
    sb.set_config("ghl", random_seed=12)
    third = _statuses_under_faults(sb, 40)
    assert first == second
    assert first != third
    assert {500, 503, 429, 200} <= set(first)


def test_fault_reply_shapes(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        sb.set_config("ghl", faults={"502": 1.0})
        gateway = client.get(f"/contacts/{CONTACT_A1}")
        sb.set_config("ghl", faults={"429": 1.0})
        limited = client.get(f"/contacts/{CONTACT_A1}")
    assert gateway.status_code == 502
    assert gateway.headers["content-type"].startswith("text/html")
    assert "x-ratelimit-remaining" in gateway.headers
    assert limited.status_code == 429
    assert limited.json()["statusCode"] == 429


def test_reset_fault_drops_connection(sb: SandboxHandle) -> None:
    sb.set_config("ghl", faults={"reset": 1.0})
    with ghl(sb) as client, pytest.raises(httpx.TransportError):
        client.get(f"/contacts/{CONTACT_A1}")
    assert sb.stats("ghl")["by_status"] == {"reset": 1}


def test_timeout_after_processes_then_drops(sb: SandboxHandle) -> None:
    sb.set_config("ghl", faults={"timeout_after": 1.0}, timeout_hold_s=0.2)
    with ghl(sb) as client, pytest.raises(httpx.TransportError):
        client.post("/contacts/", json={"locationId": LOCATION_A, "firstName": "Ghost", "email": "ghost@example.org"})
    sb.set_config("ghl", faults={})
    with ghl(sb) as client:
        found = search(client, filters=[{"field": "email", "operator": "eq", "value": "ghost@example.org"}]).json()
    assert found["total"] == 1
    assert sb.stats("ghl")["by_route"]["POST /contacts/"] == {"timeout": 1}


def test_timeout_fault_holds_before_processing(sb: SandboxHandle) -> None:
    sb.set_config("ghl", faults={"timeout": 1.0}, timeout_hold_s=5)
    with ghl(sb) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/contacts/", json={"locationId": LOCATION_A, "firstName": "Never"}, timeout=0.3)
    sb.set_config("ghl", faults={})
    with ghl(sb) as client:
        found = search(client, query="Never").json()
    assert found["total"] == 0


def test_token_endpoint_gets_only_early_faults(sb: SandboxHandle) -> None:
    sb.set_config("ghl", faults={"timeout_after": 1.0})
    response = token_request(sb, grant_type="refresh_token", refresh_token=REFRESH_B)
    assert response.status_code == 200
    sb.set_config("ghl", faults={"503": 1.0})
    refused = token_request(sb, grant_type="refresh_token", refresh_token=response.json()["refresh_token"])
    assert refused.status_code == 503
    sb.set_config("ghl", faults={})
    # The faulted request did not consume the refresh token.
    assert token_request(sb, grant_type="refresh_token",
                         refresh_token=response.json()["refresh_token"]).status_code == 200


def test_stats_by_route_and_status(sb: SandboxHandle) -> None:
    with ghl(sb) as client:
        client.get(f"/contacts/{CONTACT_A1}")
        client.get(f"/contacts/{CONTACT_A2}")
        client.get("/contacts/missing0000000000001")
        search(client)
        client.get("/no/such/route")
    httpx.get(f"{sb.ghl_url}/_sandbox/state", trust_env=False)
    stats = sb.stats("ghl")
    assert stats["total"] == 5
    assert stats["by_status"] == {"200": 3, "400": 1, "404": 1}
    assert stats["by_route"]["GET /contacts/{contactId}"] == {"200": 2, "400": 1}
    assert stats["by_route"]["POST /contacts/search"] == {"200": 1}
    sb.reset()
    assert sb.stats("ghl")["total"] == 0


def test_config_route_merges_and_validates(sb: SandboxHandle) -> None:
    merged = sb.set_config("ghl", latency_ms=0, faults={"500": 0.1})
    bad = httpx.put(f"{sb.ghl_url}/_sandbox/config", json={"ghl_burst_limit": -1}, trust_env=False)
    assert merged["faults"] == {"500": 0.1}
    assert merged["ghl_burst_limit"] == 100
    assert set(merged) == set(DEFAULT_CONFIG)
    assert bad.status_code == 400
    assert "ghl_burst_limit" in bad.json()["error"]


def test_reset_rejects_invalid_seed(sb: SandboxHandle) -> None:
    seed = copy.deepcopy(example_seed())
    seed["ghl"]["locations"][0]["tasks"][0]["contactId"] = "nobody"
    response = httpx.post(f"{sb.ghl_url}/_sandbox/reset", json=seed, trust_env=False)
    assert response.status_code == 400
    assert "unknown contact nobody" in response.json()["error"]
    with ghl(sb) as client:
        assert client.get(f"/contacts/{CONTACT_A1}").status_code == 200
