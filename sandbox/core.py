"""Machinery shared by both emulators: clock, config, stats, fault injection, routing and replies."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import socket
import string
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import unquote

from starlette.datastructures import Headers, QueryParams

log = logging.getLogger(__name__)

FAULT_KINDS = ("429", "500", "502", "503", "reset", "timeout", "timeout_after")
# A fault of these kinds happens before the request is processed, so state is untouched.
BEFORE_PROCESSING_FAULTS = ("429", "500", "502", "503", "reset", "timeout")

DEFAULT_CONFIG: dict[str, Any] = {
    "rate_limits": True,
    "rate_limit_scale": 1.0,
    "ghl_burst_limit": 100,
    "ghl_daily_limit": 200_000,
    "memberstack_rate": 25,
    "latency_ms": 0,
    "access_token_ttl_s": 86399,
    "search_lag_ms": 0,
    "random_seed": 0,
    "timeout_hold_s": 30.0,
    "faults": {},
    "child_changes_bump_contact": False,
    "error_after_processing": {},
    "search_repeat_cursor": 0,
    "fault_retry_after_s": None,
}


# ---------------------------------------------------------------------------------------------
# Time


class Clock:
    """Wall clock with an offset that tests move forward, and an optional freeze."""

    def __init__(self) -> None:
        self._offset_s = 0.0
        self._frozen_at: float | None = None

    def now(self) -> float:
        """Return the sandbox time in epoch seconds."""
        base = self._frozen_at if self._frozen_at is not None else time.time()
        return base + self._offset_s

    def now_ms(self) -> int:
        """Return the sandbox time in epoch milliseconds."""
        return int(self.now() * 1000)

    def advance(self, seconds: float) -> None:
        """Move the clock forward; token expiry and rate windows follow it."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance_s must be a finite number >= 0, got {seconds!r}")
        self._offset_s += seconds

    def set_frozen(self, frozen: bool) -> None:
        """Stop or restart the passing of real time; the current sandbox time is kept."""
        if frozen and self._frozen_at is None:
            self._frozen_at = time.time()
        elif not frozen and self._frozen_at is not None:
            self._offset_s += self._frozen_at - time.time()
            self._frozen_at = None

    def describe(self) -> dict[str, Any]:
        """Return the clock as the clock route reports it."""
        now = self.now()
        return {
            "now": format_iso(now),
            "now_ms": int(now * 1000),
            "offset_s": round(self._offset_s, 3),
            "frozen": self._frozen_at is not None,
        }


def format_iso(epoch_s: float) -> str:
    """Format epoch seconds as the APIs do: `2024-03-01T09:15:00.000Z`."""
    moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@lru_cache(maxsize=200_000)
def parse_iso_ms(text: str) -> int:
    """Parse an ISO 8601 date or date-time into epoch milliseconds; a missing zone means UTC.

    Raises ValueError for text that is not ISO 8601.
    """
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


# ---------------------------------------------------------------------------------------------
# Config


class ConfigError(ValueError):
    """A config update names an unknown key or gives a value of the wrong type or range."""


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    return value


def _check_number(key: str, value: Any, *, minimum: float, integer: bool = False,
                  exclusive: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"config key {key!r} must be a whole number, got {value!r}")
    too_small = value <= minimum if exclusive else value < minimum
    if too_small:
        relation = ">" if exclusive else ">="
        raise ConfigError(f"config key {key!r} must be {relation} {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def _check_faults(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(f"config key 'faults' must be an object of kind -> probability, got {value!r}")
    faults: dict[str, float] = {}
    for kind, probability in value.items():
        if kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault kind {kind!r}; known kinds: {', '.join(FAULT_KINDS)}")
        faults[kind] = _check_number(f"faults.{kind}", probability, minimum=0.0)
        if faults[kind] > 1:
            raise ConfigError(f"fault probability for {kind!r} must be at most 1, got {probability!r}")
    if sum(faults.values()) > 1 + 1e-9:
        raise ConfigError("fault probabilities must add up to at most 1")
    return faults


def _check_route_counts(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ConfigError("config key 'error_after_processing' must be an object of route -> count, "
                          f"such as {{\"POST /members\": 1}}, got {value!r}")
    counts: dict[str, int] = {}
    for route, count in value.items():
        if not re.fullmatch(r"[A-Z]+ /\S*", route):
            raise ConfigError(f"error_after_processing: {route!r} is not a route key such as 'POST /members'")
        counts[route] = _check_number(f"error_after_processing.{route}", count, minimum=0, integer=True)
    return counts


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "rate_limits": _check_bool,
    "child_changes_bump_contact": _check_bool,
    "rate_limit_scale": lambda k, v: _check_number(k, v, minimum=0.0, exclusive=True),
    "ghl_burst_limit": lambda k, v: _check_number(k, v, minimum=1, integer=True),
    "ghl_daily_limit": lambda k, v: _check_number(k, v, minimum=1, integer=True),
    "memberstack_rate": lambda k, v: _check_number(k, v, minimum=1, integer=True),
    "latency_ms": lambda k, v: _check_number(k, v, minimum=0.0),
    "access_token_ttl_s": lambda k, v: _check_number(k, v, minimum=1, integer=True),
    "search_lag_ms": lambda k, v: _check_number(k, v, minimum=0.0),
    "random_seed": lambda k, v: _check_number(k, v, minimum=-(2**63), integer=True),
    "timeout_hold_s": lambda k, v: _check_number(k, v, minimum=0.0),
    "faults": lambda k, v: _check_faults(v),
    "error_after_processing": lambda k, v: _check_route_counts(v),
    "search_repeat_cursor": lambda k, v: _check_number(k, v, minimum=0, integer=True),
    "fault_retry_after_s": lambda k, v: None if v is None else _check_number(k, v, minimum=0, integer=True),
}


def validate_config(update: Any) -> dict[str, Any]:
    """Check a config update and return it with normalized values.

    Raises ConfigError naming the first invalid key.
    """
    if not isinstance(update, dict):
        raise ConfigError(f"config must be a JSON object, got {type(update).__name__}")
    normalized = {}
    for key, value in update.items():
        check = _CHECKS.get(key)
        if check is None:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(DEFAULT_CONFIG)}")
        normalized[key] = check(key, value)
    return normalized


