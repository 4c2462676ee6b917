"""MemberstackHook: connection settings, paging, plan changes, unknown create outcomes and errors."""

from __future__ import annotations

import json

import httpx
import pytest
from hook_fakes import MEMBERSTACK_KEY, FakeMemberstack, fast_settings, json_response, set_connection

from ghl_memberstack.exceptions import MemberstackConfigError, MemberstackRequestError
from ghl_memberstack.hooks.memberstack import MemberstackHook

MEMBER = {"id": "mem_1", "auth": {"email": "ada@example.org"}, "planConnections": []}


def make_hook(
    conn_id: str, fake: FakeMemberstack, sleeps: list[float] | None = None, **settings
) -> MemberstackHook:
    return MemberstackHook(
        conn_id,
        transport=fake.transport(),
        settings=fast_settings(**settings),
        sleep=(sleeps.append if sleeps is not None else lambda _: None),
    )


def sent_json(request: httpx.Request) -> dict:
    return json.loads(request.content)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        pytest.param("", "has no password", id="missing"),
        pytest.param("pk_sb_public", "not a secret key", id="public-key"),
    ],
)
def test_invalid_key_rejected(monkeypatch, password, message):
    set_connection(monkeypatch, "ms_bad", conn_type="memberstack", password=password)

    with pytest.raises(MemberstackConfigError, match=message):
        _ = MemberstackHook("ms_bad").config


def test_key_header_and_default_host(monkeypatch, fake_memberstack):
    set_connection(monkeypatch, "ms_default", conn_type="memberstack", password=MEMBERSTACK_KEY)
    fake_memberstack.script("GET /members", (200, {"data": [], "hasNextPage": False, "endCursor": 0}))
    hook = make_hook("ms_default", fake_memberstack)

    list(hook.list_members())

    request = fake_memberstack.requests[0]
    assert request.url.host == "admin.memberstack.com"
    assert request.headers["X-API-KEY"] == MEMBERSTACK_KEY
    assert MEMBERSTACK_KEY not in repr(hook.config)


def test_list_members_follows_cursor(memberstack_connection, fake_memberstack):
    fake_memberstack.script(
        "GET /members",
        (
            200,
            {
                "totalCount": 3,
                "endCursor": 11,
                "hasNextPage": True,
                "data": [{"id": "mem_1"}, {"id": "mem_2"}],
            },
        ),
        (200, {"totalCount": 3, "endCursor": 12, "hasMore": False, "data": [{"id": "mem_3"}]}),
    )

    members = list(make_hook(memberstack_connection, fake_memberstack).list_members(include_json=True))

    assert [m["id"] for m in members] == ["mem_1", "mem_2", "mem_3"]
    first, second = fake_memberstack.requests
    assert first.url.params["includeJSON"] == "true"
    assert "after" not in first.url.params
    assert second.url.params["after"] == "11"


def test_list_members_accepts_has_more(memberstack_connection, fake_memberstack):
    fake_memberstack.script(
        "GET /members",
        (200, {"endCursor": 5, "hasMore": True, "data": [{"id": "mem_1"}]}),
        (200, {"endCursor": 6, "hasMore": False, "data": [{"id": "mem_2"}]}),
    )

    assert len(list(make_hook(memberstack_connection, fake_memberstack).list_members())) == 2


def test_list_members_repeated_cursor_fails(memberstack_connection, fake_memberstack):
    page = (200, {"endCursor": 5, "hasNextPage": True, "data": [{"id": "mem_1"}]})
    fake_memberstack.script("GET /members", page, page, page)

    with pytest.raises(MemberstackRequestError, match="again"):
        list(make_hook(memberstack_connection, fake_memberstack).list_members())


def test_get_member_by_email_and_missing(memberstack_connection, fake_memberstack):
    fake_memberstack.script("GET /members/ada@example.org", (200, {"data": MEMBER}))
    fake_memberstack.script("GET /members/nobody@example.org", (200, {"data": None}))
    hook = make_hook(memberstack_connection, fake_memberstack)

    assert hook.get_member("ada@example.org") == MEMBER
    assert hook.get_member("nobody@example.org") is None
    assert fake_memberstack.requests[0].url.raw_path == b"/members/ada%40example.org"


@pytest.mark.parametrize("body", [pytest.param(b"", id="empty"), pytest.param(b"OK", id="text-ok")])
def test_add_plan_accepts_non_json_body(memberstack_connection, fake_memberstack, body):
    fake_memberstack.script("POST /members/mem_1/add-plan", (200, body))
    fake_memberstack.script("POST /members/mem_1/remove-plan", (200, body))
    hook = make_hook(memberstack_connection, fake_memberstack)

    assert hook.add_plan("mem_1", "pln_vip-free") is None
    assert hook.remove_plan("mem_1", "pln_vip-free") is None
    assert sent_json(fake_memberstack.requests[0]) == {"planId": "pln_vip-free"}
    assert hook.write_count == 2


