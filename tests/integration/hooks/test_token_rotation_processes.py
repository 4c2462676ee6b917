"""Twenty processes share one rotating OAuth grant through the default token store.

The access token lives 5 s in the sandbox, so a refresh is due every 4 s (the margin is 20 % of
``expires_in``). With single-flight refreshes the whole run needs about duration / 4 refreshes,
not that times the number of processes, and GoHighLevel never returns ``invalid_grant``.
``TOKEN_ROTATION_DURATION_S`` sets the duration (default 30 s).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest
from airflow.sdk.crypto import get_fernet
from cryptography.fernet import Fernet

# Imported here so that forked workers start at once instead of importing Airflow twenty times.
from ghl_memberstack import limits
from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook
from sandbox import seedgen
from sandbox.testing import running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROCESSES = 20
TOKEN_TTL_S = 5
DURATION_S = float(os.environ.get("TOKEN_ROTATION_DURATION_S", "30"))
CALL_INTERVAL_S = 0.5
CONN_ID = "ghl_rotation_shared"


def _call_until(deadline: float, results: multiprocessing.Queue) -> None:
    """Worker: call GoHighLevel until ``deadline`` and report successes, failures and refreshes."""
    get_fernet.cache_clear()  # the key comes from this process's environment
    limits.reset_limiters()
    hook = GoHighLevelHook(CONN_ID)
    succeeded, errors = 0, []
    while time.time() < deadline:
        try:
            next(hook.search_contacts(page_limit=1))
            succeeded += 1
        except Exception as error:  # noqa: BLE001 - reported to the parent for the assert
            errors.append(f"{type(error).__name__}: {error}"[:300])
        time.sleep(CALL_INTERVAL_S)
    results.put((succeeded, errors, hook.token_manager.refresh_count))


def test_processes_share_one_grant(tmp_path, monkeypatch):
    seed = seedgen.generate_seed((20, 20), members_per_app=0)
    config = {"access_token_ttl_s": TOKEN_TTL_S, "ghl_burst_limit": 1000}
    with running_sandbox(seed=seed, config=config, subprocess=True) as sandbox:
        monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", Fernet.generate_key().decode())
        monkeypatch.setenv("AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE", str(tmp_path / "storage"))
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN_ID.upper()}",
            json.dumps(
                {
                    "conn_type": "gohighlevel",
                    "host": sandbox.ghl_url,
                    "extra": {
                        "location_id": seedgen.DEMO_LOCATION_B_ID,
                        "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
                        "client_secret": seedgen.DEMO_OAUTH_CLIENT_SECRET,
                        "refresh_token": seedgen.DEMO_REFRESH_TOKEN_B,
                    },
                }
            ),
        )
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        deadline = time.time() + DURATION_S
        workers = [context.Process(target=_call_until, args=(deadline, results)) for _ in range(PROCESSES)]
        for worker in workers:
            worker.start()
        reports = [results.get(timeout=DURATION_S + 120) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        refresh_stats = sandbox.stats("ghl").get("refresh", {})

    errors = [error for _, worker_errors, _ in reports for error in worker_errors]
    calls_per_worker = sorted(count for count, _, _ in reports)
    # A refresh is due 4 s (80 % of the 5 s lifetime) after the previous one.
    expected_refreshes = DURATION_S / (TOKEN_TTL_S * 0.8)
    assert errors == []
    assert calls_per_worker[0] >= 3, f"calls per worker: {calls_per_worker}"
    assert refresh_stats.get("rejected", 0) == 0
    assert expected_refreshes - 3 <= refresh_stats["granted"] <= expected_refreshes + 3, refresh_stats
    assert sum(refreshes for _, _, refreshes in reports) == refresh_stats["granted"]