def scaled_limit(base: int, scale: float) -> int:
    """Multiply a rate limit by `rate_limit_scale`, never going below one request."""
    return max(1, int(round(base * scale)))


# ---------------------------------------------------------------------------------------------
# Stats, faults, ids


class Stats:
    """Request counts by status and by route template, plus named counters of a server."""

    def __init__(self, counter_groups: dict[str, tuple[str, ...]] | None = None) -> None:
        self._groups = counter_groups or {}
        self.clear()

    def clear(self) -> None:
        """Forget every count."""
        self.total = 0
        self.by_status: Counter[str] = Counter()
        self.by_route: dict[str, Counter[str]] = {}
        self.faults: Counter[str] = Counter()
        self.groups = {name: dict.fromkeys(keys, 0) for name, keys in self._groups.items()}

    def record(self, route_key: str, status: str) -> None:
        """Count one request under its route template and status (a code or a dropped-connection kind)."""
        self.total += 1
        self.by_status[status] += 1
        route_counts = self.by_route.get(route_key)
        if route_counts is None:
            route_counts = self.by_route[route_key] = Counter()
        route_counts[status] += 1

    def count(self, group: str, key: str) -> None:
        """Add one to a named counter, for example `refresh.granted`."""
        self.groups[group][key] += 1

    def snapshot(self) -> dict[str, Any]:
        """Return the counts as the stats route reports them."""
        result: dict[str, Any] = {
            "total": self.total,
            "by_status": dict(self.by_status),
            "by_route": {route: dict(counts) for route, counts in sorted(self.by_route.items())},
            "faults": dict(self.faults),
        }
        for name, counters in self.groups.items():
            result[name] = dict(counters)
        return result


class FaultInjector:
    """Pick injected faults from the configured probabilities with a seeded generator.

    Each request that is eligible for faults draws one number while any probability is above
    zero, so the same `random_seed` and the same request order give the same faults.
    """

    def __init__(self, random_seed: int) -> None:
        self.reseed(random_seed)

    def reseed(self, random_seed: int) -> None:
        """Restart the fault sequence."""
        self._rng = random.Random(f"faults:{random_seed}")

    def draw(self, faults: dict[str, float], allowed: tuple[str, ...]) -> str | None:
        """Return the fault kind for one request, or None.

        A draw that lands on a kind outside `allowed` yields no fault, which keeps the sequence
        of later draws the same whatever the route.
        """
        if not any(probability > 0 for probability in faults.values()):
            return None
        point = self._rng.random()
        cumulative = 0.0
        for kind in FAULT_KINDS:
            cumulative += faults.get(kind, 0.0)
            if point < cumulative:
                return kind if kind in allowed else None
        return None


ALPHANUMERIC = string.ascii_letters + string.digits
LOWER_ALPHANUMERIC = string.ascii_lowercase + string.digits


class IdFactory:
    """Generate ids from a seeded generator, so a rerun from the same seed gives the same ids."""

    def __init__(self, random_seed: int) -> None:
        self.reseed(random_seed)

    def reseed(self, random_seed: int) -> None:
        """Restart the id sequence."""
        self._rng = random.Random(f"ids:{random_seed}")

    def make(self, prefix: str = "", length: int = 20, alphabet: str = ALPHANUMERIC) -> str:
        """Return a new id: `prefix` followed by `length` characters of `alphabet`."""
        return prefix + "".join(self._rng.choice(alphabet) for _ in range(length))


