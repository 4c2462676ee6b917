"""HTTP plumbing shared by both hooks: base URLs, httpx clients, routes, retries and safe error details.

Retries use tenacity: exponential backoff with full jitter (a uniform wait between 0 and
``min(max_delay, base * 2**attempt)``) on HTTP 429, 5xx and transport errors, or exactly the
``Retry-After`` value when the response has one. A write that is not idempotent is retried only when
the server cannot have applied it: on 429, and when the connection was never established.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import tenacity

from ghl_memberstack import __version__
from ghl_memberstack.limits import SlidingWindowLimiter
from ghl_memberstack.settings import Settings

USER_AGENT = f"ghl-memberstack-sync/{__version__}"

T = TypeVar("T")
R = TypeVar("R")

# Transport errors raised before any request byte reached the server.
NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Transport errors that retrying cannot fix.
PERMANENT_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)


def quiet_http_loggers() -> None:
    """Raise the ``httpx`` and ``httpcore`` loggers to WARNING, because httpx logs full URLs at INFO."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


def resolve_base_url(host: str | None, port: int | None, default: str) -> str:
    """Return ``scheme://host[:port]`` from a connection's host and port.

    An empty host means ``default``, and a host without a scheme means https.

    :raises ValueError: the host has a path, query or an unsupported scheme.
    """
    text = (host or "").strip().rstrip("/")
    if not text:
        return default
    if "://" not in text:
        text = "https://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Host {host!r} is not a valid http(s) base URL; use scheme://host[:port].")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"Host {host!r} must be scheme://host[:port], without a path or query.")
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}"


