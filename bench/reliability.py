"""Reliability run: the demo seed synced under injected faults, then checked for parity.

``make reliability`` (or ``python bench/reliability.py``) starts the sandbox with faults on both
APIs: 10 % HTTP 429, 5 % 5xx, 1 % timeouts (half of them after the request was processed, each held
for ``--hold-s`` seconds, longer than the client's read timeout) and 1 % connection resets. It then
runs two phases over both demo pairs:

1. the first load of the demo seed (a full refresh, since no snapshot exists);
2. scripted GHL changes made with faults off (field updates, tag changes, new contacts, new notes
   and tasks), then an incremental run with faults on again.

Each phase runs the sync steps as Airflow would. Every task gets up to ``--attempts`` attempts
(the DAG's retries), and errors that a retry cannot fix fail the task at once. A DAG run that
fails or leaves contacts pending (say, a child read that failed through all its retries) is
followed by the next one, as the schedule would start it, up to ``--max-runs``. After each phase
the script compares the Memberstack sandbox with the state the mapping derives from the GHL
sandbox and prints parity, duplicates and lost changes. It exits 1 unless parity is 100 % with no
duplicate, no lost change and no contact left pending.

The module also contains the parity check that the reliability tests share (``check_parity``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DAG_ID = "ghl_memberstack_sync"
DEFAULT_MAPPING = REPO_ROOT / "include" / "mapping.yaml"
# Fault probabilities per request on both APIs: 10 % 429, 5 % 5xx, 1 % timeouts, 1 % resets.
FAULTS = {
    "429": 0.10,
    "500": 0.03,
    "502": 0.01,
    "503": 0.01,
    "timeout": 0.005,
    "timeout_after": 0.005,
    "reset": 0.01,
}
# The client's read timeout in seconds. The sandbox delays the reply of a timeout fault for longer.
CLIENT_READ_TIMEOUT_S = 1.0
DEFAULT_HOLD_S = 2.0
DEFAULT_ATTEMPTS = 4
DEFAULT_MAX_RUNS = 4
MEMBER_WRITE_ROUTES_PREFIXES = ("POST ", "PATCH ", "PUT ", "DELETE ")
MEMBERSTACK_READ_ROUTES = ("POST /v2/data-tables/{table}/records/query",)


# --------------------------------------------------------------------------------------------
# Parity: the Memberstack state compared with what the mapping derives from the GHL state.


@dataclasses.dataclass
class ParityReport:
    """Comparison of one Memberstack app with the state the mapping derives from one GHL location.

    ``lost`` lists the desired members and records that are missing or have other values, and
    ``unexpected`` the members and records that should not exist. Entries name ids only.
    """

    expected_members: int = 0
    matched_members: int = 0
    expected_records: int = 0
    matched_records: int = 0
    duplicate_members: int = 0
    duplicate_records: int = 0
    lost: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)

    @property
    def parity(self) -> float:
        """Share of desired members and records that Memberstack stores as desired, from 0.0 to 1.0."""
        expected = self.expected_members + self.expected_records
        if expected == 0:
            return 1.0
        return (self.matched_members + self.matched_records) / expected

    @property
    def duplicates(self) -> int:
        """Surplus members of one contact plus surplus records of one GHL object."""
        return self.duplicate_members + self.duplicate_records

    @property
    def lost_changes(self) -> int:
        """Desired members and records that Memberstack lacks or stores with other values."""
        return len(self.lost)

    @property
    def ok(self) -> bool:
        """True at 100 % parity with no duplicate, no lost change and nothing unexpected."""
        return self.parity == 1.0 and not self.duplicates and not self.lost and not self.unexpected

    def merge(self, other: ParityReport) -> ParityReport:
        """Return the sum of two reports, such as those of two sync pairs."""
        return ParityReport(
            expected_members=self.expected_members + other.expected_members,
            matched_members=self.matched_members + other.matched_members,
            expected_records=self.expected_records + other.expected_records,
            matched_records=self.matched_records + other.matched_records,
            duplicate_members=self.duplicate_members + other.duplicate_members,
            duplicate_records=self.duplicate_records + other.duplicate_records,
            lost=[*self.lost, *other.lost],
            unexpected=[*self.unexpected, *other.unexpected],
        )

    def summary(self) -> dict[str, Any]:
        """Return the figures as a small dict, with at most ten example ids per list."""
        return {
            "parity_percent": round(100 * self.parity, 3),
            "members": f"{self.matched_members}/{self.expected_members}",
            "records": f"{self.matched_records}/{self.expected_records}",
            "duplicates": self.duplicates,
            "lost_changes": self.lost_changes,
            "unexpected": len(self.unexpected),
            "lost_examples": self.lost[:10],
            "unexpected_examples": self.unexpected[:10],
        }


def desired_from_ghl(location: Mapping[str, Any], mapping: Any) -> Any:
    """Build the desired state of a whole GHL location (sandbox state format) under ``mapping``.

    This is a complete observation, so a contact missing from the result is gone from GHL.
    """
    from ghl_memberstack import mapping as mapping_module
    from ghl_memberstack import models

    frames = {}
    for entity in ("contacts", "tasks", "notes", "appointments"):
        rows, _ = models.parse_page(entity, location.get(entity) or [])
        frames[entity] = models.frame(entity, rows)
    definitions, _ = models.parse_page("custom_fields", location.get("custom_fields") or [])
    return mapping_module.build_desired(
        frames["contacts"],
        frames["tasks"],
        frames["notes"],
        frames["appointments"],
        definitions,
        mapping,
        location_id=location["id"],
        complete=True,
    )


def _text(value: Any) -> str:
    """Return a value as the diff compares it: missing, None and NA are ""."""
    import pandas as pd

    if value is None or value is pd.NA:
        return ""
    if hasattr(value, "item"):
        # NumPy scalars, such as a numpy.bool_ from a boolean column.
        value = value.item()
    if isinstance(value, float) and value != value:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _member_problems(
    row: Any, member: Mapping[str, Any], columns: list[str], managed: set[str], location_id: str
) -> list[str]:
    problems = []
    email = str((member.get("auth") or {}).get("email") or "").lower()
    if email != row["email"]:
        problems.append("email")
    held = member.get("customFields") or {}
    for column in columns:
        key = column.removeprefix("cf:")
        if _text(held.get(key)) != _text(row[column]):
            problems.append(f"customFields.{key}")
    wanted_plans = {plan for plan in _text(row["plans"]).split(",") if plan}
    held_plans = {c.get("planId") for c in member.get("planConnections") or []} & managed
    if held_plans != wanted_plans:
        problems.append("plans")
    meta = member.get("metaData") or {}
    if meta.get("ghlLocationId") != location_id:
        problems.append("metaData.ghlLocationId")
    if "json" in row.index and _text(row["json"]):
        wanted_json = json.loads(row["json"])
        held_json = (member.get("json") or {}).get("ghl") or {}
        if {key: held_json.get(key) for key in wanted_json} != wanted_json:
            problems.append("json")
    return problems


def _record_problems(
    row: Any, record: Mapping[str, Any], columns: list[str], member_id: str | None
) -> list[str]:
    data = record.get("data") or {}
    problems = [column for column in columns if _text(data.get(column)) != _text(row[column])]
    if member_id is not None and data.get("member") != member_id:
        problems.append("member")
    return problems


def check_parity(
    location: Mapping[str, Any],
    app: Mapping[str, Any],
    mapping: Any = None,
    *,
    deletions_seen: bool = False,
) -> ParityReport:
    """Compare one Memberstack app (sandbox state format) with one GHL location under ``mapping``.

    Every valid contact must have exactly one member linked through ``metaData.ghlContactId`` with
    the mapped email, custom fields and managed plans, and each of its tasks, notes and
    appointments exactly one record with the mapped fields, linked to that member.

    :param mapping: a loaded mapping; None loads ``include/mapping.yaml``.
    :param deletions_seen: whether a complete observation has run since contacts were deleted in
        GHL. If so, the members of gone contacts must follow the delete policy, and records of gone
        objects must be deleted. If not, both are left out of the comparison.
    """
    from ghl_memberstack import mapping as mapping_module

    mapping = mapping if mapping is not None else mapping_module.load_mapping(DEFAULT_MAPPING)
    desired = desired_from_ghl(location, mapping)
    location_id = location["id"]
    managed = set(mapping.managed_plans)
    report = ParityReport()

    linked: dict[str, list[dict[str, Any]]] = {}
    for member in app.get("members") or []:
        meta = member.get("metaData") or {}
        if meta.get("ghlLocationId") in (None, "", location_id) and meta.get("ghlContactId"):
            linked.setdefault(str(meta["ghlContactId"]), []).append(member)
    for contact_id, members in linked.items():
        if len(members) > 1:
            report.duplicate_members += len(members) - 1

    columns = [column for column in desired.members.columns if column.startswith("cf:")]
    member_ids: dict[str, str] = {}
    report.expected_members = len(desired.members)
    for contact_id, row in desired.members.iterrows():
        members = linked.get(str(contact_id))
        if not members:
            report.lost.append(f"member of contact {contact_id}: missing")
            continue
        member_ids[str(contact_id)] = members[0]["id"]
        problems = _member_problems(row, members[0], columns, managed, location_id)
        if problems:
            report.lost.append(f"member of contact {contact_id}: {', '.join(problems)} differ")
        else:
            report.matched_members += 1

    if deletions_seen:
        _check_gone_members(report, desired, linked, mapping, managed)

    tables = {table["key"]: table for table in app.get("data_tables") or []}
    for table_key, frame in desired.records.items():
        id_field = mapping_module.TABLE_ID_FIELDS[table_key]
        stored: dict[str, list[dict[str, Any]]] = {}
        for record in (tables.get(table_key) or {}).get("records") or []:
            data = record.get("data") or {}
            if data.get("ghl_location_id") in (None, location_id):
                stored.setdefault(str(data.get(id_field)), []).append(record)
        for ghl_id, records in stored.items():
            if len(records) > 1:
                report.duplicate_records += len(records) - 1
        record_columns = [column for column in frame.columns if column != "contact_id"]
        report.expected_records += len(frame)
        for ghl_id, row in frame.iterrows():
            records = stored.get(str(ghl_id))
            if not records:
                report.lost.append(f"{table_key} record {ghl_id}: missing")
                continue
            problems = _record_problems(
                row, records[0], record_columns, member_ids.get(str(row["contact_id"]))
            )
            if problems:
                report.lost.append(f"{table_key} record {ghl_id}: {', '.join(problems)} differ")
            else:
                report.matched_records += 1
        if deletions_seen:
            for ghl_id in sorted(set(stored) - set(map(str, frame.index))):
                contact_id = str((stored[ghl_id][0].get("data") or {}).get("ghl_contact_id"))
                # With the deactivate or ignore policy the records of gone contacts stay.
                if contact_id in map(str, desired.members.index):
                    report.unexpected.append(f"{table_key} record {ghl_id}: its GHL object is gone")
    return report


def _check_gone_members(
    report: ParityReport,
    desired: Any,
    linked: dict[str, list[dict[str, Any]]],
    mapping: Any,
    managed: set[str],
) -> None:
    present = set(map(str, desired.members.index))
    present |= {entry.ghl_id for entry in desired.quarantine if entry.entity == "contacts"}
    policy = mapping.delete_policy
    for contact_id, members in linked.items():
        if contact_id in present or policy == "ignore":
            continue
        if policy == "delete":
            report.unexpected.append(f"member of gone contact {contact_id}: not deleted")
            continue
        member = members[0]
        status = (member.get("customFields") or {}).get("ghl-status")
        plans = {c.get("planId") for c in member.get("planConnections") or []} & managed
        if status != "deleted" or plans:
            report.unexpected.append(f"member of gone contact {contact_id}: not deactivated")


def check_sandbox_parity(
    state: Mapping[str, Any],
    pairs: Mapping[str, tuple[str, str]],
    mapping: Any = None,
    *,
    deletions_seen: bool = False,
) -> dict[str, ParityReport]:
    """Check every pair of a sandbox state; ``pairs`` maps a pair name to (location id, app key)."""
    locations = {location["id"]: location for location in state["ghl"]["locations"]}
    apps = {app["secret_key"]: app for app in state["memberstack"]["apps"]}
    return {
        name: check_parity(locations[location_id], apps[key], mapping, deletions_seen=deletions_seen)
        for name, (location_id, key) in pairs.items()
    }


def memberstack_writes(stats: Mapping[str, Any]) -> int:
    """Count the write requests in a Memberstack sandbox stats snapshot, whatever their status."""
    total = 0
    for route, statuses in (stats.get("by_route") or {}).items():
        if route.startswith(MEMBER_WRITE_ROUTES_PREFIXES) and route not in MEMBERSTACK_READ_ROUTES:
            total += sum(statuses.values())
    return total


# --------------------------------------------------------------------------------------------
# Running the sync steps as Airflow runs the DAG's tasks.


@dataclasses.dataclass
class RunRecord:
    """Outcome of the DAG runs of one phase: runs, task attempts, failures and duration."""

    runs: int = 0
    task_attempts: int = 0
    task_failures: Counter = dataclasses.field(default_factory=Counter)
    failed_pairs: list[str] = dataclasses.field(default_factory=list)
    # Contacts still pending after the last run.
    pending: int = 0
    duration_s: float = 0.0


def _run_task(function: Any, attempts: int, record: RunRecord) -> tuple[Any, BaseException | None]:
    """Call one task function like Airflow: retry up to ``attempts`` times unless the error is final."""
    from ghl_memberstack import sync

    final = sync.non_retryable_errors()
    error: BaseException | None = None
    for _ in range(attempts):
        record.task_attempts += 1
        try:
            return function(), None
        except final as caught:
            record.task_failures[type(caught).__name__] += 1
            return None, caught
        except Exception as caught:  # noqa: BLE001 - a failed attempt is retried, like a task
            record.task_failures[type(caught).__name__] += 1
            error = caught
    return None, error


def run_dag_once(pairs: list[Any], options: Any, record: RunRecord, *, attempts: int) -> bool:
    """Run every pair's prepare and load tasks with retries, then the report; return True on success."""
    from ghl_memberstack import sync

    ok = True
    for pair in pairs:
        prepared, error = _run_task(lambda pair=pair: sync.prepare_pair(pair, options), attempts, record)
        if error is None:
            _, error = _run_task(
                lambda prepared=prepared: sync.load_pair(prepared, options), attempts, record
            )
        if error is not None:
            ok = False
            record.failed_pairs.append(f"{options.run_id}/{pair.name}: {type(error).__name__}")
    summary = sync.summarize([pair.name for pair in pairs], options)
    return ok and summary["status"] == "ok"