def test_paid_price_id_rejected_before_request(memberstack_connection, fake_memberstack):
    hook = make_hook(memberstack_connection, fake_memberstack)

    with pytest.raises(MemberstackConfigError, match="paid plan"):
        hook.add_plan("mem_1", "prc_premium-monthly")

    assert fake_memberstack.requests == []


def test_add_plan_unknown_outcome_checked(memberstack_connection, fake_memberstack):
    fake_memberstack.script("POST /members/mem_1/add-plan", httpx.ReadTimeout("slow"))
    connected = {**MEMBER, "planConnections": [{"planId": "pln_vip-free", "active": True}]}
    fake_memberstack.script("GET /members/mem_1", (200, {"data": connected}))

    make_hook(memberstack_connection, fake_memberstack).add_plan("mem_1", "pln_vip-free")

    assert len(fake_memberstack.calls("POST /members/mem_1/add-plan")) == 1


def test_timed_out_create_that_succeeded(memberstack_connection, fake_memberstack):
    """The create reached the server but the reply was lost: the lookup finds it, nothing is resent."""
    fake_memberstack.script("POST /members", httpx.ReadTimeout("reply lost"))
    fake_memberstack.script("GET /members/ada@example.org", (200, {"data": MEMBER}))
    hook = make_hook(memberstack_connection, fake_memberstack)

    member = hook.create_member(email="ada@example.org", password="x" * 32, plans=["pln_members-free"])

    assert member == MEMBER
    assert len(fake_memberstack.calls("POST /members")) == 1
    assert sent_json(fake_memberstack.calls("POST /members")[0])["plans"] == [{"planId": "pln_members-free"}]


def test_failed_create_retried_after_empty_lookup(memberstack_connection, fake_memberstack, sleeps):
    fake_memberstack.script("POST /members", (502, "<html>Bad Gateway</html>"), (200, {"data": MEMBER}))
    fake_memberstack.script("GET /members/ada@example.org", (200, {"data": None}))
    hook = make_hook(memberstack_connection, fake_memberstack, sleeps)

    member = hook.create_member(
        email="ada@example.org", password="x" * 32, custom_fields={"first-name": "Ada"}
    )

    assert member == MEMBER
    assert len(fake_memberstack.calls("POST /members")) == 2
    assert len(fake_memberstack.calls("GET /members/ada@example.org")) == 1
    assert len(sleeps) == 1
    assert sent_json(fake_memberstack.calls("POST /members")[1])["customFields"] == {"first-name": "Ada"}


def test_create_rejection_not_retried(memberstack_connection, fake_memberstack):
    fake_memberstack.script(
        "POST /members",
        (400, {"code": "generic-message", "message": "A member with this email already exists."}),
    )
    hook = make_hook(memberstack_connection, fake_memberstack)

    with pytest.raises(MemberstackRequestError) as raised:
        hook.create_member(email="ada@example.org", password="x" * 32)

    assert raised.value.status == 400
    assert raised.value.code == "generic-message"
    assert "already exists" in raised.value.detail
    assert "ada@example.org" not in str(raised.value)
    assert len(fake_memberstack.requests) == 1


def test_create_retried_on_429(memberstack_connection, fake_memberstack, sleeps, monkeypatch):
    fake_memberstack.script(
        "POST /members",
        (429, {"code": "generic-message", "message": "Too many requests"}),
        (200, {"data": MEMBER}),
    )
    hook = make_hook(memberstack_connection, fake_memberstack, sleeps)
    hook.get_conn()
    pauses: list[float] = []
    monkeypatch.setattr(hook._limiter, "pause", pauses.append)

    assert hook.create_member(email="ada@example.org", password="x" * 32) == MEMBER
    assert len(fake_memberstack.calls("POST /members")) == 2
    assert pauses == [pytest.approx(hook._limiter.interval_s)]


def test_wrong_key_is_config_error(memberstack_connection, fake_memberstack):
    fake_memberstack.script(
        "GET /members", (401, {"code": "validation/invalid-secret-key", "message": "Invalid secret key"})
    )

    ok, message = make_hook(memberstack_connection, fake_memberstack).test_connection()

    assert ok is False
    assert "secret key was rejected" in message
    assert MEMBERSTACK_KEY not in message


def test_unknown_website_is_config_error_without_retry(memberstack_connection, fake_memberstack):
    fake_memberstack.script("GET /members", (400, {"error": "This website does not exist."}))
    hook = make_hook(memberstack_connection, fake_memberstack)

    with pytest.raises(MemberstackConfigError, match="belongs to no app"):
        list(hook.list_members())

    assert hook.request_count == 1


def test_error_in_2xx_body_raises(memberstack_connection, fake_memberstack):
    fake_memberstack.script(
        "GET /members/mem_1", (200, {"error": {"code": "generic-message", "message": "broken"}})
    )

    with pytest.raises(MemberstackRequestError, match="broken"):
        make_hook(memberstack_connection, fake_memberstack).get_member("mem_1")


