"""
### GoHighLevel → Memberstack sync

Moves GoHighLevel (GHL) contact changes, with their tags, tasks, notes and appointments, into
Memberstack members, free plans and Data Table records, one **sync pair** (a GHL location and a
Memberstack app) per mapped task.

Per pair the run extracts the contacts changed since the stored watermark, validates them with
pydantic and a Great Expectations suite, builds the state Memberstack should hold, diffs it against
the last applied snapshot and writes only the differences. A guard stops runs that would deactivate,
delete or clear a field of too many members unless `force` is set.

**Params**
- `dry_run`: build and report the plan, write nothing to Memberstack and commit no state.
- `full_refresh`: read every contact and its records. Only such a complete read deletes or
  deactivates members whose contacts are gone.
- `force`: let a run past the mass-change guard.
- `sync_pairs`: names of the pairs to run; empty runs every pair of the pairs file.

Each run writes `reports/<dag_id>/<run_id>/report.json` and `report.html` on the storage URL (the
Variable `ghl_memberstack_storage`, by default `$AIRFLOW_HOME/ghl_memberstack`).
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task, task_group

# The schedule is the only value read at parse time; every other setting is read inside tasks.
# An empty value or "none" turns the schedule off (manual runs only).
_SCHEDULE_TEXT = os.environ.get("GHL_MEMBERSTACK_SYNC_SCHEDULE", "@hourly").strip()
SCHEDULE = None if _SCHEDULE_TEXT.lower() in ("", "none") else _SCHEDULE_TEXT
# A plain cron string gives each run a data interval of zero length in Airflow 3, and a backfill
# reads the contacts updated inside its run's interval, so each run must span its schedule period.
TIMETABLE = CronDataIntervalTimetable(SCHEDULE, timezone="UTC") if SCHEDULE else None
MEMBERSTACK_POOL = "memberstack_api"


def _run_options() -> dict[str, Any]:
    from ghl_memberstack.sync import options_from_context

    return options_from_context(get_current_context()).to_dict()


@dag(
    dag_id="ghl_memberstack_sync",
    schedule=TIMETABLE,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["gohighlevel", "memberstack", "sync"],
    default_args={
        "owner": "data-platform",
        # The delay between retries is Airflow's [core] default_task_retry_delay setting
        # (AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY, in seconds), so no value is read here.
        "retries": 3,
    },
    params={
        "dry_run": Param(False, type="boolean", description="Plan and report only; write nothing."),
        "full_refresh": Param(
            False, type="boolean", description="Read every contact; the only kind of run that deletes."
        ),
        "force": Param(False, type="boolean", description="Let the run past the mass-change guard."),
        "sync_pairs": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Names of the sync pairs to run; empty runs all of them.",
        ),
    },
)
def ghl_memberstack_sync() -> None:
    @task
    def resolve_pairs() -> list[dict[str, str]]:
        """Read the pairs file and select the pairs named in the sync_pairs param."""
        from ghl_memberstack.sync import resolve_pairs_task

        return resolve_pairs_task(get_current_context()["params"])

    @task(map_index_template="{{ pair_name }}")
    def prepare_pair(pair: dict[str, str]) -> dict[str, Any]:
        """Extract, validate and plan one pair, holding the pair's lease until its load ends."""
        from ghl_memberstack.sync import prepare_pair_task

        get_current_context()["pair_name"] = pair["name"]
        return prepare_pair_task(pair, _run_options())

    @task(pool=MEMBERSTACK_POOL, map_index_template="{{ pair_name }}")
    def load_pair(prepared: dict[str, Any]) -> dict[str, Any]:
        """Write one pair's plan to Memberstack and commit the new snapshot."""
        from ghl_memberstack.sync import load_pair_task

        get_current_context()["pair_name"] = prepared["pair"]["name"]
        return load_pair_task(prepared, _run_options())

    @task(trigger_rule="all_done")
    def summarize() -> dict[str, Any]:
        """Write the run report, release leftover leases, and fail the run if any pair failed."""
        from ghl_memberstack.sync import summarize_task

        context = get_current_context()
        pairs = context["ti"].xcom_pull(task_ids="resolve_pairs")
        return summarize_task(pairs, _run_options())

    # A mapped task group gives each pair its own prepare → load chain, so a failed pair does not
    # hold back the loads of the others.
    @task_group(group_id="sync_pair")
    def sync_pair(pair: dict[str, str]) -> None:
        load_pair(prepare_pair(pair))

    sync_pair.expand(pair=resolve_pairs()) >> summarize()


ghl_memberstack_sync()
