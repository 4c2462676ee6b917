"""Fakes for the hook unit tests: connections from environment variables, fast settings, fake APIs.

``FakeGoHighLevel`` and ``FakeMemberstack`` are ``httpx.MockTransport`` handlers with scripted
replies. The GoHighLevel fake accepts each refresh token once and rotates it, as GoHighLevel does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ghl_memberstack.settings import Settings

LOCATION_ID = "LocUnitTest0001"
CLIENT_ID = "unit-client-id"
CLIENT_SECRET = "unit-client-secret-value"
SEED_REFRESH_TOKEN = "rt-seed-unit-0000000000000001"
PIT_TOKEN = "pit-unit-token-000000000000001"
MEMBERSTACK_KEY = "sk_sb_unit_key_00000000000001"

# Replies are either a status with a JSON body, or a callable that builds the response.
Reply = tuple[int, Any] | Callable[[httpx.Request], httpx.Response] | BaseException


def fast_settings(**overrides: Any) -> Settings:
    """Return settings whose retries wait nothing and whose limiter never blocks a unit test."""
    values: dict[str, Any] = {
        "retry_base_delay_s": 0.0,
        "retry_max_delay_s": 0.0,
        "retry_attempts": 4,
        "token_refresh_attempts": 3,
        "token_lease_wait_s": 10.0,
        "token_lease_poll_s": 0.01,
        "ghl_rate_limit_interval_s": 0.05,
        "ghl_rate_limit_max": 1000,
        "memberstack_rate_limit_per_s": 1000.0,
    }
    values.update(overrides)
    return Settings(**values)


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    """Define an Airflow connection through its ``AIRFLOW_CONN_<ID>`` environment variable."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


class FakeGoHighLevel:
    """Scripted GoHighLevel API: queue replies per route key, or fall back to the default handlers.

    Route keys are ``"METHOD /path"`` with the real path. ``token_replies`` scripts the token
    endpoint; without a scripted reply, a known refresh token is exchanged once for a new pair.
    """

    def __init__(self, *, expires_in: int = 86399) -> None:
        self.lock = threading.Lock()
        self.requests: list[httpx.Request] = []
        self.scripted: dict[str, list[Reply]] = {}
        self.token_replies: list[Reply] = []
        self.valid_refresh_tokens = {SEED_REFRESH_TOKEN}
        self.valid_access_tokens: set[str] = {PIT_TOKEN}
        self.refresh_calls: list[dict[str, str]] = []
        self.expires_in = expires_in
        self.issued = 0
        self.default_body: dict[str, Any] = {"contacts": [], "total": 0}

    def script(self, key: str, *replies: Reply) -> None:
        self.scripted.setdefault(key, []).extend(replies)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path != "/oauth/token"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        if request.url.path == "/oauth/token":
            return self._token(request)
        key = f"{request.method} {request.url.path}"
        with self.lock:
            queue = self.scripted.get(key)
            reply = queue.pop(0) if queue else None
        if reply is not None:
            return _play(reply, request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid_access_tokens:
            return json_response(401, {"statusCode": 401, "message": "Invalid JWT"})
        return json_response(200, self.default_body)

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        with self.lock:
            self.refresh_calls.append(form)
            reply = self.token_replies.pop(0) if self.token_replies else None
        if reply is not None:
            return _play(reply, request)
        return self.exchange(form)

    def exchange(self, form: dict[str, str]) -> httpx.Response:
        """Accept a known refresh token once and return a rotated pair."""
        with self.lock:
            if form.get("refresh_token") not in self.valid_refresh_tokens:
                return json_response(400, {"error": "invalid_grant", "error_description": "used"})
            self.valid_refresh_tokens.discard(form["refresh_token"])
            self.issued += 1
            access, refresh = f"at-unit-{self.issued:06d}-xxxxxxxx", f"rt-unit-{self.issued:06d}-xxxxxxxx"
            self.valid_refresh_tokens.add(refresh)
            self.valid_access_tokens.add(access)
        body = {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
            "userType": "Location",
            "locationId": LOCATION_ID,
        }
        return json_response(200, body)


class FakeMemberstack:
    """Scripted Memberstack API with the same queueing as ``FakeGoHighLevel``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[httpx.Request] = []
        self.scripted: dict[str, list[Reply]] = {}

    def script(self, key: str, *replies: Reply) -> None:
        self.scripted.setdefault(key, []).extend(replies)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            queue = self.scripted.get(f"{request.method} {request.url.path}")
            reply = queue.pop(0) if queue else None
        if reply is None:
            return json_response(404, {"code": "generic-message", "message": "no scripted reply"})
        return _play(reply, request)

    def calls(self, key: str) -> list[httpx.Request]:
        return [r for r in self.requests if f"{r.method} {r.url.path}" == key]


def _play(reply: Reply, request: httpx.Request) -> httpx.Response:
    if isinstance(reply, BaseException):
        raise reply
    if callable(reply):
        return reply(request)
    status, body = reply
    if isinstance(body, (bytes, str)):
        return httpx.Response(status, content=body)
    return json_response(status, body)