# ---------------------------------------------------------------------------------------------
# Replies, errors, calls


@dataclass
class Reply:
    """An HTTP response before it is sent."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def encode_json(payload: Any) -> bytes:
    """Encode a payload as compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def copy_json(value: Any) -> Any:
    """Return a deep copy of JSON data; a JSON round trip is several times faster than deepcopy."""
    return json.loads(json.dumps(value, ensure_ascii=False))


def json_reply(status: int, payload: Any) -> Reply:
    """Build a JSON reply; the payload is encoded at once, so handlers may pass live state."""
    return Reply(status, encode_json(payload))


def text_reply(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Reply:
    """Build a plain-text reply."""
    return Reply(status, text.encode(), content_type)


class ApiError(Exception):
    """An error reply raised from a handler; the pipeline sends `reply`."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class Call:
    """One request as handlers see it: path parameters, query, headers and body."""

    def __init__(self, scope: dict[str, Any], params: dict[str, str], body: bytes,
                 invalid_json: Callable[[], ApiError]) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.params = params
        self.body = body
        self.headers = Headers(scope=scope)
        self.client_host: str = (scope.get("client") or ("unknown", 0))[0]
        self.auth: Any = None
        self.limit_state: Any = None
        self._invalid_json = invalid_json
        self._json: Any = None
        self._json_parsed = False

    @cached_property
    def query(self) -> QueryParams:
        """Return the query parameters, parsed on first use."""
        return QueryParams(self.scope.get("query_string", b"").decode("latin-1"))

    def json(self, default: Any = None) -> Any:
        """Return the parsed JSON body, `default` when the body is empty.

        Raises the server's ApiError for a body that is not JSON.
        """
        if not self._json_parsed:
            if not self.body.strip():
                self._json = default
            else:
                try:
                    self._json = json.loads(self.body)
                except ValueError:
                    raise self._invalid_json() from None
            self._json_parsed = True
        return self._json

    def base_url(self) -> str:
        """Return `http://host:port` as the client addressed this server."""
        host = self.headers.get("host")
        if not host:
            server = self.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"http://{host}"


# ---------------------------------------------------------------------------------------------
# Routing


Handler = Callable[[Call], Any]


@dataclass(frozen=True)
class Route:
    """One emulated route: method, OpenAPI-style template and handler, with server options."""

    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    options: dict[str, Any]

    @property
    def key(self) -> str:
        """Return the stats key, for example `GET /contacts/{contactId}`."""
        return f"{self.method} {self.template}"


def compile_template(template: str) -> re.Pattern[str]:
    """Turn `/contacts/{contactId}` into a regex with one named group per parameter."""
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", template)
    regex = ""
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            regex += f"(?P<{part[1:-1]}>[^/]+)"
        else:
            regex += re.escape(part)
    return re.compile(f"^{regex}$")


class Router:
    """Match a method and raw path against templates in registration order."""

    def __init__(self) -> None:
        self._routes: dict[str, list[Route]] = {}

    def add(self, method: str, template: str, handler: Handler, *, aliases: tuple[str, ...] = (),
            **options: Any) -> None:
        """Register a route; `aliases` are extra paths counted under the same template."""
        for path in (template, *aliases):
            route = Route(method, template, compile_template(path), handler, options)
            self._routes.setdefault(method, []).append(route)

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
        """Return the route and its decoded path parameters, or None."""
        for route in self._routes.get(method, ()):
            found = route.pattern.match(raw_path)
            if found:
                return route, {name: unquote(value) for name, value in found.groupdict().items()}
        return None


# ---------------------------------------------------------------------------------------------
# Connection control


async def drop_connection(send: Callable[..., Any]) -> None:
    """Close the client connection with a TCP reset, without sending a response.

    uvicorn's `send` is a bound method of its request cycle, and the cycle's `transport` attribute
    is the connection. Under other servers an exception is raised instead, which those servers
    turn into a closed connection or an error response.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionAbortedError("sandbox fault: connection dropped")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            # A zero linger time makes the close send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError, TypeError):
            log.debug("could not set SO_LINGER before dropping a connection")
    transport.abort()
    # Let the server see the lost connection before the handler returns, so it does not try to
    # send a 500 on the closed transport.
    await asyncio.sleep(0)


async def send_reply(send: Callable[..., Any], reply: Reply) -> None:
    """Send a reply over ASGI."""
    headers = [(b"content-type", reply.content_type.encode()),
               (b"content-length", str(len(reply.body)).encode())]
    headers.extend((name.lower().encode(), value.encode()) for name, value in reply.headers)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def read_body(receive: Callable[..., Any]) -> bytes:
    """Read the whole request body from ASGI messages."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