def test_test_connection_success(memberstack_connection, fake_memberstack):
    fake_memberstack.script("GET /members", (200, {"data": [], "hasNextPage": False, "endCursor": 0}))

    ok, message = make_hook(memberstack_connection, fake_memberstack).test_connection()

    assert ok is True
    assert "test mode" in message
    assert fake_memberstack.requests[0].url.params["limit"] == "1"


def test_delete_member_already_gone(memberstack_connection, fake_memberstack):
    fake_memberstack.script(
        "DELETE /members/mem_9",
        (400, {"code": "generic-message", "message": "There is no member with this identifier."}),
    )

    assert make_hook(memberstack_connection, fake_memberstack).delete_member("mem_9") is None


def test_update_member_sends_only_given_fields(memberstack_connection, fake_memberstack):
    fake_memberstack.script("PATCH /members/mem_1", (200, {"data": MEMBER}))
    hook = make_hook(memberstack_connection, fake_memberstack)

    hook.update_member("mem_1", custom_fields={"ghl-status": "active"})

    assert sent_json(fake_memberstack.requests[0]) == {"customFields": {"ghl-status": "active"}}
    with pytest.raises(ValueError, match="at least one"):
        hook.update_member("mem_1")


def test_query_records_pages_with_after(memberstack_connection, fake_memberstack):
    key = "POST /v2/data-tables/ghl_notes/records/query"
    fake_memberstack.script(
        key,
        (
            200,
            {
                "data": {
                    "records": [{"id": "r1"}],
                    "pagination": {"hasMore": True, "endCursor": 40, "limit": 100},
                }
            },
        ),
        (
            200,
            {
                "data": {
                    "records": [{"id": "r2"}],
                    "pagination": {"hasMore": False, "endCursor": 41, "limit": 100},
                }
            },
        ),
    )

    records = list(
        make_hook(memberstack_connection, fake_memberstack).query_records(
            "ghl_notes", where={"contact_id": "c1"}
        )
    )

    assert [r["id"] for r in records] == ["r1", "r2"]
    bodies = [sent_json(r)["query"]["findMany"] for r in fake_memberstack.requests]
    assert bodies == [
        {"take": 100, "where": {"contact_id": "c1"}},
        {"take": 100, "where": {"contact_id": "c1"}, "after": 40},
    ]


def test_find_record_and_record_writes(memberstack_connection, fake_memberstack):
    base = "/v2/data-tables/ghl_notes/records"
    fake_memberstack.script(f"POST {base}/query", (200, {"data": {"records": []}}))
    fake_memberstack.script(f"POST {base}", (200, {"data": {"id": "r1"}}))
    fake_memberstack.script(f"PUT {base}/r1", (200, {"data": {"id": "r1"}}))
    fake_memberstack.script(
        f"DELETE {base}/r1", (404, {"code": "generic-message", "message": "Record not found"})
    )
    hook = make_hook(memberstack_connection, fake_memberstack)

    assert hook.find_record("ghl_notes", "ghl_id", "n1") is None
    assert hook.create_record("ghl_notes", {"ghl_id": "n1"}, member_id="mem_1") == {"id": "r1"}
    assert hook.update_record("ghl_notes", "r1", {"body": "x"}) == {"id": "r1"}
    assert hook.delete_record("ghl_notes", "r1") is None
    with pytest.raises(ValueError, match="data is empty"):
        hook.update_record("ghl_notes", "r1", {})
    assert sent_json(fake_memberstack.calls(f"POST {base}")[0]) == {
        "data": {"ghl_id": "n1"},
        "memberId": "mem_1",
    }
    assert hook.write_count == 3
    assert hook.request_count == 4


def test_create_record_unknown_outcome_flagged(memberstack_connection, fake_memberstack):
    fake_memberstack.script("POST /v2/data-tables/ghl_notes/records", httpx.ReadTimeout("slow"))

    with pytest.raises(MemberstackRequestError) as raised:
        make_hook(memberstack_connection, fake_memberstack).create_record("ghl_notes", {"ghl_id": "n1"})

    assert raised.value.outcome_unknown is True
    assert len(fake_memberstack.requests) == 1


def test_data_tables(memberstack_connection, fake_memberstack):
    fake_memberstack.script("GET /v2/data-tables", (200, {"data": {"tables": [{"key": "ghl_notes"}]}}))
    fake_memberstack.script(
        "GET /v2/data-tables/ghl_notes", (200, {"data": {"key": "ghl_notes", "fields": []}})
    )
    hook = make_hook(memberstack_connection, fake_memberstack)

    assert hook.list_data_tables() == [{"key": "ghl_notes"}]
    assert hook.get_data_table("ghl_notes")["key"] == "ghl_notes"


def test_5xx_retried_for_reads(memberstack_connection, fake_memberstack, sleeps):
    fake_memberstack.script(
        "GET /members/mem_1", (500, {"message": "oops"}), lambda r: json_response(200, {"data": MEMBER})
    )

    assert make_hook(memberstack_connection, fake_memberstack, sleeps).get_member("mem_1") == MEMBER
    assert len(sleeps) == 1
