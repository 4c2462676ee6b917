"""GoHighLevelHook requests: connection settings, paging, retries, rate limits and error messages."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from hook_fakes import LOCATION_ID, PIT_TOKEN, FakeGoHighLevel, fast_settings, json_response, set_connection

from ghl_memberstack.exceptions import (
    GoHighLevelBudgetExhaustedError,
    GoHighLevelConfigError,
    GoHighLevelCursorError,
    GoHighLevelLocationInactiveError,
    GoHighLevelRequestError,
)
from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

SEARCH = "POST /contacts/search"


def make_hook(
    conn_id: str, fake: FakeGoHighLevel, sleeps: list[float] | None = None, **settings
) -> GoHighLevelHook:
    return GoHighLevelHook(
        conn_id,
        transport=fake.transport(),
        settings=fast_settings(**settings),
        sleep=(sleeps.append if sleeps is not None else lambda _: None),
    )


def contact(contact_id: str, updated_ms: int) -> dict:
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(updated_ms / 1000)) + f".{updated_ms % 1000:03d}Z"
    return {"id": contact_id, "dateUpdated": iso, "searchAfter": [updated_ms, contact_id]}


def bodies(fake: FakeGoHighLevel, key: str = SEARCH) -> list[dict]:
    return [json.loads(r.content) for r in fake.api_requests() if f"{r.method} {r.url.path}" == key]


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        pytest.param("", None, "https://services.leadconnectorhq.com", id="empty-means-real-api"),
        pytest.param("api.example.test", None, "https://api.example.test", id="no-scheme-means-https"),
        pytest.param("http://127.0.0.1:8123", None, "http://127.0.0.1:8123", id="scheme-and-port"),
        pytest.param("127.0.0.1", 8124, "https://127.0.0.1:8124", id="port-field"),
    ],
)
def test_base_url_from_host(monkeypatch, host, port, expected):
    fields = {
        "conn_type": "gohighlevel",
        "host": host,
        "password": PIT_TOKEN,
        "extra": {"location_id": LOCATION_ID},
    }
    if port:
        fields["port"] = port
    set_connection(monkeypatch, "ghl_host", **fields)

    assert GoHighLevelHook("ghl_host").config.base_url == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"password": PIT_TOKEN, "extra": {}}, "no location_id", id="missing-location"),
        pytest.param({"extra": {"location_id": LOCATION_ID}}, "neither a password", id="no-credentials"),
        pytest.param(
            {
                "password": PIT_TOKEN,
                "extra": {
                    "location_id": LOCATION_ID,
                    "client_id": "c",
                    "client_secret": "s",
                    "refresh_token": "r",
                },
            },
            "both a password",
            id="pit-and-oauth",
        ),
        pytest.param(
            {"extra": {"location_id": LOCATION_ID, "client_id": "c", "refresh_token": "r"}},
            "client_secret",
            id="oauth-without-secret",
        ),
        pytest.param(
            {"password": PIT_TOKEN, "host": "http://127.0.0.1:1/v2", "extra": {"location_id": LOCATION_ID}},
            "without a path",
            id="host-with-path",
        ),
    ],
)
def test_invalid_connection_rejected(monkeypatch, fields, message):
    set_connection(monkeypatch, "ghl_bad", conn_type="gohighlevel", **fields)

    with pytest.raises(GoHighLevelConfigError, match=message) as raised:
        _ = GoHighLevelHook("ghl_bad").config

    assert "'ghl_bad'" in str(raised.value)
    assert PIT_TOKEN not in str(raised.value)


def test_ui_prefixed_extras_accepted(monkeypatch):
    set_connection(
        monkeypatch,
        "ghl_ui",
        conn_type="gohighlevel",
        password=PIT_TOKEN,
        extra={
            "extra__gohighlevel__location_id": LOCATION_ID,
            "extra__gohighlevel__api_version": "2021-04-15",
        },
    )

    config = GoHighLevelHook("ghl_ui").config

    assert config.location_id == LOCATION_ID
    assert config.api_version == "2021-04-15"
    assert PIT_TOKEN not in repr(config)


def test_search_keeps_ties_across_pages(pit_connection, fake_ghl):
    same = 1_767_348_000_000
    fake_ghl.script(
        SEARCH,
        (200, {"contacts": [contact("c1", same), contact("c2", same)], "total": 5}),
        (200, {"contacts": [contact("c3", same), contact("c4", same + 1)], "total": 5}),
        (200, {"contacts": [contact("c5", same + 2)], "total": 5}),
    )
    hook = make_hook(pit_connection, fake_ghl)

    pages = list(hook.search_contacts(updated_gte_ms=same - 10, updated_lte_ms=same + 10, page_limit=2))

    assert [[c["id"] for c in page] for page in pages] == [["c1", "c2"], ["c3", "c4"], ["c5"]]
    sent = bodies(fake_ghl)
    assert [b.get("searchAfter") for b in sent] == [None, [same, "c2"], [same + 1, "c4"]]
    for body in sent:
        assert body["locationId"] == LOCATION_ID
        assert body["pageLimit"] == 2
        assert body["sort"] == [{"field": "dateUpdated", "direction": "asc"}]
        assert body["filters"][0] == {
            "field": "dateUpdated",
            "operator": "range",
            "value": {"gte": same - 10, "lte": same + 10},
        }


def test_search_sorts_page_by_date_then_id(pit_connection, fake_ghl):
    fake_ghl.script(SEARCH, (200, {"contacts": [contact("b", 5), contact("a", 5), contact("c", 1)]}))

    page = next(make_hook(pit_connection, fake_ghl).search_contacts(page_limit=10))

    assert [c["id"] for c in page] == ["c", "a", "b"]


def test_search_cursor_without_search_after(pit_connection, fake_ghl):
    first = [
        {"id": "c1", "dateUpdated": "2026-01-02T10:00:00.000Z"},
        {"id": "c2", "dateUpdated": "2026-01-02T10:00:00.000Z"},
    ]
    fake_ghl.script(SEARCH, (200, {"contacts": first}), (200, {"contacts": []}))

    list(make_hook(pit_connection, fake_ghl).search_contacts(page_limit=2))

    assert bodies(fake_ghl)[1]["searchAfter"] == [1767348000000, "c2"]


def test_search_repeated_cursor_fails(pit_connection, fake_ghl):
    page = {"contacts": [contact("c1", 10), contact("c2", 10)]}
    fake_ghl.script(SEARCH, (200, page), (200, page), (200, page))
    hook = make_hook(pit_connection, fake_ghl)

    with pytest.raises(GoHighLevelCursorError, match="twice"):
        list(hook.search_contacts(page_limit=2))

    assert len(bodies(fake_ghl)) == 2


def test_search_by_ids_and_empty_ids(pit_connection, fake_ghl):
    hook = make_hook(pit_connection, fake_ghl)

    assert list(hook.search_contacts(contact_ids=[])) == []
    assert fake_ghl.api_requests() == []

    list(hook.search_contacts(contact_ids=["b", "a", "b"]))
    assert bodies(fake_ghl)[0]["filters"] == [{"field": "id", "operator": "eq", "value": ["a", "b"]}]

    list(hook.search_contacts(contact_ids=[f"id{i:03d}" for i in range(250)]))
    chunks = [b["filters"][0]["value"] for b in bodies(fake_ghl)[1:]]
    assert [len(chunk) for chunk in chunks] == [100, 100, 50]
    assert chunks[0][0] == "id000"


def test_search_page_limit_bounds(pit_connection, fake_ghl):
    hook = make_hook(pit_connection, fake_ghl)

    with pytest.raises(ValueError, match="between 1 and 500"):
        list(hook.search_contacts(page_limit=501))


def test_get_contact_not_found_returns_none(pit_connection, fake_ghl):
    fake_ghl.script(
        "GET /contacts/gone1", (400, {"statusCode": 400, "message": "Contact with id gone1 not found"})
    )
    fake_ghl.script("GET /contacts/c1", (200, {"contact": {"id": "c1"}}))
    hook = make_hook(pit_connection, fake_ghl)

    assert hook.get_contact("gone1") is None
    assert hook.get_contact("c1") == {"id": "c1"}


def test_location_tasks_paged_with_skip(pit_connection, fake_ghl):
    key = f"POST /locations/{LOCATION_ID}/tasks/search"
    fake_ghl.script(
        key,
        (200, {"tasks": [[{"id": "t1"}, {"id": "t2"}]]}),  # the published schema nests the list
        (200, {"tasks": [{"id": "t3"}]}),
    )

    pages = list(make_hook(pit_connection, fake_ghl).search_location_tasks(contact_ids=["c1"], limit=2))

    assert [[t["id"] for t in page] for page in pages] == [["t1", "t2"], ["t3"]]
    sent = [(b["skip"], b["limit"], b["contactId"]) for b in bodies(fake_ghl, key)]
    assert sent == [(0, 2, ["c1"]), (2, 2, ["c1"]), (3, 2, ["c1"])]


def test_contact_children_and_custom_fields(pit_connection, fake_ghl):
    fake_ghl.script("GET /contacts/c1/tasks", (200, {"tasks": [{"id": "t1"}]}))
    fake_ghl.script("GET /contacts/c1/notes", (200, {"notes": [{"id": "n1"}]}))
    fake_ghl.script("GET /contacts/c1/appointments", (200, {"events": [{"id": "e1"}]}))
    fake_ghl.script(f"GET /locations/{LOCATION_ID}/customFields", (200, {"customFields": [{"id": "f1"}]}))
    hook = make_hook(pit_connection, fake_ghl)

    assert hook.get_contact_tasks("c1") == [{"id": "t1"}]
    assert hook.get_contact_notes("c1") == [{"id": "n1"}]
    assert hook.get_contact_appointments("c1") == [{"id": "e1"}]
    assert hook.get_custom_fields() == [{"id": "f1"}]
    assert fake_ghl.api_requests()[-1].url.params["model"] == "contact"
    assert hook.request_count == 4


def test_429_with_retry_after_waits_that_long(pit_connection, fake_ghl, sleeps, monkeypatch):
    fake_ghl.script(
        SEARCH, lambda r: json_response(429, {"message": "Too Many Requests"}, {"Retry-After": "7"})
    )
    hook = make_hook(pit_connection, fake_ghl, sleeps, retry_base_delay_s=0.5, retry_max_delay_s=0.5)
    hook.get_conn()
    pauses: list[float] = []
    monkeypatch.setattr(hook._limiter, "pause", pauses.append)

    list(hook.search_contacts())

    assert sleeps == [7.0]
    assert pauses == [7.0]  # other threads of the location wait too
    assert hook.request_count == 2


def test_429_without_retry_after_backs_off(pit_connection, fake_ghl, sleeps, monkeypatch):
    fake_ghl.script(SEARCH, (429, {"message": "Too Many Requests"}), (429, {"message": "Too Many Requests"}))
    hook = make_hook(pit_connection, fake_ghl, sleeps, retry_base_delay_s=0.25, retry_max_delay_s=10)
    hook.get_conn()
    pauses: list[float] = []
    monkeypatch.setattr(hook._limiter, "pause", pauses.append)

    list(hook.search_contacts())

    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.25
    assert 0 <= sleeps[1] <= 0.5
    # Without Retry-After the location pauses for one burst interval (0.05 s in fast settings).
    assert pauses == [pytest.approx(0.05), pytest.approx(0.05)]
    assert hook.request_count == 3


def test_429_with_window_room_no_pause(pit_connection, fake_ghl, sleeps, monkeypatch):
    fake_ghl.script(
        SEARCH,
        lambda r: json_response(429, {"message": "Too Many Requests"}, {"X-RateLimit-Remaining": "40"}),
    )
    hook = make_hook(pit_connection, fake_ghl, sleeps)
    hook.get_conn()
    pauses: list[float] = []
    monkeypatch.setattr(hook._limiter, "pause", pauses.append)

    list(hook.search_contacts())

    assert pauses == []
    assert len(sleeps) == 1


def test_5xx_exhausted_names_route_not_url(pit_connection, fake_ghl):
    fake_ghl.script("GET /contacts/jo@example.org", *[(503, {"message": "busy for jo@example.org"})] * 4)
    hook = make_hook(pit_connection, fake_ghl)

    with pytest.raises(GoHighLevelRequestError) as raised:
        hook.get_contact("jo@example.org")

    message = str(raised.value)
    assert raised.value.status == 503
    assert "GET /contacts/{contactId}" in message
    assert "after 4 attempt(s)" in message
    assert "jo@example.org" not in message
    assert "'ghl_pit'" in message
    assert fake_ghl.api_requests()[0].url.raw_path == b"/contacts/jo%40example.org"


def test_create_not_retried_after_5xx(pit_connection, fake_ghl):
    fake_ghl.script("POST /contacts/", (500, {"message": "oops"}))
    hook = make_hook(pit_connection, fake_ghl)

    with pytest.raises(GoHighLevelRequestError) as raised:
        hook.create_contact(email="new@example.org")

    assert raised.value.outcome_unknown is True
    assert hook.request_count == 1


def test_create_retried_when_connection_refused(pit_connection, fake_ghl):
    fake_ghl.script("POST /contacts/", httpx.ConnectError("refused"), (201, {"contact": {"id": "new1"}}))

    created = make_hook(pit_connection, fake_ghl).create_contact({"email": "new@example.org"})

    assert created == {"id": "new1"}
    assert json.loads(fake_ghl.api_requests()[-1].content)["locationId"] == LOCATION_ID


def test_read_timeout_retried_for_reads(pit_connection, fake_ghl):
    fake_ghl.script(SEARCH, httpx.ReadTimeout("slow"), (200, {"contacts": []}))

    assert list(make_hook(pit_connection, fake_ghl).search_contacts()) == []
    assert len(fake_ghl.api_requests()) == 2


def test_422_not_retried(pit_connection, fake_ghl):
    fake_ghl.script(SEARCH, (422, {"statusCode": 422, "message": ["pageLimit must not be empty"]}))
    hook = make_hook(pit_connection, fake_ghl)

    with pytest.raises(GoHighLevelRequestError, match="pageLimit must not be empty") as raised:
        list(hook.search_contacts())

    assert raised.value.status == 422
    assert hook.request_count == 1


def test_location_inactive_on_api_call(pit_connection, fake_ghl):
    fake_ghl.script(SEARCH, (400, {"statusCode": 400, "message": "Location is not active"}))

    with pytest.raises(GoHighLevelLocationInactiveError):
        list(make_hook(pit_connection, fake_ghl).search_contacts())


def test_daily_budget_stops_before_limit(pit_connection, fake_ghl):
    headers = {"X-RateLimit-Limit-Daily": "1000", "X-RateLimit-Daily-Remaining": "501"}
    fake_ghl.script(SEARCH, lambda r: json_response(200, {"contacts": []}, headers))
    hook = make_hook(pit_connection, fake_ghl, ghl_daily_budget_share=0.5)

    list(hook.search_contacts())  # the reply reports 501 left and the share keeps 500
    list(hook.search_contacts())  # allowed: it leaves exactly the 500 kept for other clients
    with pytest.raises(GoHighLevelBudgetExhaustedError, match="budget exhausted") as raised:
        list(hook.search_contacts())

    assert raised.value.reserve == 500
    assert raised.value.daily_remaining == 500
    assert raised.value.location_id == LOCATION_ID
    assert hook.request_count == 2


def test_limiter_follows_rate_limit_headers(pit_connection, fake_ghl):
    headers = {
        "X-RateLimit-Max": "3",
        "X-RateLimit-Interval-Milliseconds": "400",
        "X-RateLimit-Remaining": "2",
    }
    fake_ghl.script(SEARCH, *[lambda r: json_response(200, {"contacts": []}, headers)] * 5)
    hook = make_hook(pit_connection, fake_ghl)

    started = time.monotonic()
    for _ in range(5):
        list(hook.search_contacts())
    elapsed = time.monotonic() - started

    assert hook._limiter.max_requests == 3
    assert hook._limiter.interval_s == pytest.approx(0.4)
    assert elapsed >= 0.4  # requests 4 and 5 wait for the first ones to leave the window


def test_concurrent_client_passes_sequential_ceiling(pit_connection):
    """At 100 ms per request a sequential client stays at or below 10 requests/s; threads pass it."""

    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.1)
        return json_response(200, {"contact": {"id": request.url.path.rsplit("/", 1)[-1]}})

    hook = GoHighLevelHook(
        pit_connection, transport=httpx.MockTransport(slow), settings=fast_settings(ghl_max_workers=8)
    )
    ids = [f"c{i}" for i in range(16)]

    started = time.monotonic()
    sequential = [hook.get_contact(cid) for cid in ids[:8]]
    sequential_rate = 8 / (time.monotonic() - started)
    started = time.monotonic()
    concurrent = hook.map_concurrently(hook.get_contact, ids)
    concurrent_rate = 16 / (time.monotonic() - started)

    assert [c["id"] for c in sequential] == ids[:8]
    assert [c["id"] for c in concurrent] == ids
    assert sequential_rate <= 10.5
    assert concurrent_rate > 20


def test_map_concurrently_raises_first_error_in_order(pit_connection, fake_ghl):
    hook = make_hook(pit_connection, fake_ghl)

    def work(item: int) -> int:
        if item in (3, 5):
            raise ValueError(f"bad {item}")
        return item * 2

    assert hook.map_concurrently(work, range(3)) == [0, 2, 4]
    with pytest.raises(ValueError, match="bad 3"):
        hook.map_concurrently(work, range(8))
    results = hook.map_concurrently(work, range(6), return_exceptions=True)
    assert results[:3] == [0, 2, 4]
    assert isinstance(results[3], ValueError)


def test_test_connection_pit(pit_connection, fake_ghl):
    ok, message = make_hook(pit_connection, fake_ghl).test_connection()
    assert ok is True
    assert LOCATION_ID in message

    fake_ghl.script(SEARCH, (401, {"statusCode": 401, "message": "Invalid JWT"}))
    ok, message = make_hook(pit_connection, fake_ghl).test_connection()
    assert ok is False
    assert "Private Integration Token was rejected" in message
    assert PIT_TOKEN not in message


def test_httpx_loggers_quiet(pit_connection, fake_ghl):
    import logging

    logging.getLogger("httpx").setLevel(logging.INFO)
    list(make_hook(pit_connection, fake_ghl).search_contacts())

    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() >= logging.WARNING
