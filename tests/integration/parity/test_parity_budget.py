"""Parity runs over a location of 5,000 contacts stay within their GHL request budget.

The steps run without a scheduler against the sandbox (in a subprocess) over HTTP. The pair has a
committed but empty snapshot, as after a first sync that wrote nothing, and the runs check without
repair, so each night's coverage is stored in the manifest and nothing is written to Memberstack.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import seedgen
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "ghl_memberstack_parity"
CONTACTS = 5000
BUDGET = 4000
SEED = seedgen.generate_seed(contacts_per_location=(CONTACTS,), random_seed=13)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(seed=SEED, config={"rate_limit_scale": 100}, subprocess=True) as handle:
        yield handle


@pytest.fixture(scope="module")
def storage(sandbox: SandboxHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from ghl_memberstack.snapshot import Manifest, SnapshotStore, empty_applied
    from ghl_memberstack.storage import as_storage_path

    folder = tmp_path_factory.mktemp("parity-budget-storage")
    values = {
        "AIRFLOW_CONN_GOHIGHLEVEL_DEFAULT": json.dumps(
            {
                "conn_type": "gohighlevel",
                "host": sandbox.ghl_url,
                "password": seedgen.DEMO_LOCATION_A_PIT,
                "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
            }
        ),
        "AIRFLOW_CONN_MEMBERSTACK_DEFAULT": json.dumps(
            {
                "conn_type": "memberstack",
                "host": sandbox.memberstack_url,
                "password": seedgen.DEMO_MEMBERSTACK_KEY_A,
            }
        ),
        "AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE": str(folder),
        "MEMBERSTACK_RATE_LIMIT_PER_S": "5000",
        "GHL_MEMBERSTACK_RETRY_BASE_DELAY_S": "0",
        "GHL_MEMBERSTACK_RETRY_MAX_DELAY_S": "0",
        "GHL_MEMBERSTACK_PAIR_LEASE_POLL_S": "0.05",
        "GHL_MEMBERSTACK_PARITY_REQUEST_BUDGET": str(BUDGET),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        SnapshotStore(as_storage_path(folder), "default").commit(empty_applied(), Manifest())
        yield folder


def run_night(number: int, sandbox: SandboxHandle) -> dict[str, Any]:
    """Run one parity run without repair; return its pair report and the GHL requests the sandbox served."""
    from ghl_memberstack import parity

    before = served(sandbox)
    options = parity.ParityOptions(dag_id=DAG_ID, run_id=f"scheduled__night_{number}", repair=False)
    outcome = parity.run_parity(options)
    report = json.loads(Path(outcome["report_json"].removeprefix("file://")).read_text(encoding="utf-8"))
    after = served(sandbox)
    by_route = {route: after[route] - before.get(route, 0) for route in after}
    return {"pair": report["pairs"]["default"], "served": sum(by_route.values()), "by_route": by_route}


def served(sandbox: SandboxHandle) -> dict[str, int]:
    """GHL API requests the sandbox served so far, per route."""
    stats = sandbox.stats("ghl")
    return {route: sum(statuses.values()) for route, statuses in stats["by_route"].items()}


def child_reads(night: dict[str, Any]) -> int:
    """Requests for notes and appointments, one of each per contact."""
    return sum(
        count for route, count in night["by_route"].items() if route.endswith(("/notes", "/appointments"))
    )


def checked_times(storage: Path) -> dict[str, int]:
    from ghl_memberstack.snapshot import SnapshotStore
    from ghl_memberstack.storage import as_storage_path

    return dict(SnapshotStore(as_storage_path(storage), "default").manifest().parity_checked)


@pytest.fixture(scope="module")
def nights(storage: Path, sandbox: SandboxHandle) -> list[dict[str, Any]]:
    first = run_night(1, sandbox)
    checked_first = checked_times(storage)
    second = run_night(2, sandbox)
    return [first | {"checked": checked_first}, second | {"checked": checked_times(storage)}]


def test_run_stays_within_budget(nights: list[dict[str, Any]]) -> None:
    for night in nights:
        requests = night["pair"]["requests"]
        assert night["pair"]["status"] == "ok", night["pair"]["error"]
        assert requests["ghl"] <= BUDGET
        assert night["served"] <= BUDGET
        assert requests["ghl_budget"] == BUDGET


def test_report_states_requests_used(nights: list[dict[str, Any]]) -> None:
    for night in nights:
        requests = night["pair"]["requests"]
        assert requests["ghl"] == night["served"]
        assert requests["ghl_full_observation"] > BUDGET
        assert requests["memberstack"] > 0


def test_first_run_estimates_from_nothing_then_from_history(nights: list[dict[str, Any]]) -> None:
    first, second = (night["pair"]["requests"] for night in nights)

    assert first["ghl_estimate"] is None
    assert second["ghl_estimate"] == first["ghl_full_observation"]


def test_contacts_and_tasks_are_read_in_full(nights: list[dict[str, Any]]) -> None:
    for night in nights:
        pair = night["pair"]
        quarantined = {e["ghl_id"] for e in pair["quarantine"]["entries"] if e["entity"] == "contacts"}
        # Tasks of quarantined contacts are read too, but left out, as their notes are never read.
        tasks = [t for t in SEED["ghl"]["locations"][0]["tasks"] if t.get("contactId") not in quarantined]
        assert pair["coverage"]["contacts_read"] == CONTACTS
        assert pair["counts_read"]["tasks"] == len(tasks)
        assert pair["before"]["counts"]["tasks"]["not_covered"] == 0


def test_budget_limits_note_coverage(nights: list[dict[str, Any]]) -> None:
    coverage = nights[0]["pair"]["coverage"]
    # Contact pages, custom fields and task pages: everything but the per-contact reads.
    fixed = nights[0]["served"] - child_reads(nights[0])

    assert coverage["complete"] is False
    assert child_reads(nights[0]) == 2 * coverage["covered_contacts"]
    assert coverage["covered_contacts"] == (BUDGET - fixed) // 2
    assert coverage["uncovered_never_checked"] == coverage["valid_contacts"] - coverage["covered_contacts"]


def test_full_observation_estimate_matches_paging(nights: list[dict[str, Any]]) -> None:
    night = nights[0]
    fixed = night["served"] - child_reads(night)

    assert (
        night["pair"]["requests"]["ghl_full_observation"]
        == fixed + 2 * night["pair"]["coverage"]["valid_contacts"]
    )


def test_second_night_covers_oldest_checked_first(nights: list[dict[str, Any]]) -> None:
    first, second = nights
    covered_first = set(first["checked"])
    newly_checked = {cid for cid, stamp in second["checked"].items() if stamp != first["checked"].get(cid)}

    assert len(covered_first) == first["pair"]["coverage"]["covered_contacts"]
    assert len(newly_checked) == second["pair"]["coverage"]["covered_contacts"]
    assert not newly_checked & covered_first
    assert second["pair"]["coverage"]["uncovered_oldest_check"] is not None


def test_runs_without_repair_write_nothing(nights: list[dict[str, Any]], sandbox: SandboxHandle) -> None:
    app = sandbox.state()["memberstack"]["apps"][0]

    assert app["members"] == []
    assert all(not table.get("records") for table in app["data_tables"])
    assert all(night["pair"]["repair"].get("applied") is not True for night in nights)
