"""Client-side rate limiters: one per GoHighLevel location, and one Memberstack limiter per process.

Both count a request from the moment it is sent until ``interval`` seconds after its response
arrived. The server counts a request when it arrives, which lies between those two moments, so the
server never counts more requests in a window than this limiter allows, whether it uses a fixed or a
sliding window.

GoHighLevel allows 100 requests per 10 s and 200,000 per day for each app and location, and reports
its counters in ``X-RateLimit-*`` headers. The GHL limiter adopts the limit and interval those headers
give, subtracts the requests of other clients that the ``X-RateLimit-Remaining`` counter reveals, and
raises ``GoHighLevelBudgetExhaustedError`` before the daily counter falls to the share reserved for
other clients (``GHL_DAILY_BUDGET_SHARE``).

Memberstack allows 25 requests per second per client address and sends no rate-limit headers, so
its limiter is a fixed per-process budget. Load tasks also take a slot of the Airflow pool
``memberstack_api`` so that processes on one address do not add up past the limit.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from ghl_memberstack.exceptions import GoHighLevelBudgetExhaustedError
from ghl_memberstack.settings import Settings

log = logging.getLogger(__name__)


class SlidingWindowLimiter:
    """Allow at most ``max_requests`` in any ``interval_s`` seconds, across all threads of a process.

    A request occupies a slot from ``acquire`` until ``interval_s`` after ``release``.
    """

    def __init__(
        self, max_requests: int, interval_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._condition = threading.Condition()
        self._clock = clock
        self._completions: collections.deque[float] = collections.deque()
        self._in_flight = 0
        self._paused_until = 0.0
        self.max_requests = max_requests
        self.interval_s = interval_s

    def configure(self, max_requests: int, interval_s: float) -> None:
        """Change the limit, for example when the server reports different values."""
        with self._condition:
            self.max_requests = max(1, int(max_requests))
            self.interval_s = float(interval_s)
            self._condition.notify_all()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one request slot for the duration of the ``with`` block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def acquire(self) -> None:
        """Block until a request may be sent, then count it as in flight."""
        with self._condition:
            while True:
                now = self._clock()
                self._check_budget_locked(now)
                delay = self._delay_locked(now)
                if delay is not None and delay <= 0:
                    self._in_flight += 1
                    self._on_send_locked()
                    return
                self._condition.wait(timeout=delay)

    def release(self) -> None:
        """Record that the response of an acquired request arrived (or that it failed)."""
        with self._condition:
            self._in_flight = max(0, self._in_flight - 1)
            self._completions.append(self._clock())
            self._condition.notify_all()

    def pause(self, seconds: float) -> None:
        """Send no request for ``seconds``, for example after an HTTP 429."""
        with self._condition:
            self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))
            self._condition.notify_all()

    def in_window(self) -> int:
        """Return the number of requests currently counted against the limit."""
        with self._condition:
            self._expire_locked(self._clock())
            return len(self._completions) + self._in_flight

    def _capacity_locked(self, now: float) -> int:
        return self.max_requests

    def _check_budget_locked(self, now: float) -> None:
        """Raise before sending when a budget other than the window is used up."""

    def _on_send_locked(self) -> None:
        """Count a request that is about to be sent."""

    def _expire_locked(self, now: float) -> None:
        horizon = now - self.interval_s
        while self._completions and self._completions[0] <= horizon:
            self._completions.popleft()

    def _delay_locked(self, now: float) -> float | None:
        """Return seconds to wait before the next send, 0 to send now, or None to wait for a release."""
        if now < self._paused_until:
            return self._paused_until - now
        self._expire_locked(now)
        capacity = max(1, self._capacity_locked(now))
        used = len(self._completions) + self._in_flight
        if used < capacity:
            return 0.0
        to_expire = used - capacity + 1
        if to_expire > len(self._completions):
            # Only in-flight requests fill the window; release() wakes the waiters.
            return None
        return max(self._completions[to_expire - 1] + self.interval_s - now, 0.001)


class GoHighLevelLimiter(SlidingWindowLimiter):
    """Burst and daily limiter of one GoHighLevel location, driven by the ``X-RateLimit-*`` headers."""

    def __init__(
        self, location_id: str, settings: Settings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(settings.ghl_rate_limit_max, settings.ghl_rate_limit_interval_s, clock=clock)
        self.location_id = location_id
        self.daily_limit = settings.ghl_daily_limit
        self.daily_share = settings.ghl_daily_budget_share
        self._daily_remaining: int | None = None
        self._sent_since_daily_header = 0
        self._external_used = 0
        self._external_observed_at = float("-inf")
        self._own_day = _utc_day()
        self._own_sent_today = 0

    @property
    def daily_reserve(self) -> int:
        """Requests of the daily limit kept for other clients of the location."""
        return round(self.daily_limit * (1 - self.daily_share))

    def daily_remaining_estimate(self) -> int | None:
        """Return the last reported daily remaining minus requests sent since, or None if unknown."""
        with self._condition:
            if self._daily_remaining is None:
                return None
            return self._daily_remaining - self._sent_since_daily_header

    def update_from_headers(self, headers: Mapping[str, str]) -> None:
        """Adopt the limits and counters of one GHL response, before its slot is released."""
        maximum = _int_header(headers, "X-RateLimit-Max")
        interval_ms = _int_header(headers, "X-RateLimit-Interval-Milliseconds")
        remaining = _int_header(headers, "X-RateLimit-Remaining")
        daily_limit = _int_header(headers, "X-RateLimit-Limit-Daily")
        daily_remaining = _int_header(headers, "X-RateLimit-Daily-Remaining")
        with self._condition:
            if maximum and maximum > 0:
                self.max_requests = maximum
            if interval_ms and interval_ms > 0:
                self.interval_s = interval_ms / 1000
            if daily_limit and daily_limit > 0:
                self.daily_limit = daily_limit
            if daily_remaining is not None:
                self._daily_remaining = daily_remaining
                self._sent_since_daily_header = 0
            if remaining is not None:
                self._observe_remaining_locked(remaining)
            self._condition.notify_all()

    def _observe_remaining_locked(self, remaining: int) -> None:
        """Estimate requests of other clients: the server's count minus the requests of this process."""
        now = self._clock()
        self._expire_locked(now)
        own = len(self._completions) + self._in_flight
        server_used = self.max_requests - remaining
        self._external_used = max(0, server_used - own)
        self._external_observed_at = now

    def _capacity_locked(self, now: float) -> int:
        # Other clients' requests leave the server window within one interval.
        external = self._external_used if now - self._external_observed_at < self.interval_s else 0
        return self.max_requests - external

    def _check_budget_locked(self, now: float) -> None:
        if self._own_day != _utc_day():
            self._own_day, self._own_sent_today = _utc_day(), 0
        if self._daily_remaining is not None:
            remaining = self._daily_remaining - self._sent_since_daily_header
        else:
            # Before the first response with headers, count this process's own requests.
            remaining = self.daily_limit - self._own_sent_today
        if remaining <= self.daily_reserve:
            raise GoHighLevelBudgetExhaustedError(
                f"Daily request budget exhausted for GoHighLevel location {self.location_id!r}: about "
                f"{remaining} of {self.daily_limit} daily requests remain, and GHL_DAILY_BUDGET_SHARE="
                f"{self.daily_share:g} keeps {self.daily_reserve} for other clients. The run stops here; "
                f"the next run continues after the daily counter resets, or raise the share.",
                location_id=self.location_id,
                daily_remaining=remaining,
                reserve=self.daily_reserve,
            )

    def _on_send_locked(self) -> None:
        self._sent_since_daily_header += 1
        self._own_sent_today += 1


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        log.warning("Ignoring the non-numeric rate-limit header %s.", name)
        return None


