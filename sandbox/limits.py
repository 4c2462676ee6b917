"""Sliding-window request counters for the emulated rate limits."""

from __future__ import annotations

from collections import deque


class SlidingWindow:
    """Count accepted requests in the last `window_s` seconds, exactly.

    Memory grows with the limit, so use it for short windows (the GHL burst window, the
    Memberstack one-second window).
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def count(self, now: float) -> int:
        """Return how many requests fall inside the window ending at `now`."""
        cutoff = now - self.window_s
        times = self._times
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times)

    def add(self, now: float) -> None:
        """Record an accepted request at `now`."""
        self._times.append(now)


class BinnedSlidingWindow:
    """Count accepted requests in the last `window_s` seconds, in one-second bins.

    A request leaves the window up to one second late. That keeps a day-long window at most
    86,400 bins whatever the request count.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._bins: deque[list[int]] = deque()
        self._total = 0

    def count(self, now: float) -> int:
        """Return how many requests fall inside the window ending at `now`."""
        cutoff = int(now - self.window_s)
        bins = self._bins
        while bins and bins[0][0] <= cutoff:
            self._total -= bins.popleft()[1]
        return self._total

    def add(self, now: float) -> None:
        """Record an accepted request at `now`."""
        second = int(now)
        if self._bins and self._bins[-1][0] == second:
            self._bins[-1][1] += 1
        else:
            self._bins.append([second, 1])
        self._total += 1
