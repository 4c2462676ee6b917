"""
### GoHighLevel → Memberstack nightly parity check and repair

Incremental syncs cannot see everything: GHL search does not return deleted contacts, a new note
does not change its contact's `dateUpdated`, and members can be edited by hand in Memberstack. This
DAG checks, per **sync pair**, that both sides agree, and repairs the drift.

Per pair it reads every GHL contact and task, and the notes and appointments of as many contacts as
the request budget `GHL_MEMBERSTACK_PARITY_REQUEST_BUDGET` covers. The contacts checked longest ago
come first, and the others follow on later nights. It lists every Memberstack member and Data Table
record, and sorts each into a finding kind: in sync, missing, extra, field mismatch, plan mismatch,
or a record missing, extra or different. Members the sync neither created nor adopted are listed as
unmanaged and never written.

With `repair`, the run writes what restores parity through the sync's mass-change guard and loader,
applies the mapping's delete policy to contacts gone from GHL, and commits the result as the pair's
snapshot. The last task, `check`, fails the run when the lowest entity's parity is below
`GHL_MEMBERSTACK_PARITY_MIN_PERCENT` (99.5), or when more than
`GHL_MEMBERSTACK_PARITY_MAX_QUARANTINE_PERCENT` (2) percent of the contacts are quarantined. An
Airflow notifier or `on_failure_callback` then alerts.

**Params**
- `repair`: write the repairs; the default comes from `GHL_MEMBERSTACK_PARITY_REPAIR` (on).
- `dry_run`: plan the repairs and put them in the report; write nothing.
- `force`: let the repair past the mass-change guard.
- `sync_pairs`: names of the pairs to check; empty checks every pair of the pairs file.

Each run writes `reports/<dag_id>/<run_id>/report.json` and `report.html` on the storage URL.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task, task_group

# The schedule and the default of the repair Param are the only values read at parse time.
# An empty schedule or "none" turns the schedule off (manual runs only).
_SCHEDULE_TEXT = os.environ.get("GHL_MEMBERSTACK_PARITY_SCHEDULE", "0 3 * * *").strip()
SCHEDULE = None if _SCHEDULE_TEXT.lower() in ("", "none") else _SCHEDULE_TEXT
_REPAIR_TEXT = os.environ.get("GHL_MEMBERSTACK_PARITY_REPAIR", "").strip().lower()
_BOOLEAN_TEXTS = ("", "1", "0", "true", "false", "yes", "no", "on", "off")
if _REPAIR_TEXT not in _BOOLEAN_TEXTS:
    raise ValueError(
        "GHL_MEMBERSTACK_PARITY_REPAIR must be one of 1, 0, true, false, yes, no, on, off; "
        f"got {_REPAIR_TEXT!r}."
    )
REPAIR_DEFAULT = _REPAIR_TEXT not in ("0", "false", "no", "off")
MEMBERSTACK_POOL = "memberstack_api"


def _run_options() -> dict[str, Any]:
    from ghl_memberstack.parity import options_from_context

    return options_from_context(get_current_context()).to_dict()


@dag(
    dag_id="ghl_memberstack_parity",
    schedule=SCHEDULE,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["gohighlevel", "memberstack", "parity"],
    default_args={
        "owner": "data-platform",
        # The delay between retries is Airflow's [core] default_task_retry_delay setting.
        "retries": 3,
    },
    params={
        "repair": Param(
            REPAIR_DEFAULT,
            type="boolean",
            description="Write what restores parity; the default comes from GHL_MEMBERSTACK_PARITY_REPAIR.",
        ),
        "dry_run": Param(
            False, type="boolean", description="Plan the repairs and report them; write nothing."
        ),
        "force": Param(False, type="boolean", description="Let the repair past the mass-change guard."),
        "sync_pairs": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Names of the sync pairs to check; empty checks all of them.",
        ),
    },
)
def ghl_memberstack_parity() -> None:
    @task
    def resolve_pairs() -> list[dict[str, str]]:
        """Read the pairs file and select the pairs named in the sync_pairs param."""
        from ghl_memberstack.sync import resolve_pairs_task

        return resolve_pairs_task(get_current_context()["params"])

    @task(map_index_template="{{ pair_name }}")
    def observe_pair(pair: dict[str, str]) -> dict[str, Any]:
        """Read the pair's GHL location in full within the request budget, holding the pair's lease."""
        from ghl_memberstack.parity import observe_pair_task

        get_current_context()["pair_name"] = pair["name"]
        return observe_pair_task(pair, _run_options())

    @task(pool=MEMBERSTACK_POOL, map_index_template="{{ pair_name }}")
    def reconcile_pair(observed: dict[str, Any]) -> dict[str, Any]:
        """List Memberstack, compare, repair when asked, commit, and measure the parity again."""
        from ghl_memberstack.parity import reconcile_pair_task

        get_current_context()["pair_name"] = observed["pair"]["name"]
        return reconcile_pair_task(observed, _run_options())

    @task(trigger_rule="all_done")
    def summarize() -> dict[str, Any]:
        """Write the parity report and release leases the run still holds."""
        from ghl_memberstack.parity import summarize_task

        pairs = get_current_context()["ti"].xcom_pull(task_ids="resolve_pairs")
        return summarize_task(pairs, _run_options())

    @task
    def check(outcome: dict[str, Any]) -> dict[str, Any]:
        """Fail the run when a pair failed or missed the parity or quarantine threshold."""
        from ghl_memberstack.parity import check_task

        return check_task(outcome)

    # A mapped task group gives each pair its own observe → reconcile chain, so a failed pair does
    # not hold back the others.
    @task_group(group_id="parity_pair")
    def parity_pair(pair: dict[str, str]) -> None:
        reconcile_pair(observe_pair(pair))

    outcome = summarize()
    parity_pair.expand(pair=resolve_pairs()) >> outcome
    check(outcome)


ghl_memberstack_parity()
