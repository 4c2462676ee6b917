"""OAuth token rotation of GoHighLevelHook: seeding, refresh, failure kinds, 401/403, concurrency."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from hook_fakes import (
    CLIENT_ID,
    LOCATION_ID,
    SEED_REFRESH_TOKEN,
    FakeGoHighLevel,
    fast_settings,
    json_response,
    set_connection,
)

from ghl_memberstack.exceptions import (
    GoHighLevelAuthError,
    GoHighLevelConfigError,
    GoHighLevelLocationInactiveError,
    GoHighLevelRequestError,
    TokenStoreError,
)
from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook
from ghl_memberstack.token_store import (
    MemoryTokenStore,
    ObjectStorageTokenStore,
    TokenPair,
    TokenStore,
    fingerprint,
    token_key,
)

KEY = token_key(CLIENT_ID, LOCATION_ID)
SEARCH = "POST /contacts/search"


def make_hook(conn_id, fake: FakeGoHighLevel, store: TokenStore, sleeps=None, **settings) -> GoHighLevelHook:
    return GoHighLevelHook(
        conn_id,
        token_store=store,
        transport=fake.transport(),
        settings=fast_settings(**settings),
        sleep=(sleeps.append if sleeps is not None else lambda _: None),
    )


def search_once(hook: GoHighLevelHook) -> list:
    return next(hook.search_contacts(page_limit=10), [])


@pytest.fixture
def store(tmp_path, fernet) -> ObjectStorageTokenStore:
    return ObjectStorageTokenStore(tmp_path, fernet=fernet, settings=fast_settings())


def test_first_call_seeds_refreshes_and_stores(oauth_connection, fake_ghl, store):
    hook = make_hook(oauth_connection, fake_ghl, store)

    search_once(hook)

    assert [call["refresh_token"] for call in fake_ghl.refresh_calls] == [SEED_REFRESH_TOKEN]
    pair = store.load(KEY)
    assert pair is not None
    assert pair.access_token == "at-unit-000001-xxxxxxxx"
    assert pair.refresh_token == "rt-unit-000001-xxxxxxxx"
    assert pair.seed_fingerprint == fingerprint(SEED_REFRESH_TOKEN)
    assert pair.generation == 2  # 1 = seeded from the connection, 2 = first refresh
    api_call = fake_ghl.api_requests()[0]
    assert api_call.headers["Authorization"] == "Bearer at-unit-000001-xxxxxxxx"
    assert api_call.headers["Version"] == "2021-07-28"


def test_refresh_form_fields(oauth_connection, fake_ghl, store):
    search_once(make_hook(oauth_connection, fake_ghl, store))

    form = fake_ghl.refresh_calls[0]
    assert form["grant_type"] == "refresh_token"
    assert form["client_id"] == CLIENT_ID
    assert form["user_type"] == "Location"


def test_fresh_token_reused_without_refresh(oauth_connection, fake_ghl, store):
    hook = make_hook(oauth_connection, fake_ghl, store)
    search_once(hook)
    search_once(hook)
    search_once(make_hook(oauth_connection, fake_ghl, store))

    assert len(fake_ghl.refresh_calls) == 1
    assert len(fake_ghl.api_requests()) == 3


@pytest.mark.parametrize(
    ("expires_in", "margin"),
    [
        pytest.param(3600, 60, id="long-lived-uses-60s"),
        pytest.param(100, 20, id="short-lived-uses-20-percent"),
    ],
)
def test_refresh_margin(oauth_connection, store, expires_in, margin):
    fake = FakeGoHighLevel(expires_in=expires_in)
    before = time.time()
    search_once(make_hook(oauth_connection, fake, store))

    pair = store.load(KEY)
    assert pair.expires_at - pair.refresh_at == pytest.approx(margin, abs=0.01)
    assert pair.expires_at == pytest.approx(before + expires_in, abs=2)


def test_due_token_refreshed_before_use(oauth_connection, store):
    fake = FakeGoHighLevel(expires_in=5)  # margin 1 s: due 4 s after issue
    hook = make_hook(oauth_connection, fake, store)
    search_once(hook)
    pair = store.load(KEY)
    store._write(KEY, TokenPair(**{**pair.__dict__, "refresh_at": time.time() - 1}))
    hook._tokens._cached = None

    search_once(hook)

    assert [c["refresh_token"] for c in fake.refresh_calls] == [SEED_REFRESH_TOKEN, "rt-unit-000001-xxxxxxxx"]
    assert fake.api_requests()[-1].headers["Authorization"] == "Bearer at-unit-000002-xxxxxxxx"


def test_invalid_grant_is_final_and_store_unchanged(oauth_connection, fake_ghl, store):
    fake_ghl.valid_refresh_tokens.clear()
    hook = make_hook(oauth_connection, fake_ghl, store)

    with pytest.raises(GoHighLevelAuthError, match="invalid_grant") as raised:
        search_once(hook)

    assert "make authorize" in str(raised.value)
    assert SEED_REFRESH_TOKEN not in str(raised.value)
    assert len(fake_ghl.refresh_calls) == 1
    assert fake_ghl.api_requests() == []
    pair = store.load(KEY)
    assert pair.generation == 1  # only the seed; the failed refresh wrote nothing
    assert pair.refresh_token == SEED_REFRESH_TOKEN


def test_location_inactive_has_own_error(oauth_connection, fake_ghl, store):
    fake_ghl.token_replies.append((400, {"statusCode": 400, "message": "Location is not active"}))
    hook = make_hook(oauth_connection, fake_ghl, store)

    with pytest.raises(GoHighLevelLocationInactiveError) as raised:
        search_once(hook)

    assert raised.value.location_id == LOCATION_ID
    assert len(fake_ghl.refresh_calls) == 1
    assert store.load(KEY).refresh_token == SEED_REFRESH_TOKEN


def test_transient_refresh_error_retried(oauth_connection, fake_ghl, store, sleeps):
    fake_ghl.token_replies.extend([(502, {"message": "Bad Gateway"}), httpx.ConnectError("refused")])
    hook = make_hook(oauth_connection, fake_ghl, store, sleeps)

    search_once(hook)

    assert len(fake_ghl.refresh_calls) == 3
    assert len(sleeps) == 2
    assert store.load(KEY).access_token == "at-unit-000001-xxxxxxxx"


def test_retry_rereads_store_and_uses_other_refresh(oauth_connection, fake_ghl, store):
    """A pair stored by another process during the backoff is used instead of refreshing again."""

    def other_process_refreshes(request: httpx.Request) -> httpx.Response:
        seeded = store.load(KEY)
        other = TokenPair(
            refresh_token="rt-other",
            seed_fingerprint=seeded.seed_fingerprint,
            generation=seeded.generation + 1,
            location_id=LOCATION_ID,
            access_token="at-other",
            expires_at=time.time() + 3600,
            refresh_at=time.time() + 3500,
        )
        store._write(KEY, other)
        fake_ghl.valid_access_tokens.add("at-other")
        return json_response(503, {"message": "unavailable"})

    fake_ghl.token_replies.append(other_process_refreshes)
    hook = make_hook(oauth_connection, fake_ghl, store)

    search_once(hook)

    assert len(fake_ghl.refresh_calls) == 1
    assert fake_ghl.api_requests()[0].headers["Authorization"] == "Bearer at-other"


def test_lost_reply_then_invalid_grant_says_grant_dead(oauth_connection, fake_ghl, store):
    def processed_then_lost(request: httpx.Request) -> httpx.Response:
        fake_ghl.exchange(dict(httpx.QueryParams(request.content.decode())))
        raise httpx.ReadTimeout("no reply", request=request)

    fake_ghl.token_replies.append(processed_then_lost)
    hook = make_hook(oauth_connection, fake_ghl, store)

    with pytest.raises(GoHighLevelAuthError, match="grant is dead") as raised:
        search_once(hook)

    assert "make authorize" in str(raised.value)
    assert len(fake_ghl.refresh_calls) == 2
    assert store.load(KEY).refresh_token == SEED_REFRESH_TOKEN


def test_transient_exhausted_keeps_store(oauth_connection, fake_ghl, store):
    fake_ghl.token_replies.extend([(500, {}), (500, {}), (500, {})])
    hook = make_hook(oauth_connection, fake_ghl, store)

    with pytest.raises(GoHighLevelRequestError, match="failed 3 times") as raised:
        search_once(hook)

    assert raised.value.status == 500
    assert len(fake_ghl.refresh_calls) == 3
    assert store.load(KEY).generation == 1


def test_401_then_401_refreshes_once(oauth_connection, fake_ghl, store):
    hook = make_hook(oauth_connection, fake_ghl, store)
    search_once(hook)
    unauthorized = (401, {"statusCode": 401, "message": "The token is not authorized for this scope."})
    fake_ghl.script(SEARCH, unauthorized, unauthorized)

    with pytest.raises(GoHighLevelAuthError, match="again after one token refresh") as raised:
        search_once(hook)

    assert "/contacts/search" in str(raised.value)
    assert len(fake_ghl.refresh_calls) == 2
    assert len(fake_ghl.api_requests()) == 3


def test_401_then_success_after_refresh(oauth_connection, fake_ghl, store):
    hook = make_hook(oauth_connection, fake_ghl, store)
    search_once(hook)
    fake_ghl.script(SEARCH, (401, {"statusCode": 401, "message": "Invalid JWT"}))

    search_once(hook)

    assert len(fake_ghl.refresh_calls) == 2
    assert fake_ghl.api_requests()[-1].headers["Authorization"] == "Bearer at-unit-000002-xxxxxxxx"


def test_403_is_config_error_without_refresh(oauth_connection, fake_ghl, store):
    hook = make_hook(oauth_connection, fake_ghl, store)
    search_once(hook)
    fake_ghl.script(
        SEARCH, (403, {"statusCode": 403, "message": "The token does not have access to this location."})
    )

    with pytest.raises(GoHighLevelConfigError, match=LOCATION_ID):
        search_once(hook)

    assert len(fake_ghl.refresh_calls) == 1
    assert len(fake_ghl.api_requests()) == 2


def test_reseed_when_connection_token_changes(monkeypatch, oauth_connection, fake_ghl, store):
    search_once(make_hook(oauth_connection, fake_ghl, store))
    set_connection(
        monkeypatch,
        oauth_connection,
        conn_type="gohighlevel",
        host="http://127.0.0.1:9",
        extra={
            "location_id": LOCATION_ID,
            "client_id": CLIENT_ID,
            "client_secret": "x-secret",
            "refresh_token": "rt-after-reauthorise",
        },
    )
    fake_ghl.valid_refresh_tokens.add("rt-after-reauthorise")

    search_once(make_hook(oauth_connection, fake_ghl, store))

    assert fake_ghl.refresh_calls[-1]["refresh_token"] == "rt-after-reauthorise"
    pair = store.load(KEY)
    assert pair.seed_fingerprint == fingerprint("rt-after-reauthorise")
    assert pair.generation == 4  # seed, refresh, reseed, refresh


def test_store_seeded_marker_needs_stored_pair(monkeypatch, fake_ghl, store):
    set_connection(
        monkeypatch,
        "ghl_marker",
        conn_type="gohighlevel",
        host="http://127.0.0.1:9",
        extra={
            "location_id": LOCATION_ID,
            "client_id": CLIENT_ID,
            "client_secret": "s",
            "refresh_token": "token-store",
        },
    )

    with pytest.raises(GoHighLevelAuthError, match="holds no token pair"):
        search_once(make_hook("ghl_marker", fake_ghl, store))

    assert fake_ghl.refresh_calls == []


def test_store_seeded_marker_uses_stored_pair(monkeypatch, fake_ghl, store):
    seeded = TokenPair(
        refresh_token=SEED_REFRESH_TOKEN,
        seed_fingerprint=fingerprint(SEED_REFRESH_TOKEN),
        generation=1,
        location_id=LOCATION_ID,
    )
    store.save(KEY, seeded, expected_generation=None)
    set_connection(
        monkeypatch,
        "ghl_marker",
        conn_type="gohighlevel",
        host="http://127.0.0.1:9",
        extra={
            "location_id": LOCATION_ID,
            "client_id": CLIENT_ID,
            "client_secret": "s",
            "refresh_token": "token-store",
        },
    )

    search_once(make_hook("ghl_marker", fake_ghl, store))

    assert [c["refresh_token"] for c in fake_ghl.refresh_calls] == [SEED_REFRESH_TOKEN]
    assert store.load(KEY).generation == 2


class DroppingStore(MemoryTokenStore):
    """A store whose writes after the seed are silently lost, as with a rejected Variable.set."""

    def _write(self, key, pair):
        if pair.generation == 1:
            super()._write(key, pair)


def test_unverified_write_fails_before_use(oauth_connection, fake_ghl):
    hook = make_hook(oauth_connection, fake_ghl, DroppingStore())

    with pytest.raises(TokenStoreError, match="read back"):
        search_once(hook)

    assert len(fake_ghl.refresh_calls) == 1
    assert fake_ghl.api_requests() == []


def test_concurrent_threads_refresh_once(oauth_connection, store):
    fake = FakeGoHighLevel()
    hooks = [
        make_hook(
            oauth_connection,
            fake,
            ObjectStorageTokenStore(store.folder.parent, fernet=store._fernet, settings=fast_settings()),
        )
        for _ in range(8)
    ]
    barrier = threading.Barrier(len(hooks))
    errors: list[BaseException] = []

    def call(hook: GoHighLevelHook) -> None:
        barrier.wait()
        try:
            search_once(hook)
        except BaseException as error:  # noqa: BLE001 - collected for the assert below
            errors.append(error)

    threads = [threading.Thread(target=call, args=(hook,)) for hook in hooks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert len(fake.refresh_calls) == 1
    assert {r.headers["Authorization"] for r in fake.api_requests()} == {"Bearer at-unit-000001-xxxxxxxx"}


def test_pit_401_fails_without_refresh(pit_connection, fake_ghl):
    fake_ghl.script(SEARCH, (401, {"statusCode": 401, "message": "Invalid JWT"}))
    hook = GoHighLevelHook(pit_connection, transport=fake_ghl.transport(), settings=fast_settings())

    with pytest.raises(GoHighLevelAuthError, match="Private Integration Token was rejected"):
        search_once(hook)

    assert fake_ghl.refresh_calls == []


def test_test_connection_oauth_never_refreshes(oauth_connection, fake_ghl, store):
    ok, message = make_hook(oauth_connection, fake_ghl, store).test_connection()
    assert ok is True
    assert "holds no token pair" in message

    search_once(make_hook(oauth_connection, fake_ghl, store))
    ok, message = make_hook(oauth_connection, fake_ghl, store).test_connection()
    assert ok is True
    assert "accepted the stored access token" in message

    pair = store.load(KEY)
    store._write(KEY, TokenPair(**{**pair.__dict__, "refresh_at": time.time() - 1}))
    ok, message = make_hook(oauth_connection, fake_ghl, store).test_connection()
    assert ok is True
    assert "due for refresh" in message
    assert len(fake_ghl.refresh_calls) == 1


def test_test_connection_oauth_rejected_token(oauth_connection, fake_ghl, store):
    search_once(make_hook(oauth_connection, fake_ghl, store))
    fake_ghl.script(SEARCH, (401, {"statusCode": 401, "message": "Invalid JWT"}))

    ok, message = make_hook(oauth_connection, fake_ghl, store).test_connection()

    assert ok is False
    assert "rejected the stored access token" in message
    assert len(fake_ghl.refresh_calls) == 1