def _utc_day() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


_registry_lock = threading.Lock()
_ghl_limiters: dict[str, GoHighLevelLimiter] = {}
_memberstack_limiter: SlidingWindowLimiter | None = None


def ghl_limiter(location_id: str, settings: Settings) -> GoHighLevelLimiter:
    """Return this process's limiter for ``location_id``, shared by every hook of that location."""
    with _registry_lock:
        limiter = _ghl_limiters.get(location_id)
        if limiter is None:
            limiter = _ghl_limiters[location_id] = GoHighLevelLimiter(location_id, settings)
        return limiter


def memberstack_limiter(settings: Settings) -> SlidingWindowLimiter:
    """Return the process-wide Memberstack limiter, set to ``settings.memberstack_rate_limit_per_s``.

    The rate is in requests per second. A fractional rate becomes a whole number of requests per
    a proportionally longer window, so 12.5/s becomes 25 requests per 2 s.
    """
    global _memberstack_limiter
    max_requests, interval_s = _per_second_window(settings.memberstack_rate_limit_per_s)
    with _registry_lock:
        if _memberstack_limiter is None:
            _memberstack_limiter = SlidingWindowLimiter(max_requests, interval_s)
        elif (_memberstack_limiter.max_requests, _memberstack_limiter.interval_s) != (
            max_requests,
            interval_s,
        ):
            _memberstack_limiter.configure(max_requests, interval_s)
        return _memberstack_limiter


def _per_second_window(rate_per_s: float) -> tuple[int, float]:
    if float(rate_per_s).is_integer():
        return int(rate_per_s), 1.0
    max_requests = max(1, round(rate_per_s * 2))
    return max_requests, max_requests / rate_per_s


def reset_limiters() -> None:
    """Forget every limiter of this process, so tests and benchmarks start from empty windows."""
    global _memberstack_limiter
    with _registry_lock:
        _ghl_limiters.clear()
        _memberstack_limiter = None
