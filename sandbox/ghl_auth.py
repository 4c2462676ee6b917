"""GHL credentials: Private Integration Tokens, OAuth grants with rotating refresh tokens, limits."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from sandbox.limits import BinnedSlidingWindow, SlidingWindow

BURST_WINDOW_S = 10.0
DAILY_WINDOW_S = 86_400.0
REFRESH_TOKEN_LIFETIME_MS = 365 * 86_400 * 1000
# Old access tokens stay valid until they expire; a grant keeps at most this many.
MAX_ACCESS_TOKENS_PER_GRANT = 20

ALL_SCOPES = (
    "contacts.readonly", "contacts.write", "locations.readonly", "locations/customFields.readonly",
    "locations/tags.readonly", "locations/tasks.readonly", "calendars/events.readonly",
    "calendars/events.write",
)


@dataclass
class Grant:
    """One OAuth installation of a client on a location; its refresh token rotates on use."""

    client_id: str
    location_id: str
    refresh_token: str
    refresh_expires_ms: int
    scope: str | None = None
    access_tokens: dict[str, int] = field(default_factory=dict)

    def scopes(self) -> frozenset[str]:
        """Return the granted scopes; a grant without a scope string has them all."""
        return frozenset((self.scope or " ".join(ALL_SCOPES)).split())

    def dump(self) -> dict[str, Any]:
        """Return the grant in the seed format."""
        entry: dict[str, Any] = {
            "client_id": self.client_id, "refresh_token": self.refresh_token,
            "refresh_token_expires_at": self.refresh_expires_ms,
            "access_tokens": [{"token": token, "expires_at": expires}
                              for token, expires in self.access_tokens.items()],
        }
        if self.scope is not None:
            entry["scope"] = self.scope
        return entry


@dataclass(frozen=True)
class Identity:
    """The location and OAuth client of a valid bearer token, with its scopes."""

    location_id: str
    client_id: str | None
    scopes: frozenset[str] | None

    @property
    def bucket(self) -> tuple[str, str]:
        """Return the bucket key: all PITs of a location share one, each OAuth client has its own."""
        return (self.location_id, f"oauth:{self.client_id}" if self.client_id else "pit")


class TokenError(Exception):
    """A bearer token is missing, unknown or expired; `message` is the 401 text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Credentials:
    """Registry of every OAuth client, token and authorization code of the GHL emulator."""

    def __init__(self) -> None:
        self.clients: dict[str, str] = {}
        self.pits: dict[str, str] = {}
        self.grants: list[Grant] = []
        self._by_refresh: dict[str, Grant] = {}
        self._by_access: dict[str, Grant] = {}
        # Authorization codes: code -> (client_id, location_id, scope or None).
        self.codes: dict[str, tuple[str, str, str | None]] = {}

    def add_grant(self, grant: Grant) -> None:
        """Register a grant with its current tokens."""
        self.grants.append(grant)
        self._by_refresh[grant.refresh_token] = grant
        for token in grant.access_tokens:
            self._by_access[token] = grant

    def identify(self, authorization: str | None, now_ms: int) -> Identity:
        """Resolve an `Authorization: Bearer` header value.

        Raises TokenError for a missing, unknown or expired token.
        """
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenError("Invalid token: access token is invalid")
        location_id = self.pits.get(token)
        if location_id is not None:
            return Identity(location_id, None, None)
        grant = self._by_access.get(token)
        if grant is None:
            raise TokenError("Invalid token: access token is invalid")
        if grant.access_tokens[token] <= now_ms:
            raise TokenError("Invalid JWT")
        return Identity(grant.location_id, grant.client_id, grant.scopes())

    def grant_for_refresh(self, refresh_token: str, client_id: str, now_ms: int) -> Grant | None:
        """Return the live grant whose current refresh token this is, for this client."""
        grant = self._by_refresh.get(refresh_token)
        if grant is None or grant.client_id != client_id or grant.refresh_expires_ms <= now_ms:
            return None
        return grant

    def rotate(self, grant: Grant, now_ms: int, ttl_s: int) -> tuple[str, str]:
        """Issue a new access and refresh token; the consumed refresh token stops working."""
        self._by_refresh.pop(grant.refresh_token, None)
        grant.refresh_token = "sbx-rt-" + secrets.token_urlsafe(24)
        grant.refresh_expires_ms = now_ms + REFRESH_TOKEN_LIFETIME_MS
        self._by_refresh[grant.refresh_token] = grant
        access_token = "sbx-at-" + secrets.token_urlsafe(32)
        grant.access_tokens[access_token] = now_ms + ttl_s * 1000
        self._by_access[access_token] = grant
        while len(grant.access_tokens) > MAX_ACCESS_TOKENS_PER_GRANT:
            oldest = next(iter(grant.access_tokens))
            del grant.access_tokens[oldest]
            self._by_access.pop(oldest, None)
        return access_token, grant.refresh_token

    def redeem_code(self, code: str, client_id: str, now_ms: int) -> Grant | None:
        """Turn a single-use authorization code into a new grant, or return None if it is invalid."""
        entry = self.codes.get(code)
        if entry is None or entry[0] != client_id:
            return None
        del self.codes[code]
        _, location_id, scope = entry
        grant = Grant(client_id, location_id, refresh_token="", refresh_expires_ms=now_ms, scope=scope)
        self.add_grant(grant)
        return grant


class _Bucket:
    def __init__(self) -> None:
        self.burst = SlidingWindow(BURST_WINDOW_S)
        self.daily = BinnedSlidingWindow(DAILY_WINDOW_S)


@dataclass(frozen=True)
class LimitState:
    """Limits and remaining requests of one bucket, as the five X-RateLimit-* headers carry them."""

    burst_limit: int
    burst_remaining: int
    daily_limit: int
    daily_remaining: int

    def headers(self) -> list[tuple[str, str]]:
        """Return the X-RateLimit-* headers."""
        return [
            ("X-RateLimit-Limit-Daily", str(self.daily_limit)),
            ("X-RateLimit-Daily-Remaining", str(max(0, self.daily_remaining))),
            ("X-RateLimit-Interval-Milliseconds", str(int(BURST_WINDOW_S * 1000))),
            ("X-RateLimit-Max", str(self.burst_limit)),
            ("X-RateLimit-Remaining", str(max(0, self.burst_remaining))),
        ]


class RateLimiter:
    """Burst and daily sliding windows per bucket; rejected requests are not counted."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _bucket(self, key: tuple[str, str]) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        return bucket

    def peek(self, key: tuple[str, str], now: float, burst_limit: int, daily_limit: int) -> LimitState:
        """Return a bucket's state without counting a request."""
        bucket = self._bucket(key)
        return LimitState(burst_limit, burst_limit - bucket.burst.count(now),
                          daily_limit, daily_limit - bucket.daily.count(now))

    def admit(self, key: tuple[str, str], now: float, burst_limit: int, daily_limit: int,
              enforce: bool) -> tuple[bool, LimitState]:
        """Count a request unless a window is full (and `enforce` is on); return whether it passed."""
        bucket = self._bucket(key)
        burst_used = bucket.burst.count(now)
        daily_used = bucket.daily.count(now)
        if enforce and (burst_used >= burst_limit or daily_used >= daily_limit):
            return False, LimitState(burst_limit, burst_limit - burst_used, daily_limit, daily_limit - daily_used)
        bucket.burst.add(now)
        bucket.daily.add(now)
        return True, LimitState(burst_limit, burst_limit - burst_used - 1, daily_limit, daily_limit - daily_used - 1)
