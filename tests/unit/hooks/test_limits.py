"""Rate limiters: window accounting, header-driven limits, other clients' usage and daily budget."""

from __future__ import annotations

import threading
import time

import pytest
from hook_fakes import fast_settings

from ghl_memberstack import limits
from ghl_memberstack.exceptions import GoHighLevelBudgetExhaustedError
from ghl_memberstack.limits import GoHighLevelLimiter, SlidingWindowLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_delay_until_oldest_expires():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 10.0, clock=clock)
    for _ in range(2):
        limiter.acquire()
        limiter.release()
        clock.now += 1

    with limiter._condition:
        assert limiter._delay_locked(clock.now) == pytest.approx(8.0)
    clock.now += 8
    with limiter._condition:
        assert limiter._delay_locked(clock.now) == 0.0


def test_in_flight_requests_count():
    limiter = SlidingWindowLimiter(2, 10.0, clock=FakeClock())
    limiter.acquire()
    limiter.acquire()

    with limiter._condition:
        assert limiter._delay_locked(limiter._clock()) is None  # only a release frees a slot
    assert limiter.in_window() == 2


def test_window_counts_from_completion():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 10.0, clock=clock)
    limiter.acquire()
    clock.now += 5  # a slow response
    limiter.release()
    clock.now += 6  # 11 s after the send, 6 s after the response

    with limiter._condition:
        assert limiter._delay_locked(clock.now) == pytest.approx(4.0)


def test_blocked_thread_wakes_on_release():
    limiter = SlidingWindowLimiter(1, 0.2)
    limiter.acquire()
    acquired = threading.Event()

    def second() -> None:
        limiter.acquire()
        acquired.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.05)
    assert not acquired.is_set()
    limiter.release()
    thread.join(timeout=2)

    assert acquired.is_set()


def test_pause_blocks_new_requests():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(10, 1.0, clock=clock)
    limiter.pause(3.0)

    with limiter._condition:
        assert limiter._delay_locked(clock.now) == pytest.approx(3.0)


def test_ghl_headers_set_limit_and_interval():
    limiter = GoHighLevelLimiter("L1", fast_settings(ghl_rate_limit_max=100, ghl_rate_limit_interval_s=10))
    limiter.update_from_headers({"X-RateLimit-Max": "40", "X-RateLimit-Interval-Milliseconds": "2000"})

    assert limiter.max_requests == 40
    assert limiter.interval_s == 2.0


def test_ghl_other_clients_reduce_capacity():
    clock = FakeClock()
    limiter = GoHighLevelLimiter(
        "L1", fast_settings(ghl_rate_limit_max=10, ghl_rate_limit_interval_s=10), clock=clock
    )
    limiter.acquire()
    # The server counted 7 requests in its window; this process sent only 1 of them.
    limiter.update_from_headers({"X-RateLimit-Max": "10", "X-RateLimit-Remaining": "3"})
    limiter.release()

    with limiter._condition:
        assert limiter._capacity_locked(clock.now) == 4
    clock.now += 10.5  # the other clients' requests have left the window
    with limiter._condition:
        assert limiter._capacity_locked(clock.now) == 10


def test_ghl_daily_budget_share():
    limiter = GoHighLevelLimiter("L1", fast_settings(ghl_daily_budget_share=0.8))
    limiter.update_from_headers({"X-RateLimit-Limit-Daily": "1000", "X-RateLimit-Daily-Remaining": "202"})

    limiter.acquire()
    limiter.release()
    limiter.acquire()
    limiter.release()
    with pytest.raises(GoHighLevelBudgetExhaustedError) as raised:
        limiter.acquire()

    assert raised.value.reserve == 200
    assert "GHL_DAILY_BUDGET_SHARE=0.8" in str(raised.value)
    assert limiter.daily_remaining_estimate() == 200


def test_ghl_daily_budget_without_headers_counts_own_requests():
    limiter = GoHighLevelLimiter("L1", fast_settings(ghl_daily_limit=10, ghl_daily_budget_share=0.5))
    for _ in range(5):
        limiter.acquire()
        limiter.release()

    with pytest.raises(GoHighLevelBudgetExhaustedError):
        limiter.acquire()


def test_registry_shares_limiters():
    settings = fast_settings()

    assert limits.ghl_limiter("L1", settings) is limits.ghl_limiter("L1", settings)
    assert limits.ghl_limiter("L1", settings) is not limits.ghl_limiter("L2", settings)
    assert limits.memberstack_limiter(settings) is limits.memberstack_limiter(settings)


@pytest.mark.parametrize(
    ("rate", "window"),
    [pytest.param(25.0, (25, 1.0), id="whole"), pytest.param(12.5, (25, 2.0), id="fractional")],
)
def test_memberstack_rate_window(rate, window):
    limiter = limits.memberstack_limiter(fast_settings(memberstack_rate_limit_per_s=rate))

    assert (limiter.max_requests, limiter.interval_s) == window