def pending_contacts(pairs: list[Any]) -> dict[str, tuple[str, ...]]:
    """Return each pair's pending contacts from its manifest: those the next run must re-read."""
    from ghl_memberstack.snapshot import SnapshotStore
    from ghl_memberstack.storage import storage_root

    pending = {}
    for pair in pairs:
        manifest = SnapshotStore(storage_root(), pair.name).manifest()
        pending[pair.name] = tuple(manifest.pending) if manifest is not None else ()
    return pending


def run_until_settled(
    pairs: list[Any], *, run_prefix: str, attempts: int, max_runs: int, full_refresh: bool = False
) -> RunRecord:
    """Start DAG runs, as the schedule would, until one succeeds and leaves no contact pending.

    A run can succeed with pending contacts, for example when a child read still failed after its
    retries; the next scheduled run re-reads them. At most ``max_runs`` runs start.
    """
    from ghl_memberstack import sync

    record = RunRecord()
    started = time.monotonic()
    for number in range(1, max_runs + 1):
        record.runs = number
        options = sync.RunOptions(
            dag_id=DAG_ID, run_id=f"{run_prefix}__{number}", run_type="scheduled", full_refresh=full_refresh
        )
        succeeded = run_dag_once(pairs, options, record, attempts=attempts)
        record.pending = sum(len(ids) for ids in pending_contacts(pairs).values())
        if succeeded and not record.pending:
            break
    record.duration_s = round(time.monotonic() - started, 1)
    return record


