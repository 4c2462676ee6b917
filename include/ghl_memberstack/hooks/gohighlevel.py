"""Airflow hook for the GoHighLevel (HighLevel) API v2 of one location (sub-account).

Connection type ``gohighlevel``, default connection id ``gohighlevel_default``:

- host: API base URL ``scheme://host[:port]``; no scheme means https; empty means
  ``https://services.leadconnectorhq.com``.
- extra ``location_id`` (required) and ``api_version`` (``Version`` header, default ``2021-07-28``).
- Private Integration Token mode: the token is the password.
- OAuth mode, chosen when the extra ``refresh_token`` is set: extras ``client_id``, ``client_secret``
  and ``refresh_token`` (the initial one, or ``token-store`` after ``make authorize``). The live
  token pair lives in a ``TokenStore``; a password together with OAuth extras is rejected.

Every request passes the location's limiter (``limits.GoHighLevelLimiter``) and the shared retry
policy. In OAuth mode, a 401 triggers one refresh and one retry; a 403 is a configuration error.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import datetime
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import httpx
from airflow.sdk import BaseHook

from ghl_memberstack.exceptions import (
    GoHighLevelAuthError,
    GoHighLevelConfigError,
    GoHighLevelCursorError,
    GoHighLevelError,
    GoHighLevelLocationInactiveError,
    GoHighLevelRequestError,
)
from ghl_memberstack.hooks._http import (
    Outcome,
    RequestCounter,
    RetryPolicy,
    Route,
    build_client,
    error_detail,
    map_in_threads,
    resolve_base_url,
    retry_after_seconds,
    send_with_retries,
)
from ghl_memberstack.hooks._oauth import STORE_SEEDED_MARKER, OAuthTokenManager
from ghl_memberstack.limits import GoHighLevelLimiter, ghl_limiter
from ghl_memberstack.settings import Settings
from ghl_memberstack.token_store import ObjectStorageTokenStore, TokenStore, token_key

DEFAULT_BASE_URL = "https://services.leadconnectorhq.com"
DEFAULT_API_VERSION = "2021-07-28"
# POST /contacts/search accepts at most 500 records per page.
MAX_SEARCH_PAGE = 500
# NOTE: GHL documents no maximum for the values of one id filter; 100 per request is a guess.
SEARCH_IDS_PER_REQUEST = 100

SEARCH_CONTACTS = Route("POST", "/contacts/search")
GET_CONTACT = Route("GET", "/contacts/{contactId}")
CREATE_CONTACT = Route("POST", "/contacts/", idempotent=False)
UPDATE_CONTACT = Route("PUT", "/contacts/{contactId}")
DELETE_CONTACT = Route("DELETE", "/contacts/{contactId}")
ADD_TAGS = Route("POST", "/contacts/{contactId}/tags")
REMOVE_TAGS = Route("DELETE", "/contacts/{contactId}/tags")
CONTACT_TASKS = Route("GET", "/contacts/{contactId}/tasks")
CREATE_TASK = Route("POST", "/contacts/{contactId}/tasks", idempotent=False)
CONTACT_NOTES = Route("GET", "/contacts/{contactId}/notes")
CREATE_NOTE = Route("POST", "/contacts/{contactId}/notes", idempotent=False)
CONTACT_APPOINTMENTS = Route("GET", "/contacts/{contactId}/appointments")
SEARCH_TASKS = Route("POST", "/locations/{locationId}/tasks/search")
CUSTOM_FIELDS = Route("GET", "/locations/{locationId}/customFields")


@dataclasses.dataclass(frozen=True)
class GoHighLevelConfig:
    """Settings read from a ``gohighlevel`` connection. ``repr`` hides every secret."""

    conn_id: str
    base_url: str
    location_id: str
    api_version: str
    token: str | None = dataclasses.field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = dataclasses.field(default=None, repr=False)
    refresh_token: str | None = dataclasses.field(default=None, repr=False)

    @property
    def oauth(self) -> bool:
        """Whether the connection uses OAuth (a refresh token is set) rather than a PIT."""
        return self.refresh_token is not None


def read_config(conn: Any, conn_id: str) -> GoHighLevelConfig:
    """Validate a ``gohighlevel`` connection and return its settings.

    :raises GoHighLevelConfigError: a required field is missing or fields of both modes are set.
    """
    extras = conn.extra_dejson or {}

    def extra(name: str) -> str | None:
        value = extras.get(name, extras.get(f"extra__gohighlevel__{name}"))
        text = "" if value is None else str(value).strip()
        return text or None

    location_id = extra("location_id")
    if not location_id:
        raise GoHighLevelConfigError(
            f"GoHighLevel connection {conn_id!r} has no location_id extra. Set it to the id of the "
            f"sub-account (location) to sync."
        )
    try:
        base_url = resolve_base_url(conn.host, conn.port, DEFAULT_BASE_URL)
    except ValueError as error:
        raise GoHighLevelConfigError(f"GoHighLevel connection {conn_id!r}: {error}") from None
    password = (conn.password or "").strip() or None
    refresh_token = extra("refresh_token")
    client_id, client_secret = extra("client_id"), extra("client_secret")
    common = {
        "conn_id": conn_id,
        "base_url": base_url,
        "location_id": location_id,
        "api_version": extra("api_version") or DEFAULT_API_VERSION,
    }
    if refresh_token is None:
        if client_id or client_secret:
            raise GoHighLevelConfigError(
                f"GoHighLevel connection {conn_id!r} sets client_id or client_secret but no "
                f"refresh_token extra. For OAuth set refresh_token (or {STORE_SEEDED_MARKER!r} after "
                f"make authorize); for a Private Integration Token remove the OAuth extras."
            )
        if not password:
            raise GoHighLevelConfigError(
                f"GoHighLevel connection {conn_id!r} has neither a password (Private Integration "
                f"Token) nor a refresh_token extra (OAuth). Set one of them."
            )
        return GoHighLevelConfig(**common, token=password)
    if password:
        raise GoHighLevelConfigError(
            f"GoHighLevel connection {conn_id!r} sets both a password (Private Integration Token) and "
            f"OAuth extras. Remove the password for OAuth, or the OAuth extras for a token."
        )
    missing = [
        name for name, value in (("client_id", client_id), ("client_secret", client_secret)) if not value
    ]
    if missing:
        raise GoHighLevelConfigError(
            f"GoHighLevel connection {conn_id!r} is in OAuth mode but lacks the extra(s) "
            f"{', '.join(missing)}. Copy them from the Marketplace app's settings."
        )
    return GoHighLevelConfig(
        **common, client_id=client_id, client_secret=client_secret, refresh_token=refresh_token
    )


class GoHighLevelHook(BaseHook):
    """Read and write one GoHighLevel location through the API v2; thread-safe.

    :param gohighlevel_conn_id: the ``gohighlevel`` connection id.
    :param token_store: OAuth token store; default ``ObjectStorageTokenStore`` on the storage URL.
    :param transport: httpx transport, for tests (``httpx.MockTransport``).
    :param settings: timeouts, retries and limits; default ``Settings.from_env()``.
    :param sleep: function that waits between retries, for tests.
    """

    conn_name_attr = "gohighlevel_conn_id"
    default_conn_name = "gohighlevel_default"
    conn_type = "gohighlevel"
    hook_name = "GoHighLevel"

    def __init__(
        self,
        gohighlevel_conn_id: str = default_conn_name,
        *,
        token_store: TokenStore | None = None,
        transport: httpx.BaseTransport | None = None,
        settings: Settings | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        self.gohighlevel_conn_id = gohighlevel_conn_id
        self.settings = settings or Settings.from_env()
        self._token_store = token_store
        self._transport = transport
        self._sleep = sleep or time.sleep
        self._setup_lock = threading.Lock()
        self._config: GoHighLevelConfig | None = None
        self._client: httpx.Client | None = None
        self._tokens: OAuthTokenManager | None = None
        self._limiter: GoHighLevelLimiter | None = None
        self._counter = RequestCounter()

    @property
    def config(self) -> GoHighLevelConfig:
        """Settings of the connection, read once."""
        if self._config is None:
            with self._setup_lock:
                if self._config is None:
                    conn = self.get_connection(self.gohighlevel_conn_id)
                    self._config = read_config(conn, self.gohighlevel_conn_id)
        return self._config

    @property
    def location_id(self) -> str:
        """The location (sub-account) id of the connection."""
        return self.config.location_id

    @property
    def request_count(self) -> int:
        """HTTP requests this hook sent to the API, retries included (token refreshes excluded)."""
        return self._counter.value

    @property
    def token_manager(self) -> OAuthTokenManager | None:
        """The OAuth token manager, or None for a Private Integration Token connection."""
        self.get_conn()
        return self._tokens

    def get_conn(self) -> httpx.Client:
        """Return the hook's ``httpx.Client``, created on first use."""
        config = self.config
        if self._client is None:
            with self._setup_lock:
                if self._client is None:
                    client = build_client(config.base_url, settings=self.settings, transport=self._transport)
                    self._limiter = ghl_limiter(config.location_id, self.settings)
                    if config.oauth:
                        self._tokens = self._build_token_manager(config, client)
                    self._client = client
        return self._client

    def _build_token_manager(self, config: GoHighLevelConfig, client: httpx.Client) -> OAuthTokenManager:
        store = self._token_store or ObjectStorageTokenStore(settings=self.settings)
        return OAuthTokenManager(
            conn_id=config.conn_id,
            client=client,
            client_id=config.client_id or "",
            client_secret=config.client_secret or "",
            seed_refresh_token=config.refresh_token or "",
            location_id=config.location_id,
            store=store,
            key=token_key(config.client_id or "", config.location_id),
            settings=self.settings,
            log=self.log,
            sleep=self._sleep,
        )

    def close(self) -> None:
        """Close the HTTP client; the hook opens a new one on the next call."""
        with self._setup_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> GoHighLevelHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(
        self,
        route: Route,
        *,
        path_params: Mapping[str, Any] | None = None,
        allow_not_found: bool = False,
        **request_kwargs: Any,
    ) -> dict[str, Any] | None:
        """Send one API request and return its JSON body, or None for not-found when allowed."""
        client = self.get_conn()
        path = route.path(**(path_params or {}))
        token = self._access_token()
        outcome = self._send(client, route, path, token, **request_kwargs)
        if self._tokens is not None and _is_token_rejection(outcome.response):
            self.log.warning(
                "GoHighLevel connection %r: %s returned HTTP 401; refreshing the OAuth token once and "
                "retrying.",
                self.gohighlevel_conn_id,
                route,
            )
            token = self._tokens.refresh_after_rejection(token)
            outcome = self._send(client, route, path, token, **request_kwargs)
            if outcome.response is not None and outcome.response.status_code == 401:
                raise self._second_401_error(route, outcome.response)
        return self._result(route, outcome, allow_not_found=allow_not_found)

    def _access_token(self) -> str:
        if self._tokens is not None:
            return self._tokens.access_token()
        return self.config.token or ""

    def _send(
        self, client: httpx.Client, route: Route, path: str, token: str, **request_kwargs: Any
    ) -> Outcome:
        limiter = self._limiter
        assert limiter is not None  # get_conn() sets it

        def build_headers() -> dict[str, str]:
            return {"Authorization": f"Bearer {token}", "Version": self.config.api_version}

        def on_rate_limited(response: httpx.Response) -> None:
            delay = retry_after_seconds(response)
            if delay is None:
                remaining = response.headers.get("X-RateLimit-Remaining", "0")
                if remaining.isdigit() and int(remaining) > 0:
                    # The burst window has room, so only this request backs off.
                    return
                # GHL documents no Retry-After; the safe wait is one whole burst interval.
                delay = limiter.interval_s
            limiter.pause(delay)

        self.log.debug("GoHighLevel %s", route)
        return send_with_retries(
            client,
            route,
            path,
            policy=RetryPolicy(self.settings, self.log, "GoHighLevel", self.gohighlevel_conn_id, self._sleep),
            limiter=limiter,
            build_headers=build_headers,
            counter=self._counter,
            on_response=lambda response: limiter.update_from_headers(response.headers),
            on_rate_limited=on_rate_limited,
            **request_kwargs,
        )

    def _prefix(self, route: Route) -> str:
        return f"GoHighLevel connection {self.gohighlevel_conn_id!r}: {route}"

    def _second_401_error(self, route: Route, response: httpx.Response) -> GoHighLevelAuthError:
        detail = error_detail(response) or "no detail"
        return GoHighLevelAuthError(
            f"{self._prefix(route)} returned HTTP 401 ({detail}) again after one token refresh, for "
            f"location {self.location_id!r}. The app may lack the scope of this route: check the "
            f"Marketplace app's scopes, then re-authorise with `make authorize CODE=... "
            f"CONN_ID={self.gohighlevel_conn_id}`."
        )

    def _result(self, route: Route, outcome: Outcome, *, allow_not_found: bool) -> dict[str, Any] | None:
        """Return the JSON body of a successful outcome, or raise the error that fits it."""
        response = outcome.response
        if response is None:
            raise GoHighLevelRequestError(
                f"{self._prefix(route)} failed without a response ({type(outcome.error).__name__}) after "
                f"{outcome.attempts} attempt(s). Check that the host is reachable, then rerun.",
                status=None,
                outcome_unknown=outcome.outcome_unknown and not route.idempotent,
            )
        status = response.status_code
        if status < 300:
            return self._json_body(route, response)
        detail = error_detail(response)
        if "location is not active" in detail.lower():
            raise GoHighLevelLocationInactiveError(
                f"{self._prefix(route)} returned HTTP {status}: location {self.location_id!r} is not "
                f"active. The sync skips it until the sub-account is re-activated.",
                location_id=self.location_id,
            )
        if allow_not_found and (status == 404 or (status in (400, 422) and "not found" in detail.lower())):
            return None
        raise self._status_error(route, outcome, detail)

    def _status_error(self, route: Route, outcome: Outcome, detail: str) -> GoHighLevelError:
        response = outcome.response
        assert response is not None
        status = response.status_code
        detail_text = detail or "no detail"
        if status == 401:
            return GoHighLevelAuthError(
                f"{self._prefix(route)} returned HTTP 401 ({detail_text}) for location {self.location_id!r}: the "
                f"Private Integration Token was rejected. Create a new token under Settings > Private "
                f"Integrations with the needed scopes and put it in the connection's password."
            )
        if status == 403:
            return GoHighLevelConfigError(
                f"{self._prefix(route)} returned HTTP 403 ({detail_text}): the credentials have no access to "
                f"location {self.location_id!r}. Check the connection's location_id and that the app or "
                f"token belongs to that location."
            )
        if status == 429 or status >= 500:
            return GoHighLevelRequestError(
                f"{self._prefix(route)} returned HTTP {status} ({detail_text}) after {outcome.attempts} "
                f"attempt(s). The API is overloaded or rate-limiting; rerun later.",
                status=status,
                outcome_unknown=status >= 500 and not route.idempotent,
                detail=detail,
            )
        return GoHighLevelRequestError(
            f"{self._prefix(route)} returned HTTP {status} ({detail_text}). The request was rejected and is not "
            f"retried; check the values sent and the connection's api_version.",
            status=status,
            detail=detail,
        )

    def _json_body(self, route: Route, response: httpx.Response) -> dict[str, Any]:
        if not response.content.strip():
            return {}
        try:
            body = response.json()
        except ValueError:
            raise GoHighLevelRequestError(
                f"{self._prefix(route)} returned HTTP {response.status_code} with a body that is not JSON.",
                status=response.status_code,
            ) from None
        return body if isinstance(body, dict) else {"data": body}

    def search_contacts(
        self,
        *,
        updated_gte_ms: int | None = None,
        updated_lte_ms: int | None = None,
        contact_ids: Iterable[str] | None = None,
        page_limit: int = MAX_SEARCH_PAGE,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of contacts sorted by ``dateUpdated`` then id, both ascending.

        The cursor (``searchAfter``) comes from the last record of each page, so contacts with equal
        ``dateUpdated`` are neither dropped nor repeated. Iteration ends on an empty or short page.
        With ``contact_ids``, the ids are searched in chunks of ``SEARCH_IDS_PER_REQUEST``, and the
        order holds within each chunk.

        :param updated_gte_ms: lower bound of ``dateUpdated`` in epoch milliseconds, inclusive.
        :param updated_lte_ms: upper bound of ``dateUpdated`` in epoch milliseconds, inclusive.
        :param contact_ids: only these contacts; an empty collection yields nothing.
        :raises GoHighLevelCursorError: the API returned a cursor it had returned before.
        """
        if not 1 <= page_limit <= MAX_SEARCH_PAGE:
            raise ValueError(f"page_limit must be between 1 and {MAX_SEARCH_PAGE}, got {page_limit}.")
        filters: list[dict[str, Any]] = []
        if updated_gte_ms is not None or updated_lte_ms is not None:
            bounds = {"gte": updated_gte_ms, "lte": updated_lte_ms}
            filters.append(
                {
                    "field": "dateUpdated",
                    "operator": "range",
                    "value": {k: v for k, v in bounds.items() if v is not None},
                }
            )
        if contact_ids is None:
            yield from self._search_pages(filters, page_limit)
            return
        ids = sorted(set(contact_ids))
        for start in range(0, len(ids), SEARCH_IDS_PER_REQUEST):
            chunk = ids[start : start + SEARCH_IDS_PER_REQUEST]
            yield from self._search_pages(
                [*filters, {"field": "id", "operator": "eq", "value": chunk}], page_limit
            )

    def _search_pages(self, filters: list[dict[str, Any]], page_limit: int) -> Iterator[list[dict[str, Any]]]:
        base_body: dict[str, Any] = {
            "locationId": self.location_id,
            "pageLimit": page_limit,
            "sort": [{"field": "dateUpdated", "direction": "asc"}],
        }
        if filters:
            base_body["filters"] = filters
        seen_cursors: set[str] = set()
        cursor: list[Any] | None = None
        while True:
            body = dict(base_body) if cursor is None else {**base_body, "searchAfter": cursor}
            data = self._request(SEARCH_CONTACTS, json=body) or {}
            contacts = list(data.get("contacts") or [])
            if not contacts:
                return
            yield sorted(contacts, key=_contact_sort_key)
            if len(contacts) < page_limit:
                return
            # The cursor is the API's own last record, not the last one after local sorting.
            cursor = _search_cursor(contacts[-1])
            cursor_key = json.dumps(cursor)
            if cursor_key in seen_cursors:
                raise GoHighLevelCursorError(
                    f"{self._prefix(SEARCH_CONTACTS)} returned the cursor {cursor_key} twice for location "
                    f"{self.location_id!r}. The search would loop, so the run fails instead of ending with "
                    f"a partial result; rerun, and report it if it repeats."
                )
            seen_cursors.add(cursor_key)

    def get_contact(self, contact_id: str) -> dict[str, Any] | None:
        """Return one contact, or None when GoHighLevel reports it not found."""
        data = self._request(GET_CONTACT, path_params={"contactId": contact_id}, allow_not_found=True)
        if data is None:
            return None
        return data.get("contact") or None

    def get_contact_tasks(self, contact_id: str) -> list[dict[str, Any]]:
        """Return every task of one contact (the route has no paging)."""
        data = self._request(CONTACT_TASKS, path_params={"contactId": contact_id}) or {}
        return list(data.get("tasks") or [])

    def get_contact_notes(self, contact_id: str) -> list[dict[str, Any]]:
        """Return every note of one contact (the route has no paging)."""
        data = self._request(CONTACT_NOTES, path_params={"contactId": contact_id}) or {}
        return list(data.get("notes") or [])

    def get_contact_appointments(self, contact_id: str) -> list[dict[str, Any]]:
        """Return every appointment of one contact (the route has no paging)."""
        data = self._request(CONTACT_APPOINTMENTS, path_params={"contactId": contact_id}) or {}
        return list(data.get("events") or data.get("appointments") or [])

    def search_location_tasks(
        self, *, contact_ids: Iterable[str] | None = None, limit: int = 100
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of the location's tasks, paged with ``skip`` and ``limit``.

        Paging ends on an empty page, not on a short one, because GHL documents no maximum ``limit``
        and a server that caps it silently would otherwise end the listing early.

        :param contact_ids: only tasks of these contacts; an empty collection yields nothing.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}.")
        base_body: dict[str, Any] = {"limit": limit}
        if contact_ids is not None:
            ids = sorted(set(contact_ids))
            if not ids:
                return
            base_body["contactId"] = ids
        skip = 0
        while True:
            data = self._request(
                SEARCH_TASKS, path_params={"locationId": self.location_id}, json={**base_body, "skip": skip}
            )
            tasks = _flatten_tasks((data or {}).get("tasks"))
            if not tasks:
                return
            yield tasks
            skip += len(tasks)

    def get_custom_fields(self) -> list[dict[str, Any]]:
        """Return the contact custom field definitions of the location."""
        data = self._request(
            CUSTOM_FIELDS, path_params={"locationId": self.location_id}, params={"model": "contact"}
        )
        return list((data or {}).get("customFields") or [])

    def map_concurrently(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        max_workers: int | None = None,
        *,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Apply ``fn`` (which calls this hook) to each item in threads; results keep the input order.

        The location's limiter bounds the rate, so the default ``GHL_MAX_WORKERS`` threads reach the
        full limit even when each request takes a few hundred milliseconds.
        """
        return map_in_threads(
            fn,
            items,
            max_workers=max_workers or self.settings.ghl_max_workers,
            thread_name_prefix="gohighlevel",
            return_exceptions=return_exceptions,
        )

    def test_connection(self) -> tuple[bool, str]:
        """Check the connection for the Airflow UI's Test button.

        A Private Integration Token connection makes one contact search of one record. An OAuth
        connection checks its settings and the stored access token, and never refreshes, because a
        refresh from the API server would rotate the token behind the workers' backs.
        """
        try:
            config = self.config
            self.get_conn()
            if not config.oauth:
                self._request(SEARCH_CONTACTS, json={"locationId": config.location_id, "pageLimit": 1})
                location = config.location_id
                return True, f"Connected to GoHighLevel location {location} with a Private Integration Token."
            return self._test_oauth(config)
        except GoHighLevelError as error:
            return False, str(error)
        except Exception as error:  # noqa: BLE001 - the Test button shows any failure as text
            return (
                False,
                f"GoHighLevel connection {self.gohighlevel_conn_id!r}: {type(error).__name__}: {error}",
            )

    def _test_oauth(self, config: GoHighLevelConfig) -> tuple[bool, str]:
        tokens = self._tokens
        assert tokens is not None
        pair = tokens.stored_pair()
        prefix = f"OAuth settings of location {config.location_id} are complete."
        if pair is None:
            return True, (
                f"{prefix} The token store holds no token pair yet; the first task run seeds it from the "
                f"connection's refresh token. The API was not called."
            )
        if pair.access_token is None or not pair.is_fresh():
            return True, (
                f"{prefix} The stored access token (generation {pair.generation}) is due for refresh; the "
                f"next task run refreshes it. The API was not called."
            )
        outcome = self._send(
            self.get_conn(),
            SEARCH_CONTACTS,
            SEARCH_CONTACTS.path(),
            pair.access_token,
            json={"locationId": config.location_id, "pageLimit": 1},
        )
        if outcome.response is not None and outcome.response.status_code == 401:
            return False, (
                f"{prefix} GoHighLevel rejected the stored access token (generation {pair.generation}) with "
                f"HTTP 401 ({error_detail(outcome.response) or 'no detail'}); the Test button does not "
                f"refresh, so run a task, or re-authorise if tasks fail too."
            )
        self._result(SEARCH_CONTACTS, outcome, allow_not_found=False)
        return True, f"{prefix} GoHighLevel accepted the stored access token (generation {pair.generation})."

    def create_contact(self, data: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Create a contact in the location and return it. Not retried after an unknown outcome."""
        body = {**(data or {}), **fields, "locationId": self.location_id}
        return (self._request(CREATE_CONTACT, json=body) or {}).get("contact") or {}

    def update_contact(
        self, contact_id: str, data: Mapping[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Update fields of a contact and return it; ``tags`` given here replace all tags."""
        body = {**(data or {}), **fields}
        result = self._request(UPDATE_CONTACT, path_params={"contactId": contact_id}, json=body) or {}
        return result.get("contact") or {}

    def delete_contact(self, contact_id: str) -> None:
        """Delete a contact."""
        self._request(DELETE_CONTACT, path_params={"contactId": contact_id})

    def add_tags(self, contact_id: str, tags: Iterable[str]) -> list[str]:
        """Add tags to a contact and return the tags the API reports."""
        result = (
            self._request(ADD_TAGS, path_params={"contactId": contact_id}, json={"tags": list(tags)}) or {}
        )
        return list(result.get("tags") or [])

    def remove_tags(self, contact_id: str, tags: Iterable[str]) -> list[str]:
        """Remove tags from a contact and return the tags the API reports."""
        result = (
            self._request(REMOVE_TAGS, path_params={"contactId": contact_id}, json={"tags": list(tags)}) or {}
        )
        return list(result.get("tags") or [])

    def create_note(self, contact_id: str, body: str, **fields: Any) -> dict[str, Any]:
        """Create a note on a contact and return it. Not retried after an unknown outcome."""
        result = self._request(
            CREATE_NOTE, path_params={"contactId": contact_id}, json={**fields, "body": body}
        )
        return (result or {}).get("note") or {}

    def create_task(
        self, contact_id: str, title: str, due_date: str, *, completed: bool = False, **fields: Any
    ) -> dict[str, Any]:
        """Create a task on a contact and return it; ``due_date`` is ISO 8601. Not retried blindly."""
        payload = {**fields, "title": title, "dueDate": due_date, "completed": completed}
        result = self._request(CREATE_TASK, path_params={"contactId": contact_id}, json=payload)
        return (result or {}).get("task") or {}


def _is_token_rejection(response: httpx.Response | None) -> bool:
    """Return whether a response is a 401 that a token refresh may cure (not a suspended location)."""
    if response is None or response.status_code != 401:
        return False
    return "location is not active" not in error_detail(response).lower()


def _search_cursor(contact: Mapping[str, Any]) -> list[Any]:
    cursor = contact.get("searchAfter")
    if isinstance(cursor, list) and cursor:
        return cursor
    return [_date_updated_ms(contact), str(contact.get("id", ""))]


def _contact_sort_key(contact: Mapping[str, Any]) -> tuple[int, str]:
    return (_date_updated_ms(contact), str(contact.get("id", "")))


def _date_updated_ms(contact: Mapping[str, Any]) -> int:
    value = contact.get("dateUpdated")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str) and value:
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return 0
    return 0


def _flatten_tasks(raw: Any) -> list[dict[str, Any]]:
    """Return a flat task list; the published schema shows the list wrapped in another list."""
    tasks: list[dict[str, Any]] = []
    for item in raw or []:
        if isinstance(item, list):
            tasks.extend(entry for entry in item if isinstance(entry, dict))
        elif isinstance(item, dict):
            tasks.append(item)
    return tasks
