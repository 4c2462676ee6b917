"""Airflow hook for the Memberstack Admin API: members, free plans and Data Tables of one app.

Connection type ``memberstack``, default connection id ``memberstack_default``:

- host: API base URL ``scheme://host[:port]``; no scheme means https; empty means
  ``https://admin.memberstack.com``.
- password: the app's secret key (``sk_sb_...`` in test mode, ``sk_...`` live), sent as
  ``X-API-KEY``. The key alone selects the app and its environment.

All calls of a process share one limiter (``MEMBERSTACK_RATE_LIMIT_PER_S``, 25 per second by
default). Creates are never retried blindly: after a failed or timed-out member create the hook looks
the member up by email before trying again.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import httpx
from airflow.sdk import BaseHook

from ghl_memberstack.exceptions import MemberstackConfigError, MemberstackError, MemberstackRequestError
from ghl_memberstack.hooks._http import (
    Outcome,
    RequestCounter,
    RetryPolicy,
    Route,
    build_client,
    error_detail,
    full_jitter_delay,
    map_in_threads,
    resolve_base_url,
    retry_after_seconds,
    send_with_retries,
)
from ghl_memberstack.limits import SlidingWindowLimiter, memberstack_limiter
from ghl_memberstack.settings import Settings

DEFAULT_BASE_URL = "https://admin.memberstack.com"
# GET /members returns at most 100 members per page, and Data Table queries take at most 100 records.
MEMBER_PAGE_SIZE = 100
RECORD_PAGE_SIZE = 100

LIST_MEMBERS = Route("GET", "/members")
GET_MEMBER = Route("GET", "/members/{memberIdOrEmail}")
CREATE_MEMBER = Route("POST", "/members", idempotent=False)
UPDATE_MEMBER = Route("PATCH", "/members/{memberId}")
DELETE_MEMBER = Route("DELETE", "/members/{memberId}")
# A repeated add or remove of a free plan may be rejected, so an unknown outcome is checked, not resent.
ADD_PLAN = Route("POST", "/members/{memberId}/add-plan", idempotent=False)
REMOVE_PLAN = Route("POST", "/members/{memberId}/remove-plan", idempotent=False)
LIST_TABLES = Route("GET", "/v2/data-tables")
GET_TABLE = Route("GET", "/v2/data-tables/{table}")
QUERY_RECORDS = Route("POST", "/v2/data-tables/{table}/records/query")
CREATE_RECORD = Route("POST", "/v2/data-tables/{table}/records", idempotent=False)
UPDATE_RECORD = Route("PUT", "/v2/data-tables/{table}/records/{recordId}")
DELETE_RECORD = Route("DELETE", "/v2/data-tables/{table}/records/{recordId}")

_READ_ROUTES = frozenset({LIST_MEMBERS, GET_MEMBER, LIST_TABLES, GET_TABLE, QUERY_RECORDS})
_NO_MEMBER = "no member with this identifier"


@dataclasses.dataclass(frozen=True)
class MemberstackConfig:
    """Settings read from a ``memberstack`` connection. ``repr`` hides the key."""

    conn_id: str
    base_url: str
    secret_key: str = dataclasses.field(repr=False)

    @property
    def test_mode(self) -> bool:
        """Whether the key is a test-mode (sandbox) key."""
        return self.secret_key.startswith("sk_sb_")


def read_config(conn: Any, conn_id: str) -> MemberstackConfig:
    """Validate a ``memberstack`` connection and return its settings.

    :raises MemberstackConfigError: the key is missing or malformed, or the host is invalid.
    """
    key = (conn.password or "").strip()
    if not key:
        raise MemberstackConfigError(
            f"Memberstack connection {conn_id!r} has no password. Set it to the app's secret key "
            f"(Dev Tools > API keys)."
        )
    if not key.startswith("sk_"):
        raise MemberstackConfigError(
            f"Memberstack connection {conn_id!r}: the password is not a secret key (expected a value "
            f"starting with sk_sb_ or sk_). Use the secret key, not the public key."
        )
    try:
        base_url = resolve_base_url(conn.host, conn.port, DEFAULT_BASE_URL)
    except ValueError as error:
        raise MemberstackConfigError(f"Memberstack connection {conn_id!r}: {error}") from None
    return MemberstackConfig(conn_id=conn_id, base_url=base_url, secret_key=key)


class _LinkedCounter:
    """Counts one sent request in several counters."""

    def __init__(self, *counters: RequestCounter) -> None:
        self._counters = counters

    def increment(self) -> None:
        for counter in self._counters:
            counter.increment()


class MemberstackHook(BaseHook):
    """Read and write one Memberstack app through the Admin API; thread-safe.

    :param memberstack_conn_id: the ``memberstack`` connection id.
    :param transport: httpx transport, for tests (``httpx.MockTransport``).
    :param settings: timeouts, retries and limits; default ``Settings.from_env()``.
    :param sleep: function that waits between retries, for tests.
    """

    conn_name_attr = "memberstack_conn_id"
    default_conn_name = "memberstack_default"
    conn_type = "memberstack"
    hook_name = "Memberstack"

    def __init__(
        self,
        memberstack_conn_id: str = default_conn_name,
        *,
        transport: httpx.BaseTransport | None = None,
        settings: Settings | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        self.memberstack_conn_id = memberstack_conn_id
        self.settings = settings or Settings.from_env()
        self._transport = transport
        self._sleep = sleep or time.sleep
        self._setup_lock = threading.Lock()
        self._config: MemberstackConfig | None = None
        self._client: httpx.Client | None = None
        self._limiter: SlidingWindowLimiter | None = None
        self._counter = RequestCounter()
        self._write_counter = RequestCounter()

    @property
    def config(self) -> MemberstackConfig:
        """Settings of the connection, read once."""
        if self._config is None:
            with self._setup_lock:
                if self._config is None:
                    conn = self.get_connection(self.memberstack_conn_id)
                    self._config = read_config(conn, self.memberstack_conn_id)
        return self._config

    @property
    def request_count(self) -> int:
        """HTTP requests this hook sent, retries included."""
        return self._counter.value

    @property
    def write_count(self) -> int:
        """HTTP requests this hook sent that can change data (creates, updates, deletes, plan changes)."""
        return self._write_counter.value

    def get_conn(self) -> httpx.Client:
        """Return the hook's ``httpx.Client``, created on first use."""
        config = self.config
        if self._client is None:
            with self._setup_lock:
                if self._client is None:
                    self._limiter = memberstack_limiter(self.settings)
                    self._client = build_client(
                        config.base_url,
                        settings=self.settings,
                        headers={"X-API-KEY": config.secret_key},
                        transport=self._transport,
                    )
        return self._client

    def close(self) -> None:
        """Close the HTTP client; the hook opens a new one on the next call."""
        with self._setup_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> MemberstackHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(
        self,
        route: Route,
        *,
        path_params: Mapping[str, Any] | None = None,
        expect_json: bool = True,
        **request_kwargs: Any,
    ) -> Any:
        """Send one request; return the parsed body (or None when ``expect_json`` is False)."""
        client = self.get_conn()
        limiter = self._limiter
        assert limiter is not None
        counter = (
            self._counter if route in _READ_ROUTES else _LinkedCounter(self._counter, self._write_counter)
        )

        def on_rate_limited(response: httpx.Response) -> None:
            delay = retry_after_seconds(response)
            limiter.pause(limiter.interval_s if delay is None else delay)

        self.log.debug("Memberstack %s", route)
        outcome = send_with_retries(
            client,
            route,
            route.path(**(path_params or {})),
            policy=RetryPolicy(self.settings, self.log, "Memberstack", self.memberstack_conn_id, self._sleep),
            limiter=limiter,
            build_headers=dict,
            counter=counter,  # type: ignore[arg-type]
            on_rate_limited=on_rate_limited,
            **request_kwargs,
        )
        return self._result(route, outcome, expect_json=expect_json)

    def _prefix(self, route: Route) -> str:
        return f"Memberstack connection {self.memberstack_conn_id!r}: {route}"

    def _result(self, route: Route, outcome: Outcome, *, expect_json: bool) -> Any:
        response = outcome.response
        if response is None:
            raise MemberstackRequestError(
                f"{self._prefix(route)} failed without a response ({type(outcome.error).__name__}) after "
                f"{outcome.attempts} attempt(s). Check that the host is reachable, then rerun.",
                status=None,
                outcome_unknown=outcome.outcome_unknown and not route.idempotent,
            )
        if response.status_code < 300:
            if not expect_json:
                # add-plan and remove-plan return an empty body or the text "OK".
                return None
            body = self._json_body(route, response)
            if isinstance(body, dict) and body.get("error") and "data" not in body:
                raise self._status_error(route, outcome)
            return body
        raise self._status_error(route, outcome)

    def _json_body(self, route: Route, response: httpx.Response) -> Any:
        if not response.content.strip():
            return {}
        try:
            return response.json()
        except ValueError:
            raise MemberstackRequestError(
                f"{self._prefix(route)} returned HTTP {response.status_code} with a body that is not JSON.",
                status=response.status_code,
            ) from None

    def _status_error(self, route: Route, outcome: Outcome) -> MemberstackError:
        response = outcome.response
        assert response is not None
        status = response.status_code
        detail = error_detail(response)
        code = _error_code(response)
        detail_text = f"{code + ': ' if code else ''}{detail or 'no detail'}"
        if status == 401 or code == "validation/invalid-secret-key":
            return MemberstackConfigError(
                f"{self._prefix(route)} returned HTTP {status} ({detail_text}): the secret key was rejected. Put "
                f"the app's current secret key (Dev Tools > API keys) in the connection's password."
            )
        if "website does not exist" in detail.lower():
            return MemberstackConfigError(
                f"{self._prefix(route)} returned HTTP {status} ({detail_text}): the key belongs to no app on this "
                f"host. Check the key, its environment (sk_sb_ for test mode) and the connection's host."
            )
        if status == 429 or status >= 500:
            advice = (
                f"after {outcome.attempts} attempt(s). The API is overloaded or rate-limiting; rerun later."
            )
        else:
            advice = "The request was rejected and is not retried; check the values sent."
        return MemberstackRequestError(
            f"{self._prefix(route)} returned HTTP {status} ({detail_text}) {advice}",
            status=status,
            outcome_unknown=status >= 500 and not route.idempotent,
            code=code,
            detail=detail,
        )

    def _write_resolving_unknown(
        self, send: Callable[[], Any], resolve: Callable[[], Any | None], *, what: str
    ) -> Any:
        """Send a non-idempotent write; after an unknown outcome, ``resolve`` decides before any retry.

        ``resolve`` returns the write's result when the server applied it, else None.
        """
        attempts = self.settings.retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                return send()
            except MemberstackRequestError as error:
                if not error.outcome_unknown:
                    raise
                found = resolve()
                if found is not None:
                    self.log.warning(
                        "Memberstack connection %r: %s had an unknown outcome (%s), but the lookup shows "
                        "it was applied.",
                        self.memberstack_conn_id,
                        what,
                        error.status or "no response",
                    )
                    return found
                if attempt == attempts:
                    raise
                delay = full_jitter_delay(attempt, self.settings)
                self.log.warning(
                    "Memberstack connection %r: %s had an unknown outcome and the lookup shows it was not "
                    "applied; retry %d of %d in %.2f s.",
                    self.memberstack_conn_id,
                    what,
                    attempt,
                    attempts - 1,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def list_members(self, *, include_json: bool = False) -> Iterator[dict[str, Any]]:
        """Yield every member of the app, following ``endCursor`` while ``hasNextPage`` (or ``hasMore``).

        :param include_json: also fetch each member's ``json`` field, which the API omits by default.
        """
        after: Any = None
        seen_cursors: set[str] = set()
        while True:
            params: dict[str, Any] = {"limit": MEMBER_PAGE_SIZE}
            if include_json:
                params["includeJSON"] = "true"
            if after is not None:
                params["after"] = after
            body = self._request(LIST_MEMBERS, params=params) or {}
            members = body.get("data") or []
            yield from members
            has_more = body.get("hasNextPage", body.get("hasMore", False))
            if not members or not has_more:
                return
            after = body.get("endCursor")
            cursor_key = json.dumps(after)
            if after is None or cursor_key in seen_cursors:
                raise MemberstackRequestError(
                    f"{self._prefix(LIST_MEMBERS)} reported more pages but returned the cursor {cursor_key} "
                    f"again (or none). The listing would loop, so it stops with an error; rerun.",
                    status=200,
                )
            seen_cursors.add(cursor_key)

    def get_member(self, id_or_email: str) -> dict[str, Any] | None:
        """Return a member by id (``mem_...``) or email, or None when the app has no such member."""
        try:
            body = self._request(GET_MEMBER, path_params={"memberIdOrEmail": id_or_email})
        except MemberstackRequestError as error:
            if error.status == 404 or _NO_MEMBER in error.detail.lower():
                return None
            raise
        return (body or {}).get("data") or None

    def create_member(
        self,
        *,
        email: str,
        password: str,
        custom_fields: Mapping[str, Any] | None = None,
        meta_data: Mapping[str, Any] | None = None,
        json: Mapping[str, Any] | None = None,
        plans: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Create a member and return it; ``plans`` are free plan ids (``pln_...``).

        After a failed or timed-out create, the member is looked up by email first, so a create that
        the server applied is returned instead of being sent twice.
        """
        payload: dict[str, Any] = {"email": email, "password": password}
        if custom_fields is not None:
            payload["customFields"] = dict(custom_fields)
        if meta_data is not None:
            payload["metaData"] = dict(meta_data)
        if json is not None:
            payload["json"] = dict(json)
        plan_ids = [_free_plan_id(plan, self.memberstack_conn_id) for plan in plans or ()]
        if plan_ids:
            payload["plans"] = [{"planId": plan_id} for plan_id in plan_ids]

        def send() -> dict[str, Any]:
            return (self._request(CREATE_MEMBER, json=payload) or {}).get("data") or {}

        return self._write_resolving_unknown(send, lambda: self.get_member(email), what=str(CREATE_MEMBER))

    def update_member(
        self,
        member_id: str,
        *,
        email: str | None = None,
        custom_fields: Mapping[str, Any] | None = None,
        meta_data: Mapping[str, Any] | None = None,
        json: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Update a member and return it. ``customFields`` and ``metaData`` merge; ``json`` replaces.

        :raises ValueError: no field to update was given.
        """
        payload: dict[str, Any] = {}
        if email is not None:
            payload["email"] = email
        if custom_fields is not None:
            payload["customFields"] = dict(custom_fields)
        if meta_data is not None:
            payload["metaData"] = dict(meta_data)
        if json is not None:
            payload["json"] = dict(json)
        if not payload:
            raise ValueError("update_member needs at least one of email, custom_fields, meta_data or json.")
        body = self._request(UPDATE_MEMBER, path_params={"memberId": member_id}, json=payload)
        return (body or {}).get("data") or {}

    def delete_member(self, member_id: str) -> None:
        """Delete a member; a member that is already gone is not an error."""
        try:
            self._request(DELETE_MEMBER, path_params={"memberId": member_id})
        except MemberstackRequestError as error:
            if error.status == 404 or _NO_MEMBER in error.detail.lower():
                self.log.info("Memberstack member %s was already deleted.", member_id)
                return
            raise

    def add_plan(self, member_id: str, plan_id: str) -> None:
        """Connect a free plan to a member; the response body (empty or ``OK``) is not parsed."""
        self._change_plan(ADD_PLAN, member_id, plan_id, connected_after=True)

    def remove_plan(self, member_id: str, plan_id: str) -> None:
        """Remove a free plan from a member; the response body (empty or ``OK``) is not parsed."""
        self._change_plan(REMOVE_PLAN, member_id, plan_id, connected_after=False)

    def _change_plan(self, route: Route, member_id: str, plan_id: str, *, connected_after: bool) -> None:
        plan_id = _free_plan_id(plan_id, self.memberstack_conn_id)

        def send() -> bool:
            self._request(
                route, path_params={"memberId": member_id}, json={"planId": plan_id}, expect_json=False
            )
            return True

        def resolve() -> bool | None:
            member = self.get_member(member_id) or {}
            connected = any(
                connection.get("planId") == plan_id and connection.get("active", True) is not False
                for connection in member.get("planConnections") or []
            )
            return True if connected == connected_after else None

        self._write_resolving_unknown(send, resolve, what=str(route))

    def list_data_tables(self) -> list[dict[str, Any]]:
        """Return the app's Data Tables with their fields."""
        body = self._request(LIST_TABLES) or {}
        return list((body.get("data") or {}).get("tables") or [])

    def get_data_table(self, key: str) -> dict[str, Any]:
        """Return one Data Table (by key or ``tbl_...`` id) with its fields."""
        body = self._request(GET_TABLE, path_params={"table": key}) or {}
        return body.get("data") or {}

    def query_records(
        self, table: str, *, where: Mapping[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield every record of a table matching ``where`` (``findMany`` syntax), 100 per request."""
        after: Any = None
        seen_cursors: set[str] = set()
        while True:
            find_many: dict[str, Any] = {"take": RECORD_PAGE_SIZE}
            if where:
                find_many["where"] = dict(where)
            if after is not None:
                find_many["after"] = after
            body = self._request(
                QUERY_RECORDS, path_params={"table": table}, json={"query": {"findMany": find_many}}
            )
            data = (body or {}).get("data") or {}
            records = data.get("records") or []
            yield from records
            pagination = data.get("pagination") or {}
            if not records or not pagination.get("hasMore"):
                return
            after = pagination.get("endCursor")
            cursor_key = json.dumps(after)
            if after is None or cursor_key in seen_cursors:
                raise MemberstackRequestError(
                    f"{self._prefix(QUERY_RECORDS)} for table {table!r} reported more records but returned "
                    f"the cursor {cursor_key} again (or none). The query stops with an error; rerun.",
                    status=200,
                )
            seen_cursors.add(cursor_key)

    def find_record(self, table: str, field: str, value: Any) -> dict[str, Any] | None:
        """Return the first record whose ``field`` equals ``value``, or None."""
        find_many = {"where": {field: value}, "take": 1}
        body = self._request(
            QUERY_RECORDS, path_params={"table": table}, json={"query": {"findMany": find_many}}
        )
        records = ((body or {}).get("data") or {}).get("records") or []
        return records[0] if records else None

    def create_record(
        self, table: str, data: Mapping[str, Any], member_id: str | None = None
    ) -> dict[str, Any]:
        """Create a record and return it.

        It is retried only when the server cannot have applied it. After an unknown outcome the
        ``MemberstackRequestError`` has ``outcome_unknown`` set, and the caller looks the record up
        (for example with ``find_record`` on its GoHighLevel id field) before creating it again.
        """
        payload: dict[str, Any] = {"data": dict(data)}
        if member_id:
            payload["memberId"] = member_id
        body = self._request(CREATE_RECORD, path_params={"table": table}, json=payload)
        return (body or {}).get("data") or {}

    def update_record(self, table: str, record_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Update fields of a record and return it.

        :raises ValueError: ``data`` is empty (the API rejects it, so no request is sent).
        """
        if not data:
            raise ValueError(f"update_record on table {table!r} needs at least one field; data is empty.")
        body = self._request(
            UPDATE_RECORD, path_params={"table": table, "recordId": record_id}, json={"data": dict(data)}
        )
        return (body or {}).get("data") or {}

    def delete_record(self, table: str, record_id: str) -> None:
        """Delete a record; a record that is already gone is not an error."""
        try:
            self._request(DELETE_RECORD, path_params={"table": table, "recordId": record_id})
        except MemberstackRequestError as error:
            if error.status == 404:
                self.log.info("Memberstack record %s of table %s was already deleted.", record_id, table)
                return
            raise

    def map_concurrently(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        max_workers: int | None = None,
        *,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Apply ``fn`` (which calls this hook) to each item in threads; results keep the input order.

        The process-wide limiter bounds the rate; ``MEMBERSTACK_MAX_WORKERS`` threads by default.
        """
        return map_in_threads(
            fn,
            items,
            max_workers=max_workers or self.settings.memberstack_max_workers,
            thread_name_prefix="memberstack",
            return_exceptions=return_exceptions,
        )

    def test_connection(self) -> tuple[bool, str]:
        """List one member to check the key and host, for the Airflow UI's Test button."""
        try:
            config = self.config
            self._request(LIST_MEMBERS, params={"limit": 1})
        except MemberstackError as error:
            return False, str(error)
        except Exception as error:  # noqa: BLE001 - the Test button shows any failure as text
            return (
                False,
                f"Memberstack connection {self.memberstack_conn_id!r}: {type(error).__name__}: {error}",
            )
        mode = "test mode" if config.test_mode else "live mode"
        return True, f"Connected to the Memberstack Admin API with a {mode} secret key."


def _free_plan_id(plan_id: str, conn_id: str) -> str:
    """Return ``plan_id`` if it names a free plan; reject price ids before any request."""
    if plan_id.startswith("prc_"):
        raise MemberstackConfigError(
            f"Memberstack connection {conn_id!r}: {plan_id!r} is a price id of a paid plan. The Admin API "
            f"only connects free plans (pln_...); remove it from the mapping."
        )
    return plan_id


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    code = body.get("code") if isinstance(body, dict) else None
    return str(code) if code else None