# --------------------------------------------------------------------------------------------
# The sandbox, the connections and the scripted GHL changes.


def connection_environment(ghl_url: str, memberstack_url: str) -> dict[str, str]:
    """Return ``AIRFLOW_CONN_*`` values of the two demo pairs, aimed at a running sandbox."""
    from sandbox import seedgen

    connections = {
        "gohighlevel_demo_a": {
            "conn_type": "gohighlevel",
            "host": ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
        },
        "gohighlevel_demo_b": {
            "conn_type": "gohighlevel",
            "host": ghl_url,
            "extra": {
                "location_id": seedgen.DEMO_LOCATION_B_ID,
                "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
                "client_secret": seedgen.DEMO_OAUTH_CLIENT_SECRET,
                "refresh_token": seedgen.DEMO_REFRESH_TOKEN_B,
            },
        },
        "memberstack_demo_a": {
            "conn_type": "memberstack",
            "host": memberstack_url,
            "password": seedgen.DEMO_MEMBERSTACK_KEY_A,
        },
        "memberstack_demo_b": {
            "conn_type": "memberstack",
            "host": memberstack_url,
            "password": seedgen.DEMO_MEMBERSTACK_KEY_B,
        },
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(body) for conn_id, body in connections.items()}


def sync_environment(storage: Path) -> dict[str, str]:
    """Return the settings of a fast run: short timeouts and retry delays, no Memberstack limit.

    The sandbox runs with its rate limits off, so only injected 429s make the hooks back off.
    """
    return {
        "AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE": str(storage),
        "GHL_MEMBERSTACK_READ_TIMEOUT_S": str(CLIENT_READ_TIMEOUT_S),
        "GHL_MEMBERSTACK_CONNECT_TIMEOUT_S": "2",
        "GHL_MEMBERSTACK_RETRY_BASE_DELAY_S": "0.01",
        "GHL_MEMBERSTACK_RETRY_MAX_DELAY_S": "0.05",
        "GHL_TOKEN_LEASE_POLL_S": "0.01",
        "GHL_MEMBERSTACK_PAIR_LEASE_POLL_S": "0.05",
        "MEMBERSTACK_RATE_LIMIT_PER_S": "5000",
    }