def build_client(
    base_url: str,
    *,
    settings: Settings,
    headers: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """Return a thread-safe ``httpx.Client`` with the project's timeouts, user agent and pool size."""
    quiet_http_loggers()
    timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
    workers = max(settings.ghl_max_workers, settings.memberstack_max_workers)
    limits = httpx.Limits(max_connections=workers + 4, max_keepalive_connections=workers + 4)
    return httpx.Client(
        base_url=base_url,
        timeout=timeout,
        limits=limits,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
        transport=transport,
        follow_redirects=False,
    )


@dataclasses.dataclass(frozen=True)
class Route:
    """An API route: the HTTP method and the path template that errors and logs show."""

    method: str
    template: str
    # False for writes that must not be sent twice (creates); see the module docstring.
    idempotent: bool = True

    def path(self, **params: Any) -> str:
        """Return the path with each ``{name}`` replaced by its percent-encoded value."""
        quoted = {key: urllib.parse.quote(str(value), safe="") for key, value in params.items()}
        return self.template.format(**quoted)

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


@dataclasses.dataclass
class Outcome:
    """The final result of a request after retries: a response, or the transport error that ended it."""

    response: httpx.Response | None
    error: httpx.TransportError | None
    attempts: int

    @property
    def outcome_unknown(self) -> bool:
        """Whether the server may have applied the request although the client saw a failure."""
        if self.error is not None:
            return not isinstance(self.error, NOT_SENT_ERRORS)
        return self.response is not None and self.response.status_code >= 500


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Return the ``Retry-After`` delay in seconds (number or HTTP date), or None when absent."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def full_jitter_delay(attempt: int, settings: Settings) -> float:
    """Return a uniform random wait in ``[0, min(max_delay, base * 2**(attempt - 1))]`` seconds."""
    ceiling = min(settings.retry_max_delay_s, settings.retry_base_delay_s * 2 ** max(0, attempt - 1))
    return random.uniform(0.0, ceiling)


def is_retryable_status(status: int) -> bool:
    """Return whether an HTTP status is worth retrying: 429 and every 5xx."""
    return status == 429 or status >= 500


class RequestCounter:
    """Thread-safe count of sent requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def increment(self) -> None:
        """Add one sent request."""
        with self._lock:
            self.value += 1


@dataclasses.dataclass
class RetryPolicy:
    """Retry parameters of one hook: settings, sleep function (tests pass a fake) and logger."""

    settings: Settings
    log: logging.Logger
    api_name: str
    conn_id: str
    sleep: Callable[[float], None] = time.sleep

    def wait_seconds(self, retry_state: tenacity.RetryCallState) -> float:
        """Return ``Retry-After`` when the last response had it, else a full-jitter backoff delay."""
        outcome = retry_state.outcome
        if outcome is not None and not outcome.failed:
            delay = retry_after_seconds(outcome.result())
            if delay is not None:
                return min(delay, self.settings.retry_after_max_s)
        return full_jitter_delay(retry_state.attempt_number, self.settings)


def send_with_retries(
    client: httpx.Client,
    route: Route,
    path: str,
    *,
    policy: RetryPolicy,
    limiter: SlidingWindowLimiter,
    build_headers: Callable[[], dict[str, str]],
    counter: RequestCounter,
    on_response: Callable[[httpx.Response], None] | None = None,
    on_rate_limited: Callable[[httpx.Response], None] | None = None,
    **request_kwargs: Any,
) -> Outcome:
    """Send one request within the limiter, retrying 429, 5xx and transport errors.

    ``build_headers`` runs before every attempt, so an attempt after a token refresh sends the new
    token. The returned outcome contains the last response (any status) or the last transport error.
    """
    attempts = 0

    def attempt() -> httpx.Response:
        nonlocal attempts
        attempts += 1
        headers = build_headers()
        with limiter.slot():
            counter.increment()
            response = client.request(route.method, path, headers=headers, **request_kwargs)
            # Read the body inside the slot, so the slot covers the whole exchange.
            response.read()
            if on_response is not None:
                on_response(response)
        if response.status_code == 429 and on_rate_limited is not None:
            on_rate_limited(response)
        return response

    def should_retry(retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None:
            return False
        if outcome.failed:
            error = outcome.exception()
            if not isinstance(error, httpx.TransportError) or isinstance(error, PERMANENT_TRANSPORT_ERRORS):
                return False
            return route.idempotent or isinstance(error, NOT_SENT_ERRORS)
        status = outcome.result().status_code
        if status == 429:
            return True
        return status >= 500 and route.idempotent

    def log_retry(retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        reason = (
            type(outcome.exception()).__name__
            if outcome is not None and outcome.failed
            else f"HTTP {outcome.result().status_code}"
            if outcome is not None
            else "an unknown error"
        )
        policy.log.warning(
            "%s connection %r: %s returned %s; retry %d of %d in %.2f s.",
            policy.api_name,
            policy.conn_id,
            route,
            reason,
            retry_state.attempt_number,
            policy.settings.retry_attempts - 1,
            retry_state.next_action.sleep if retry_state.next_action else 0.0,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.settings.retry_attempts),
        wait=policy.wait_seconds,
        retry=should_retry,
        before_sleep=log_retry,
        sleep=policy.sleep,
        reraise=True,
        retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
    )
    try:
        response = retrying(attempt)
    except httpx.TransportError as error:
        return Outcome(response=None, error=error, attempts=attempts)
    return Outcome(response=response, error=None, attempts=attempts)


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_\-.=/+]{24,}")
_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")


def redact(text: str, limit: int = 200) -> str:
    """Return ``text`` with emails, phone numbers and token-like strings replaced, cut to ``limit``."""
    text = _EMAIL.sub("<email>", text)
    text = _LONG_TOKEN.sub("<redacted>", text)
    text = _PHONE.sub("<number>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_detail(response: httpx.Response) -> str:
    """Return the server's error message with personal values and secrets redacted, or ""."""
    try:
        body = response.json()
    except ValueError:
        return redact(response.text) if response.text and len(response.text) < 500 else ""
    return redact(_message_from_body(body))


def _message_from_body(body: Any) -> str:
    if isinstance(body, str):
        return body
    if not isinstance(body, dict):
        return ""
    for key in ("message", "error_description", "error", "detail"):
        value = body.get(key)
        if isinstance(value, list):
            return ", ".join(str(item) for item in value)
        if isinstance(value, dict):
            return _message_from_body(value)
        if value:
            return str(value)
    return ""


def map_in_threads(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    max_workers: int,
    thread_name_prefix: str,
    return_exceptions: bool = False,
) -> list[R | BaseException]:
    """Apply ``fn`` to every item in a thread pool and return the results in input order.

    The hook's limiter bounds the request rate, so more workers only hide latency. Without
    ``return_exceptions``, the first failure in input order is raised after pending items are
    cancelled. With it, each failed item's exception takes its place in the result list.
    """
    materialised = list(items)
    if not materialised:
        return []
    workers = max(1, min(max_workers, len(materialised)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix)
    try:
        futures = [pool.submit(fn, item) for item in materialised]
        results: list[R | BaseException] = []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as error:  # noqa: BLE001 - returned or re-raised below, never dropped
                if not return_exceptions:
                    raise
                results.append(error)
        return results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
