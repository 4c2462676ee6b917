"""Benchmark: how close the hooks get to the real rate limits without a single HTTP 429.

The script starts the sandbox in a subprocess with its real limits: GoHighLevel allows 100 requests
per 10 s per location and app, and Memberstack 25 requests per second. Every request has 100 ms of
latency. It then sends a burst of GET calls through each hook's ``map_concurrently`` and prints the
achieved rate, the limit and the 429 count. The goal is 0 responses with HTTP 429 and an achieved rate of at least
90 % of each limit.

The achieved rate of a burst includes the first window, in which a sliding window lets ``max``
requests through at once, so it can exceed the limit. "efficiency" compares the measured time with
the minimum ``(ceil(N / max) - 1) * interval`` seconds that N requests need, which does not depend
on the burst size. The limiter counts a request until one interval after its response, so with a
latency L the steady rate is at most ``max / (interval + L)``: 91 % of 25/s at 100 ms.

Usage: ``make bench-limits`` or ``python bench/rate_limits.py [--ghl-calls N] [--memberstack-calls N]``.
1,000 GoHighLevel calls take about 100 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-home-"))

from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook  # noqa: E402
from ghl_memberstack.hooks.memberstack import MemberstackHook  # noqa: E402
from ghl_memberstack.settings import Settings  # noqa: E402
from sandbox import seedgen  # noqa: E402
from sandbox.testing import running_sandbox  # noqa: E402

LATENCY_MS = 100


def define_connections(ghl_url: str, memberstack_url: str) -> None:
    """Point the two bench connections at the sandbox through ``AIRFLOW_CONN_*`` variables."""
    os.environ["AIRFLOW_CONN_BENCH_GHL"] = json.dumps(
        {
            "conn_type": "gohighlevel",
            "host": ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
        }
    )
    os.environ["AIRFLOW_CONN_BENCH_MEMBERSTACK"] = json.dumps(
        {"conn_type": "memberstack", "host": memberstack_url, "password": seedgen.DEMO_MEMBERSTACK_KEY_A}
    )


def run_ghl(sandbox, calls: int, settings: Settings) -> dict:
    """Fetch ``calls`` contacts by id and return the measurements."""
    hook = GoHighLevelHook("bench_ghl", settings=settings)
    contact_ids = [contact["id"] for page in hook.search_contacts(page_limit=500) for contact in page]
    # Start from an empty window, so the listing above does not count against the burst.
    time.sleep(settings.ghl_rate_limit_interval_s + 1)
    before = sandbox.stats("ghl")["by_status"].get("429", 0)
    targets = [contact_ids[i % len(contact_ids)] for i in range(calls)]
    started = time.monotonic()
    hook.map_concurrently(hook.get_contact, targets)
    elapsed = time.monotonic() - started
    limit = hook._limiter.max_requests, hook._limiter.interval_s
    return measurement(
        "GoHighLevel", calls, elapsed, limit, sandbox.stats("ghl")["by_status"].get("429", 0) - before
    )


def run_memberstack(sandbox, calls: int, settings: Settings) -> dict:
    """Look up ``calls`` members by email (all misses) and return the measurements."""
    hook = MemberstackHook("bench_memberstack", settings=settings)
    time.sleep(1.5)
    before = sandbox.stats("memberstack")["by_status"].get("429", 0)
    emails = [f"bench.{i}@example.org" for i in range(calls)]
    started = time.monotonic()
    hook.map_concurrently(hook.get_member, emails)
    elapsed = time.monotonic() - started
    limit = hook._limiter.max_requests, hook._limiter.interval_s
    return measurement(
        "Memberstack", calls, elapsed, limit, sandbox.stats("memberstack")["by_status"].get("429", 0) - before
    )


def measurement(api: str, calls: int, elapsed: float, limit: tuple[int, float], throttled: int) -> dict:
    """Return the rate, the limit and the efficiency against the sliding-window minimum time."""
    maximum, interval = limit
    minimum_s = (math.ceil(calls / maximum) - 1) * interval
    return {
        "api": api,
        "calls": calls,
        "seconds": round(elapsed, 2),
        "rate_per_s": round(calls / elapsed, 2),
        "limit_per_s": round(maximum / interval, 2),
        "efficiency": round(minimum_s / elapsed, 3) if elapsed else 0.0,
        "http_429": throttled,
    }


def main() -> int:
    """Run both benchmarks and print their results; return 1 when a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ghl-calls", type=int, default=1000, help="GoHighLevel calls (default 1000)")
    parser.add_argument(
        "--memberstack-calls", type=int, default=1000, help="Memberstack calls (default 1000)"
    )
    args = parser.parse_args()
    settings = Settings.from_env()
    config = {"latency_ms": LATENCY_MS, "rate_limits": True}
    print(f"Starting the sandbox (latency {LATENCY_MS} ms, real limits)...", flush=True)
    with running_sandbox(seed=seedgen.generate_demo_seed(), config=config, subprocess=True) as sandbox:
        define_connections(sandbox.ghl_url, sandbox.memberstack_url)
        results = [run_memberstack(sandbox, args.memberstack_calls, settings)]
        print(json.dumps(results[-1]), flush=True)
        results.append(run_ghl(sandbox, args.ghl_calls, settings))
        print(json.dumps(results[-1]), flush=True)
    missed = [r["api"] for r in results if r["http_429"] or r["rate_per_s"] < 0.9 * r["limit_per_s"]]
    for result in results:
        print(
            f"{result['api']:<12} {result['calls']} calls in {result['seconds']} s: {result['rate_per_s']} "
            f"requests/s against a limit of {result['limit_per_s']}/s, efficiency "
            f"{result['efficiency']:.0%}, HTTP 429: {result['http_429']}"
        )
    if missed:
        print(f"Goal missed (0 HTTP 429 and a rate of at least 90 % of the limit) for: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
