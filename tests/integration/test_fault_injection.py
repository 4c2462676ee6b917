"""The reliability run of ``make reliability`` on a 200-contact demo seed.

Both sandbox servers inject 10 % HTTP 429, 5 % 5xx, 1 % timeouts (half after processing, held
longer than the client's read timeout) and 1 % connection resets. A first load and an incremental
run after scripted GHL changes must each end with Memberstack at 100 % parity with the GHL data
under the mapping. No member or record may be duplicated and no change lost. Tasks are retried as
Airflow would retry them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bench import reliability

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def quiet_retries():
    """Keep the thousands of retry warnings out of the captured output."""
    names = ("ghl_memberstack", "airflow.task.hooks")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_faults_lose_and_duplicate_nothing(tmp_path: Path, quiet_retries: None) -> None:
    first, incremental = reliability.reliability_run(
        contacts=200, random_seed=7, fault_seed=3, storage=tmp_path / "storage"
    )

    for phase in (first, incremental):
        parity = phase["parity"]
        assert parity["parity_percent"] == 100.0, (phase["phase"], parity)
        assert parity["duplicates"] == 0, phase["phase"]
        assert parity["lost_changes"] == 0, (phase["phase"], parity["lost_examples"])
        assert parity["unexpected"] == 0, (phase["phase"], parity["unexpected_examples"])
    # The faults really happened, on both APIs and of every kind.
    for which in ("ghl", "memberstack"):
        kinds = {kind for kind, count in first["faults"][which].items() if count}
        assert {"429", "500", "reset"} <= kinds, (which, first["faults"][which])
    assert first["faults"]["memberstack"].get("timeout_after", 0) > 0
    assert sum(incremental["scripted_changes"].values()) > 0
    assert incremental["memberstack_write_requests"] > 0