@contextlib.contextmanager
def patched_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block and restore the previous values afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def demo_pairs() -> list[Any]:
    """Return the two sync pairs of ``include/sync_pairs.demo.yaml``."""
    from ghl_memberstack.pairs import load_pairs

    return load_pairs(REPO_ROOT / "include" / "sync_pairs.demo.yaml")


def scripted_changes(
    state: Mapping[str, Any], location_id: str, conn_id: str, *, count: int, rng: random.Random
) -> Counter:
    """Change ``count`` contacts of one location through the GHL API, as users of the CRM would.

    It updates names, adds and removes tags that grant plans, creates new contacts and adds notes
    and tasks. Run it with faults off and with ``child_changes_bump_contact`` on, so an
    incremental run reads the new notes and tasks.
    """
    from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

    location = next(loc for loc in state["ghl"]["locations"] if loc["id"] == location_id)
    contacts = sorted(location["contacts"], key=lambda contact: contact["id"])
    chosen = rng.sample(contacts, min(count, len(contacts)))
    done: Counter = Counter()
    hook = GoHighLevelHook(gohighlevel_conn_id=conn_id)
    try:
        for number, contact in enumerate(chosen):
            kind = number % 5
            if kind == 0:
                hook.update_contact(contact["id"], lastName=f"Changed {number}")
                done["name updated"] += 1
            elif kind == 1:
                hook.add_tags(contact["id"], ["VIP"])
                done["vip tag added"] += 1
            elif kind == 2:
                tags = [tag for tag in contact.get("tags") or [] if "member" in tag.lower()]
                if tags:
                    hook.remove_tags(contact["id"], tags)
                    done["member tag removed"] += 1
                else:
                    hook.add_tags(contact["id"], ["member"])
                    done["member tag added"] += 1
            elif kind == 3:
                hook.create_note(contact["id"], f"<p>Follow-up {number} &amp; <b>check</b></p>")
                done["note created"] += 1
            else:
                hook.create_task(contact["id"], f"Call back {number}", "2026-01-15T09:00:00.000Z")
                done["task created"] += 1
        for number in range(max(1, count // 10)):
            hook.create_contact(
                email=f"reliability.{location_id.lower()}.{number}@example.org",
                firstName=f"New{number}",
                tags=["member"],
            )
            done["contact created"] += 1
    finally:
        hook.close()
    return done


def fault_counts(sandbox: Any) -> dict[str, dict[str, int]]:
    """Return the injected faults per kind on each sandbox server."""
    return {which: dict(sandbox.stats(which).get("faults") or {}) for which in ("ghl", "memberstack")}


def _add_counts(total: dict[str, dict[str, int]], more: Mapping[str, Mapping[str, int]]) -> None:
    for which, counts in more.items():
        bucket = total.setdefault(which, {})
        for kind, value in counts.items():
            bucket[kind] = bucket.get(kind, 0) + value


def _phase_result(
    name: str, record: RunRecord, parity: dict[str, ParityReport], faults: Mapping[str, Any], writes: int
) -> dict[str, Any]:
    combined = ParityReport()
    for report in parity.values():
        combined = combined.merge(report)
    return {
        "phase": name,
        "dag_runs": record.runs,
        "task_attempts": record.task_attempts,
        "task_failures": dict(record.task_failures),
        "failed_pairs": record.failed_pairs,
        "pending_contacts": record.pending,
        "duration_s": record.duration_s,
        "memberstack_write_requests": writes,
        "faults": dict(faults),
        "parity": combined.summary(),
        "ok": combined.ok and not record.pending,
    }


def reliability_run(
    *,
    contacts: int = 2000,
    random_seed: int = 7,
    fault_seed: int = 1,
    hold_s: float = DEFAULT_HOLD_S,
    attempts: int = DEFAULT_ATTEMPTS,
    max_runs: int = DEFAULT_MAX_RUNS,
    changes: int | None = None,
    faults: Mapping[str, float] | None = None,
    memberstack_retry_after_s: int | None = 0,
    storage: Path | None = None,
) -> list[dict[str, Any]]:
    """Run the first load and the incremental phase under faults; return one result dict per phase.

    :param contacts: contacts of the demo seed over both locations.
    :param changes: contacts changed per location before the incremental run; default 5 %.
    :param faults: fault probabilities per kind; default ``FAULTS``.
    :param memberstack_retry_after_s: ``Retry-After`` seconds on the Memberstack sandbox's injected
        429s; None sends none, so the hook pauses one limiter interval (1 s) after each of them.
    """
    from ghl_memberstack.limits import reset_limiters
    from sandbox import seedgen
    from sandbox.testing import running_sandbox

    faults = dict(FAULTS if faults is None else faults)
    seed = seedgen.generate_demo_seed(contacts=contacts, random_seed=random_seed)
    pair_targets = {
        "demo_a": (seedgen.DEMO_LOCATION_A_ID, seedgen.DEMO_MEMBERSTACK_KEY_A),
        "demo_b": (seedgen.DEMO_LOCATION_B_ID, seedgen.DEMO_MEMBERSTACK_KEY_B),
    }
    # Limits off, and scaled up so that the headers do not slow the GHL limiter down to 10 requests a second.
    config = {
        "rate_limits": False,
        "rate_limit_scale": 100,
        "timeout_hold_s": hold_s,
        "random_seed": fault_seed,
    }
    changes = changes if changes is not None else max(5, contacts // 40)
    with contextlib.ExitStack() as stack:
        if storage is None:
            storage = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reliability-storage-")))
        sandbox = stack.enter_context(running_sandbox(seed=seed, config=config))
        stack.enter_context(
            patched_environment(
                {
                    **connection_environment(sandbox.ghl_url, sandbox.memberstack_url),
                    **sync_environment(storage),
                }
            )
        )
        reset_limiters()
        pairs = demo_pairs()
        results = []

        # Without Retry-After the Memberstack hook pauses every request for a whole second after a
        # 429, which is right for the real per-second limit but makes each injected 429 cost 1 s.
        sandbox.set_config("memberstack", fault_retry_after_s=memberstack_retry_after_s)
        for which in ("ghl", "memberstack"):
            sandbox.set_config(which, faults=faults)
        record = run_until_settled(
            pairs, run_prefix="reliability_first_load", attempts=attempts, max_runs=max_runs
        )
        injected = fault_counts(sandbox)
        writes = memberstack_writes(sandbox.stats("memberstack"))
        parity = check_sandbox_parity(sandbox.state(), pair_targets)
        results.append(_phase_result("first load", record, parity, injected, writes))

        for which in ("ghl", "memberstack"):
            sandbox.set_config(which, faults={})
        sandbox.set_config("ghl", child_changes_bump_contact=True)
        state = sandbox.state()
        rng = random.Random(f"reliability-changes:{random_seed}")
        scripted: Counter = Counter()
        for name, (location_id, _key) in pair_targets.items():
            pair = next(p for p in pairs if p.name == name)
            scripted += scripted_changes(state, location_id, pair.gohighlevel_conn_id, count=changes, rng=rng)
        before_faults = fault_counts(sandbox)
        writes_before = memberstack_writes(sandbox.stats("memberstack"))
        for which in ("ghl", "memberstack"):
            sandbox.set_config(which, faults=faults)
        record = run_until_settled(
            pairs, run_prefix="reliability_incremental", attempts=attempts, max_runs=max_runs
        )
        for which in ("ghl", "memberstack"):
            sandbox.set_config(which, faults={})
        injected = fault_counts(sandbox)
        for which, counts in before_faults.items():
            for kind, value in counts.items():
                injected[which][kind] = injected[which].get(kind, 0) - value
            injected[which] = {kind: count for kind, count in injected[which].items() if count}
        writes = memberstack_writes(sandbox.stats("memberstack")) - writes_before
        parity = check_sandbox_parity(sandbox.state(), pair_targets)
        result = _phase_result("incremental", record, parity, injected, writes)
        result["scripted_changes"] = dict(scripted)
        results.append(result)
    return results


def _print_phase(result: Mapping[str, Any]) -> None:
    parity = result["parity"]
    print(f"== {result['phase']}")
    if "scripted_changes" in result:
        print(f"   scripted GHL changes: {json.dumps(result['scripted_changes'], sort_keys=True)}")
    print(
        f"   DAG runs {result['dag_runs']}, task attempts {result['task_attempts']}, "
        f"failed attempts {json.dumps(result['task_failures'], sort_keys=True)}, "
        f"contacts left pending {result['pending_contacts']}, {result['duration_s']} s"
    )
    for which, counts in result["faults"].items():
        print(f"   faults injected by the {which} sandbox: {json.dumps(counts, sort_keys=True)}")
    print(f"   Memberstack write requests (faulted ones included): {result['memberstack_write_requests']}")
    print(
        f"   parity {parity['parity_percent']} % (members {parity['members']}, records {parity['records']}), "
        f"duplicates {parity['duplicates']}, lost changes {parity['lost_changes']}, "
        f"unexpected {parity['unexpected']}"
    )
    for example in parity["lost_examples"] + parity["unexpected_examples"]:
        print(f"     {example}")


def _prepare_process() -> None:
    """Give a plain process what the hooks need: an Airflow home and a Fernet key for the token store."""
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="reliability-airflow-home-"))
    if not os.environ.get("AIRFLOW__CORE__FERNET_KEY"):
        from cryptography.fernet import Fernet

        os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
    for name in [name for name in os.environ if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
        del os.environ[name]


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run both phases and print their figures; return 0 only at full parity."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=2000, help="contacts of the demo seed (default 2000)")
    parser.add_argument(
        "--seed", type=int, default=7, help="random seed of the demo seed and the changes (default 7)"
    )
    parser.add_argument(
        "--fault-seed", type=int, default=1, help="seed of the sandbox's fault sequence (default 1)"
    )
    parser.add_argument(
        "--hold-s",
        type=float,
        default=DEFAULT_HOLD_S,
        help="seconds a timeout fault delays the reply before the connection drops (default 2)",
    )
    parser.add_argument(
        "--attempts", type=int, default=DEFAULT_ATTEMPTS, help="attempts per task, as retries + 1 (default 4)"
    )
    parser.add_argument(
        "--max-runs", type=int, default=DEFAULT_MAX_RUNS, help="DAG runs per phase at most (default 4)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--verbose", action="store_true", help="also print the sync's log, one warning per retry"
    )
    args = parser.parse_args(argv)

    if not args.verbose:
        # Airflow configures its hooks' loggers from this setting when it is first imported.
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    _prepare_process()
    if not args.verbose:
        import logging

        # Importing Airflow configures logging, which would reset the levels set below.
        import airflow  # noqa: F401

        # Thousands of injected faults mean thousands of retry warnings; errors are still printed.
        for name in ("ghl_memberstack", "airflow.task.hooks", "sandbox"):
            logging.getLogger(name).setLevel(logging.ERROR)
    started = time.monotonic()
    results = reliability_run(
        contacts=args.contacts,
        random_seed=args.seed,
        fault_seed=args.fault_seed,
        hold_s=args.hold_s,
        attempts=args.attempts,
        max_runs=args.max_runs,
    )
    print(
        f"Reliability run over {args.contacts} demo contacts, faults {json.dumps(FAULTS)}, "
        f"{time.monotonic() - started:.0f} s in all"
    )
    for result in results:
        _print_phase(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0 if all(result["ok"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
