"""The steps of one parity run, as plain functions that tasks and tests call alike.

Per pair, ``observe_pair`` reads GHL in full within a request budget and builds the desired
state. ``reconcile_pair`` lists Memberstack in full and compares. With repair, it writes what
restores parity through the sync's guard and loader, commits the result as the pair's snapshot,
and lists Memberstack again to measure the parity after the repair. ``summarize`` writes the
parity report (``ghl_memberstack.parity_report``), and ``check`` fails the run when a pair missed
a threshold.

GHL contacts and tasks (one location-wide search) are always read in full. Notes and appointments
cost one request each per contact, so they are read for as many contacts as the rest of the budget
``GHL_MEMBERSTACK_PARITY_REQUEST_BUDGET`` covers, the contacts checked longest ago (the manifest's
``parity_checked``) first. The others are covered by later runs.

Like the sync, the pair's lease is taken in ``observe_pair`` and released at the end of
``reconcile_pair``, so no sync or other parity run of the pair interleaves. A dry run builds the
repair plan and writes nothing, not even the check times in the manifest. A run without repair
writes nothing to Memberstack and keeps the snapshot. It records only which contacts it checked,
in the manifest's ``parity_checked``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd

from ghl_memberstack import extract, report
from ghl_memberstack.parity_report import (
    append_history,
    build_report,
    json_default,
    pair_entry,
    read_history,
    summary_lines,
    write_report,
)
from ghl_memberstack.pairs import SyncPair
from ghl_memberstack.state import ENTITIES, SCHEMA_VERSION, DesiredState, QuarantineEntry
from ghl_memberstack.storage import Lease, LeaseTimeout, read_bytes, storage_root, write_atomic
from ghl_memberstack.sync import (
    LeaseKeeper,
    RunOptionsMixin,
    SyncError,
    SyncSettings,
    non_retryable_errors,
    pair_lease,
    read_status,
    work_dir,
)

log = logging.getLogger(__name__)

DEFAULT_DAG_ID = "ghl_memberstack_parity"
REPAIR_ENV = "GHL_MEMBERSTACK_PARITY_REPAIR"
# Task search pages hold at most this many tasks (the hook's default page size).
TASK_PAGE_SIZE = 100
STATUS_FILE = "status.json"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_boolean(name: str, raw: str, default: bool) -> bool:
    """Return the boolean an environment value stands for, or ``default`` when it is empty.

    :raises ValueError: the value is not 1/0, true/false, yes/no or on/off; the message names it.
    """
    value = raw.strip().lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 1, 0, true, false, yes, no, on, off; got {raw!r}.")


def repair_default(environ: Mapping[str, str] | None = None) -> bool:
    """Return the default of the ``repair`` Param: ``GHL_MEMBERSTACK_PARITY_REPAIR``, on when unset."""
    environ = os.environ if environ is None else environ
    return parse_boolean(REPAIR_ENV, environ.get(REPAIR_ENV, ""), True)


@dataclasses.dataclass(frozen=True)
class ParitySettings:
    """Settings of the parity steps, each read from an environment variable (see ``from_env``)."""

    # GHL requests one parity run may send per pair. The daily GHL limit is 200,000 per location,
    # and the hourly sync needs its share of it.
    request_budget: int = 50_000
    # The lowest entity's parity must reach this, in percent.
    min_parity_percent: float = 99.5
    # Quarantined contacts may be at most this share of the contacts read, in percent.
    max_quarantine_percent: float = 2.0

    ENV = {
        "request_budget": "GHL_MEMBERSTACK_PARITY_REQUEST_BUDGET",
        "min_parity_percent": "GHL_MEMBERSTACK_PARITY_MIN_PERCENT",
        "max_quarantine_percent": "GHL_MEMBERSTACK_PARITY_MAX_QUARANTINE_PERCENT",
    }

    def __post_init__(self) -> None:
        if self.request_budget < 1:
            raise ValueError(
                f"GHL_MEMBERSTACK_PARITY_REQUEST_BUDGET must be at least 1, got {self.request_budget!r}."
            )
        for name in ("min_parity_percent", "max_quarantine_percent"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise ValueError(f"{self.ENV[name]} must be between 0 and 100, got {value!r}.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ParitySettings:
        """Read the settings from the environment; unset variables keep their defaults.

        :raises ValueError: a variable is not a number or is out of range; the message names it.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            env = cls.ENV[field.name]
            raw = environ.get(env, "").strip()
            if not raw:
                continue
            try:
                values[field.name] = int(raw) if field.type in (int, "int") else float(raw)
            except ValueError:
                raise ValueError(f"{env} must be a number, got {raw!r}.") from None
        return cls(**values)

    def thresholds(self) -> dict[str, float]:
        """Return the thresholds as the report shows them."""
        return {
            "min_parity_percent": self.min_parity_percent,
            "max_quarantine_percent": self.max_quarantine_percent,
        }


@dataclasses.dataclass(frozen=True)
class ParityOptions(RunOptionsMixin):
    """The identity and params of one parity run."""

    dag_id: str
    run_id: str
    run_type: str = "manual"
    dry_run: bool = False
    force: bool = False
    repair: bool = True


class StaleObservationError(SyncError):
    """Another run committed the pair's snapshot after this run observed GHL."""


def options_from_context(context: Mapping[str, Any]) -> ParityOptions:
    """Build parity options from an Airflow task context; an unset ``repair`` takes the setting."""
    params = context.get("params") or {}
    dag_run = context.get("dag_run")
    run_type = getattr(dag_run, "run_type", None) or "manual"
    repair = params.get("repair")
    return ParityOptions(
        dag_id=str(getattr(dag_run, "dag_id", None) or context["dag"].dag_id),
        run_id=str(context["run_id"]),
        run_type=str(getattr(run_type, "value", run_type)),
        dry_run=bool(params.get("dry_run", False)),
        force=bool(params.get("force", False)),
        repair=repair_default() if repair is None else bool(repair),
    )


# --------------------------------------------------------------------------------------------
# Status files of the steps.


def _write_status(folder: Any, status: Mapping[str, Any]) -> None:
    write_atomic(folder / STATUS_FILE, json.dumps(status, default=json_default).encode("utf-8"))


def _new_status(pair: SyncPair, options: ParityOptions) -> dict[str, Any]:
    return {
        "pair": pair.name,
        "status": "running",
        "step": "observe",
        "error": None,
        "duration_s": 0.0,
        "complete": False,
        "partial_reason": None,
        "requests": {"ghl": 0, "ghl_budget": 0, "ghl_estimate": None, "memberstack": 0},
        "coverage": {},
        "quarantine": {"contacts_read": 0, "contacts_quarantined": 0, "share_percent": 0.0, "entries": []},
        "expectations": [],
        "quality_passed": True,
        "before": None,
        "after": None,
        "unmanaged": {"count": 0, "members": []},
        "other_location_members": 0,
        "repair": {"requested": options.repair, "applied": False, "planned_operations": 0},
        "snapshot": None,
    }


def _fail(folder: Any, status: dict[str, Any], error: BaseException, started: float) -> None:
    log.error("Parity pair %s failed in step %s: %s", status.get("pair"), status.get("step"), error)
    status.update(status="failed", error=f"{type(error).__name__}: {error}")
    status["duration_s"] = round(status["duration_s"] + time.monotonic() - started, 3)
    try:
        _write_status(folder, status)
    except OSError as write_error:
        log.error("Could not record the failure of parity pair %s: %s", status.get("pair"), write_error)


def _remove_tree(path: Any) -> None:
    if path.exists():
        path.fs.rm(path.path, recursive=True)


# --------------------------------------------------------------------------------------------
# Request estimate and coverage order.


def estimate_requests(*, contacts: int, valid_contacts: int, tasks: int, page_limit: int) -> int:
    """Estimate the GHL requests of a full observation, following how the hook pages.

    Contact search paging stops at the first short page, so N contacts take N // page_limit + 1
    requests. Task search paging stops at the first empty page, so T tasks take
    ceil(T / 100) + 1 requests. One request reads the custom field definitions, and each valid
    contact costs one notes and one appointments request. Retries come on top.
    """
    contact_pages = contacts // page_limit + 1
    task_pages = -(-tasks // TASK_PAGE_SIZE) + 1
    return contact_pages + 1 + task_pages + 2 * valid_contacts


def coverage_order(checked: Mapping[str, int], eligible: Callable[[], set[str]] | None = None) -> Any:
    """Return a function that orders contact ids by their last parity check, never-checked first.

    :param eligible: returns the contacts worth reading; the others are left out. The parity run
        leaves out contacts the mapping quarantines, since their notes would be quarantined too.
    """

    def order(contact_ids: list[str]) -> list[str]:
        if eligible is not None:
            keep = eligible()
            contact_ids = [contact_id for contact_id in contact_ids if contact_id in keep]
        return sorted(contact_ids, key=lambda contact_id: (checked.get(contact_id, -1), contact_id))

    return order


def _mapped_contacts(folder: Any, mapping_config: Any, location_id: str) -> Callable[[], set[str]]:
    """Return a function that reads the extracted contacts and returns those the mapping keeps."""
    from ghl_memberstack import mapping

    def eligible() -> set[str]:
        contacts = extract.read_entity(folder / "extract", "contacts")
        # Which contacts keep their email does not depend on custom fields, so none are mapped here.
        identities = mapping.build_desired(
            contacts,
            None,
            None,
            None,
            {},
            mapping_config.model_copy(update={"custom_fields": {}}),
            location_id=location_id,
            complete=False,
        )
        return {str(contact_id) for contact_id in identities.members.index}

    return eligible


# --------------------------------------------------------------------------------------------
# observe: GHL in full (within the budget) → desired state → expectations


def observe_pair(
    pair: SyncPair,
    options: ParityOptions,
    *,
    settings: ParitySettings | None = None,
    sync_settings: SyncSettings | None = None,
    root: Any = None,
    gohighlevel_hook: Any = None,
) -> dict[str, Any]:
    """Read one pair's GHL location in full within the request budget, and keep the pair's lease.

    :return: a small dict for ``reconcile_pair``: the pair, ``status`` (``observed`` or
        ``skipped``), the work folder, the base snapshot id and the location id.
    :raises LeaseTimeout: another run kept the pair's lease for the whole wait.
    """
    from ghl_memberstack.exceptions import GoHighLevelLocationInactiveError

    settings = settings or ParitySettings.from_env()
    sync_settings = sync_settings or SyncSettings.from_env()
    root = storage_root(root)
    folder = work_dir(root, options, pair.name)
    started = time.monotonic()
    _remove_tree(folder)
    status = _new_status(pair, options)
    _write_status(folder, status)

    lease = pair_lease(root, pair.name, options.lease_owner, sync_settings)
    try:
        lease.acquire()
    except LeaseTimeout as error:
        _fail(folder, status, error, started)
        raise

    hook = gohighlevel_hook
    try:
        if hook is None:
            from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

            hook = GoHighLevelHook(gohighlevel_conn_id=pair.gohighlevel_conn_id)
        with LeaseKeeper(lease) as keeper:
            observed = _observe(pair, options, settings, sync_settings, root, folder, status, hook)
            keeper.check()
    except GoHighLevelLocationInactiveError as error:
        log.warning("Skipping parity pair %s: its GHL location is not active (%s)", pair.name, error)
        status.update(status="skipped", error=str(error))
        status["duration_s"] = round(time.monotonic() - started, 3)
        _write_status(folder, status)
        lease.release()
        return {"pair": pair.to_dict(), "status": "skipped", "work_dir": str(folder)}
    except BaseException as error:
        status["requests"]["ghl"] = int(getattr(hook, "request_count", 0) or 0)
        _fail(folder, status, error, started)
        lease.release()
        raise
    status["duration_s"] = round(time.monotonic() - started, 3)
    _write_status(folder, status)
    return observed


def _observe(
    pair: SyncPair,
    options: ParityOptions,
    settings: ParitySettings,
    sync_settings: SyncSettings,
    root: Any,
    folder: Any,
    status: dict[str, Any],
    hook: Any,
) -> dict[str, Any]:
    from ghl_memberstack import mapping, quality
    from ghl_memberstack.snapshot import SnapshotStore, empty_applied

    mapping_config = mapping.load_mapping(pair.mapping)
    store = SnapshotStore(root, pair.name)
    manifest = store.manifest()
    current = manifest is not None and manifest.schema_version == SCHEMA_VERSION
    applied = store.applied(manifest) if current else empty_applied()
    checked = dict(manifest.parity_checked) if current else {}

    estimate = _estimate_before_reading(root, options.dag_id, pair.name, applied, checked, sync_settings)
    status["requests"].update(ghl_budget=settings.request_budget, ghl_estimate=estimate)
    if estimate is None:
        log.info(
            "Parity pair %s: no estimate yet, because the pair was never synced or checked; the budget is %d "
            "GHL requests",
            pair.name,
            settings.request_budget,
        )
    else:
        log.info(
            "Parity pair %s: a full observation takes about %d GHL requests; the budget is %d",
            pair.name,
            estimate,
            settings.request_budget,
        )

    observed_at_ms = int(time.time() * 1000)
    extractor = extract.Extractor(
        hook,
        folder / "extract",
        applied_updated={},
        cached_custom_fields=None,
        page_limit=sync_settings.search_page_limit,
        child_order=coverage_order(checked, _mapped_contacts(folder, mapping_config, hook.location_id)),
        child_request_budget=settings.request_budget,
    )
    result = extractor.run(extract.ExtractRequest(extract.MODE_FULL, None, None, ()))
    status["requests"]["ghl"] = result.requests
    status.update(complete=result.complete, partial_reason=result.partial_reason)
    status["counts_read"] = {entity: int(result.counts[entity]["extracted"]) for entity in ENTITIES}

    status["step"] = "desired"
    seen = extract.read_seen(folder / "extract")
    desired, contacts = _build_desired(folder, result, mapping_config, hook.location_id)
    covered = _covered_contacts(seen, desired)
    status["coverage"] = _coverage(seen, desired, covered, checked)
    status["requests"]["ghl_full_observation"] = estimate_requests(
        contacts=len(seen),
        valid_contacts=len(desired.members),
        tasks=extractor.tasks_listed,
        page_limit=sync_settings.search_page_limit,
    )
    status["counts_read"]["tasks_listed"] = extractor.tasks_listed
    status["quarantine"] = _quarantine_summary(desired, int(result.counts["contacts"]["extracted"]))

    status["step"] = "validate"
    quality_result = report.with_data_docs(
        root,
        options.dag_id,
        options.run_id,
        pair.name,
        lambda docs_dir: quality.validate_batch(
            contacts, desired, complete=result.complete, snapshot_size=len(applied.members), docs_dir=docs_dir
        ),
    )
    status["expectations"] = list(quality_result.expectations)
    status["quality_passed"] = bool(quality_result.success)

    _save_observation(folder, desired, covered, result, observed_at_ms)
    status.update(step="observed", status="observed")
    log.info(
        "Observed parity pair %s: %d contacts, %d valid, notes and appointments of %d read, %d GHL requests",
        pair.name,
        len(seen),
        len(desired.members),
        len(covered),
        result.requests,
    )
    return {
        "pair": pair.to_dict(),
        "status": "observed",
        "work_dir": str(folder),
        "base_snapshot_id": manifest.snapshot_id if current else None,
        "location_id": hook.location_id,
    }


def _estimate_before_reading(
    root: Any,
    dag_id: str,
    pair_name: str,
    applied: Any,
    checked: Mapping[str, int],
    sync_settings: SyncSettings,
) -> int | None:
    """Estimate a full observation from the last parity run's counts, else from the snapshot.

    :return: the estimate, or None for a pair that was never synced or checked.
    """
    for entry in reversed(read_history(root, dag_id)):
        counts = (entry.get("pairs") or {}).get(pair_name) or {}
        if counts.get("contacts_read") is not None:
            return estimate_requests(
                contacts=int(counts["contacts_read"]),
                valid_contacts=int(counts.get("valid_contacts") or 0),
                tasks=int(counts.get("tasks_read") or 0),
                page_limit=sync_settings.search_page_limit,
            )
    contacts = max(len(applied.members), len(checked))
    if contacts == 0:
        return None
    tasks = len(applied.records.get("ghl_tasks", ()))
    return estimate_requests(
        contacts=contacts, valid_contacts=contacts, tasks=tasks, page_limit=sync_settings.search_page_limit
    )


def _build_desired(
    folder: Any, result: Any, mapping_config: Any, location_id: str
) -> tuple[DesiredState, pd.DataFrame]:
    from ghl_memberstack import mapping

    frames = {entity: extract.read_entity(folder / "extract", entity) for entity in ENTITIES}
    desired = mapping.build_desired(
        frames["contacts"],
        frames["tasks"],
        frames["notes"],
        frames["appointments"],
        result.custom_fields,
        mapping_config,
        location_id=location_id,
        complete=result.complete,
    )
    parsed = extract.read_quarantine(folder / "extract" / "quarantine.json")
    desired.quarantine = _unique_quarantine([*parsed, *desired.quarantine])
    return desired, frames["contacts"]


def _unique_quarantine(entries: Iterable[QuarantineEntry]) -> list[QuarantineEntry]:
    unique: dict[tuple[str, str, str], QuarantineEntry] = {}
    for entry in entries:
        unique.setdefault((entry.entity, entry.ghl_id, entry.reason), entry)
    return list(unique.values())


def _covered_contacts(seen: pd.DataFrame, desired: DesiredState) -> list[str]:
    """Return the valid contacts whose tasks, notes and appointments were all read."""
    fetched = seen.loc[seen["fetched"].fillna(False).astype(bool), "contact_id"].astype(str)
    valid = set(desired.members.index.astype(str))
    return sorted(contact_id for contact_id in fetched if contact_id in valid)


def _coverage(
    seen: pd.DataFrame, desired: DesiredState, covered: list[str], checked: Mapping[str, int]
) -> dict[str, Any]:
    valid = [str(contact_id) for contact_id in desired.members.index]
    uncovered = [contact_id for contact_id in valid if contact_id not in set(covered)]
    never = sum(1 for contact_id in uncovered if contact_id not in checked)
    oldest = min((checked[c] for c in uncovered if c in checked), default=None)
    return {
        "contacts_read": int(len(seen)),
        "valid_contacts": len(valid),
        "covered_contacts": len(covered),
        "covered_percent": 100.0 if not valid else round(100.0 * len(covered) / len(valid), 3),
        "complete": len(covered) == len(valid),
        "uncovered_never_checked": never,
        "uncovered_oldest_check": _iso(oldest),
    }


def _iso(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return (
        dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def _quarantine_summary(desired: DesiredState, contacts_read: int) -> dict[str, Any]:
    contacts = {entry.ghl_id for entry in desired.quarantine if entry.entity == "contacts"}
    share = 0.0 if contacts_read == 0 else round(100.0 * len(contacts) / contacts_read, 3)
    return {
        "contacts_read": contacts_read,
        "contacts_quarantined": len(contacts),
        "share_percent": share,
        "entries": [{"entity": e.entity, "ghl_id": e.ghl_id, "reason": e.reason} for e in desired.quarantine],
    }


def _save_observation(
    folder: Any, desired: DesiredState, covered: list[str], result: Any, observed_at_ms: int
) -> None:
    target = folder / "desired"
    extract.write_parquet(target / "members.parquet", desired.members)
    for table, frame in desired.records.items():
        extract.write_parquet(target / f"records.{table}.parquet", frame)
    extract.write_quarantine(target / "quarantine.json", desired.quarantine)
    body = {
        "complete": desired.complete,
        "tables": sorted(desired.records),
        "covered": covered,
        "observed_at_ms": observed_at_ms,
        "extract": result.to_dict(),
    }
    write_atomic(target / "observation.json", json.dumps(body, default=json_default).encode("utf-8"))


def _load_observation(folder: Any) -> tuple[DesiredState, list[str], dict[str, Any]]:
    target = folder / "desired"
    data = read_bytes(target / "observation.json")
    if data is None:
        raise StaleObservationError(
            f"{target}/observation.json not found; clear observe_pair of this run and rerun it."
        )
    body = json.loads(data)
    desired = DesiredState(
        members=extract.read_parquet(target / "members.parquet"),
        records={
            table: extract.read_parquet(target / f"records.{table}.parquet") for table in body["tables"]
        },
        quarantine=extract.read_quarantine(target / "quarantine.json"),
        complete=bool(body["complete"]),
    )
    return desired, list(body["covered"]), body


# --------------------------------------------------------------------------------------------
# reconcile: Memberstack in full → findings → plan → guard → load → commit → findings after


def reconcile_pair(
    observed: Mapping[str, Any],
    options: ParityOptions,
    *,
    settings: ParitySettings | None = None,
    sync_settings: SyncSettings | None = None,
    root: Any = None,
    memberstack_hook: Any = None,
) -> dict[str, Any]:
    """Compare one pair with Memberstack and, with repair, restore parity; then release the lease.

    A pair skipped in ``observe_pair`` is passed through.

    :raises StaleObservationError: another run committed after this run observed GHL.
    :raises GuardError: the repair would change too many members and ``force`` is not set; the
        findings are recorded before.
    """
    pair = SyncPair.from_dict(observed["pair"])
    if observed.get("status") != "observed":
        return dict(observed)
    settings = settings or ParitySettings.from_env()
    sync_settings = sync_settings or SyncSettings.from_env()
    root = storage_root(root)
    folder = work_dir(root, options, pair.name)
    started = time.monotonic()
    status = read_status(folder) or _new_status(pair, options)
    status.update(step="reconcile", status="running", error=None)

    lease = pair_lease(root, pair.name, options.lease_owner, sync_settings)
    try:
        lease.acquire()
    except LeaseTimeout as error:
        _fail(folder, status, error, started)
        raise

    hook = memberstack_hook
    try:
        if hook is None:
            from ghl_memberstack.hooks.memberstack import MemberstackHook

            hook = MemberstackHook(memberstack_conn_id=pair.memberstack_conn_id)
        with LeaseKeeper(lease) as keeper:
            _reconcile(pair, observed, options, sync_settings, root, folder, status, hook, keeper)
    except BaseException as error:
        status["requests"]["memberstack"] = int(getattr(hook, "request_count", 0) or 0)
        _fail(folder, status, error, started)
        lease.release()
        raise
    lease.release()
    status["requests"]["memberstack"] = int(getattr(hook, "request_count", 0) or 0)
    status["duration_s"] = round(status["duration_s"] + time.monotonic() - started, 3)
    status.update(status="ok", step="done")
    _write_status(folder, status)
    return {"pair": pair.to_dict(), "status": "ok", "snapshot": status.get("snapshot")}


def _reconcile(
    pair: SyncPair,
    observed: Mapping[str, Any],
    options: ParityOptions,
    sync_settings: SyncSettings,
    root: Any,
    folder: Any,
    status: dict[str, Any],
    hook: Any,
    keeper: LeaseKeeper,
) -> None:
    from ghl_memberstack import mapping, parity_findings
    from ghl_memberstack.snapshot import SnapshotStore

    mapping_config = mapping.load_mapping(pair.mapping)
    store = SnapshotStore(root, pair.name)
    manifest = store.manifest()
    current = manifest is not None and manifest.schema_version == SCHEMA_VERSION
    base = observed.get("base_snapshot_id")
    current_id = manifest.snapshot_id if current else None
    if current_id != base and manifest is not None and manifest.run_id == options.run_id:
        # A retry after this run's own commit: the repairs written so far are in Memberstack, so
        # comparing again against the same GHL observation plans only what is left.
        log.info("Parity pair %s was committed by this run as %s; comparing again", pair.name, current_id)
    elif current_id != base:
        raise StaleObservationError(
            f"Parity pair {pair.name!r}: the snapshot changed from {base!r} to "
            f"{manifest.snapshot_id if manifest else None!r} after this run read GHL. Clear the whole run "
            "(observe_pair included) to check it again."
        )
    desired, covered, observation = _load_observation(folder)
    seen = extract.read_seen(folder / "extract")
    location_id = str(observed.get("location_id") or "")
    known = _known_member_ids(store, manifest if current else None)

    status["step"] = "compare"
    listing = parity_findings.observe_memberstack(hook, mapping_config)
    actual = parity_findings.actual_state(
        listing, mapping_config, location_id=location_id, desired=desired, known_member_ids=known
    )
    before = parity_findings.compare(desired, actual, mapping_config, covered_contact_ids=covered)
    status["before"] = before.to_dict()
    status["unmanaged"] = {"count": len(actual.unmanaged), "members": actual.unmanaged}
    status["other_location_members"] = actual.other_location
    _write_status(folder, status)
    log.info("Parity pair %s before repair: %s", pair.name, before.parity_by_entity())

    if not options.dry_run and not options.repair:
        _record_checked(store, manifest if current else None, covered, observation, seen)
        return
    if not status.get("quality_passed", True):
        status["repair"]["skipped_reason"] = "the batch expectations failed, so nothing is written"
        log.warning("Parity pair %s: the batch expectations failed, so no repair is planned", pair.name)
        return

    status["step"] = "plan"
    planning = _planning_desired(desired, actual, covered)
    applied_for_plan = parity_findings.planning_state(actual, planning)
    operations = _plan(planning, applied_for_plan, mapping_config)
    status["repair"]["planned_operations"] = len(operations)
    status["step"] = "guard"
    guard_outcome = _guard(operations, actual, options)
    status["repair"]["guard"] = guard_outcome
    if options.dry_run:
        status["plan"] = report.plan_summary(root, options.dag_id, options.run_id, pair.name, operations)
        log.info("Dry run of parity pair %s: %d operations planned, none written", pair.name, len(operations))
        return
    if not guard_outcome["passed"]:
        from ghl_memberstack.guard import GuardError

        raise GuardError(guard_outcome["message"])

    status["step"] = "repair"
    result = _repair(
        pair,
        store,
        manifest if current else None,
        operations,
        planning,
        options,
        location_id,
        hook,
        sync_settings,
    )
    status["repair"].update(
        applied=True,
        done=len(result.done),
        failed=len(result.failed),
        quarantined=sorted(result.quarantined_contacts),
        counts=result.counts,
    )
    keeper.check()
    status["step"] = "commit"
    status["snapshot"] = _commit(
        store, manifest if current else None, actual, planning, result, covered, observation, seen, options
    )

    status["step"] = "verify"
    listing = parity_findings.observe_memberstack(hook, mapping_config)
    after_actual = parity_findings.actual_state(
        listing, mapping_config, location_id=location_id, desired=desired, known_member_ids=known
    )
    after = parity_findings.compare(desired, after_actual, mapping_config, covered_contact_ids=covered)
    status["after"] = after.to_dict()
    log.info("Parity pair %s after repair: %s", pair.name, after.parity_by_entity())


def _known_member_ids(store: Any, manifest: Any) -> dict[str, str]:
    if manifest is None:
        return {}
    members = store.applied(manifest).members
    if "member_id" not in members.columns:
        return {}
    linked = members["member_id"].dropna()
    return {str(contact_id): str(member_id) for contact_id, member_id in linked.items()}


def _planning_desired(desired: DesiredState, actual: Any, covered: list[str]) -> DesiredState:
    """Return the desired state in which uncovered contacts keep their notes and appointments as they are.

    This run did not read the notes and appointments of uncovered contacts, so their records (and
    their member json, where notes or appointments target it) are taken from Memberstack, and the
    plan leaves them alone.
    """
    covered_set = set(covered)
    uncovered = [contact_id for contact_id in desired.members.index if contact_id not in covered_set]
    if not uncovered:
        return desired
    records = {}
    for table, frame in desired.records.items():
        have = actual.applied.records.get(table)
        if table == "ghl_tasks" or have is None:
            records[table] = frame
            continue
        covered_records = frame[frame["contact_id"].isin(covered_set)]
        others = have[have["contact_id"].isin(uncovered)].reindex(columns=frame.columns)
        others = others.astype(frame.dtypes.to_dict())
        records[table] = pd.concat([covered_records, others]) if not others.empty else covered_records
    members = desired.members
    if "json" in members.columns and members["json"].notna().any():
        members = members.copy()
        have_json = actual.applied.members["json"]
        for contact_id in uncovered:
            if contact_id in have_json.index:
                # NOTE: the member json then keeps its tasks as Memberstack holds them too, until a
                # later run covers the contact.
                members.at[contact_id, "json"] = have_json.at[contact_id]
    return DesiredState(
        members=members, records=records, quarantine=desired.quarantine, complete=desired.complete
    )


def _plan(desired: DesiredState, applied: Any, mapping_config: Any) -> list[Any]:
    from ghl_memberstack import diff

    return diff.plan_operations(desired, applied, mapping_config, observed_contact_ids=desired.members.index)


def _guard(operations: list[Any], actual: Any, options: ParityOptions) -> dict[str, Any]:
    """Run the sync's mass-change guard and return its outcome instead of raising it."""
    from ghl_memberstack import guard

    max_share, max_count = guard.guard_limits()
    try:
        impact = guard.check_guard(
            operations, actual.applied, max_share=max_share, max_count=max_count, force=options.force
        )
    except guard.GuardError as error:
        impact = error.impact
        return {"passed": False, "message": str(error), **(dataclasses.asdict(impact) if impact else {})}
    return {"passed": True, "message": "", **dataclasses.asdict(impact)}


def _repair(
    pair: SyncPair,
    store: Any,
    manifest: Any,
    operations: list[Any],
    planning: DesiredState,
    options: ParityOptions,
    location_id: str,
    hook: Any,
    sync_settings: SyncSettings,
) -> Any:
    from ghl_memberstack import load, mapping

    if not operations:
        return load.LoadResult()
    loader = load.Loader(
        hook,
        store.journal(manifest.snapshot_id if manifest is not None else None),
        location_id=location_id,
        concurrency=sync_settings.load_concurrency,
        run_id=options.run_id,
    )
    loader.preflight(mapping.load_mapping(pair.mapping))
    return loader.run(operations, desired=planning, observed_contact_ids=planning.members.index)


def _commit(
    store: Any,
    manifest: Any,
    actual: Any,
    planning: DesiredState,
    result: Any,
    covered: list[str],
    observation: Mapping[str, Any],
    seen: pd.DataFrame,
    options: ParityOptions,
) -> str:
    """Commit what the repair applied as the pair's snapshot, with the new check times."""
    from ghl_memberstack import load
    from ghl_memberstack.snapshot import Manifest
    from ghl_memberstack.sync import next_watermark

    applied = load.apply_result(actual.applied, planning, result, observed_contact_ids=planning.members.index)
    read = set(seen["contact_id"].astype(str))
    held_back = set(result.pending) | set(result.forgotten)
    old_pending = set(manifest.pending) if manifest is not None else set()
    # Pending contacts this run covered and wrote in full are done; the others stay pending.
    pending = tuple(sorted(((old_pending - set(covered)) & read) | held_back))
    watermark = next_watermark(
        seen, manifest.watermark_ms if manifest is not None else None, pending, backfill=False
    )
    committed = store.commit(
        applied,
        Manifest(
            watermark_ms=watermark,
            pending=pending,
            custom_fields=tuple(observation["extract"]["custom_fields"]),
            run_id=options.run_id,
            parity_checked=_checked_times(manifest, covered, observation, read),
        ),
    )
    return committed.snapshot_id


def _checked_times(
    manifest: Any, covered: list[str], observation: Mapping[str, Any], read: set[str]
) -> dict[str, int]:
    checked = {
        cid: ms
        for cid, ms in (manifest.parity_checked if manifest is not None else {}).items()
        if cid in read
    }
    stamp = int(observation["observed_at_ms"])
    checked.update({contact_id: stamp for contact_id in covered})
    return checked


def _record_checked(
    store: Any, manifest: Any, covered: list[str], observation: Mapping[str, Any], seen: pd.DataFrame
) -> None:
    """Store the check times of a run without repair in the manifest; the snapshot stays the same."""
    if manifest is None:
        log.info("Parity pair %s has no snapshot yet, so the check times are not stored", store.pair_name)
        return
    read = set(seen["contact_id"].astype(str))
    updated = dataclasses.replace(
        manifest, parity_checked=_checked_times(manifest, covered, observation, read)
    )
    write_atomic(store.manifest_path, updated.to_json())
    log.info("Stored parity check times of %d contacts of pair %s", len(covered), store.pair_name)


# --------------------------------------------------------------------------------------------
# summarize and check


def summarize(
    pair_names: Iterable[str],
    options: ParityOptions,
    *,
    settings: ParitySettings | None = None,
    sync_settings: SyncSettings | None = None,
    root: Any = None,
) -> dict[str, Any]:
    """Write the parity report from the pairs' status files, and release leases the run still holds.

    :return: ``status``, ``passed``, the check's ``reasons`` and the paths of both report files.
    """
    settings = settings or ParitySettings.from_env()
    sync_settings = sync_settings or SyncSettings.from_env()
    root = storage_root(root)
    names = list(pair_names)
    entries = {}
    for name in names:
        status = read_status(work_dir(root, options, name)) or {}
        entries[name] = pair_entry(status, settings)
        _release_leftover_lease(root, name, options, sync_settings)
    history = read_history(root, options.dag_id)
    parity_report = build_report(options, entries, settings, history=history)
    data_docs = report.write_data_docs_index(root, options.dag_id, options.run_id, names)
    if data_docs:
        parity_report["data_docs"] = data_docs
    paths = write_report(root, parity_report)
    append_history(root, options.dag_id, parity_report, history)
    log.info("Parity report written to %s and %s", paths["json"], paths["html"])
    for line in summary_lines(parity_report):
        log.info("%s", line)
    _prune(root, options, sync_settings, run_ok=parity_report["status"] == "ok")
    return {
        "status": parity_report["status"],
        "passed": parity_report["check"]["passed"],
        "reasons": parity_report["check"]["reasons"],
        "report_json": paths["json"],
        "report_html": paths["html"],
    }


def _release_leftover_lease(
    root: Any, pair_name: str, options: ParityOptions, sync_settings: SyncSettings
) -> None:
    """Release the pair's lease if this run still holds it, as after a failed step."""
    path = root / "locks" / f"{pair_name}.lease.json"
    data = read_bytes(path)
    if data is None:
        return
    try:
        holder = json.loads(data).get("owner")
    except ValueError:
        return
    if holder != options.lease_owner:
        return
    quick = dataclasses.replace(sync_settings, pair_lease_wait_s=0.0)
    lease: Lease = pair_lease(root, pair_name, options.lease_owner, quick)
    with lease:
        log.info("Released the lease of parity pair %s left by this run", pair_name)


def _prune(root: Any, options: ParityOptions, sync_settings: SyncSettings, *, run_ok: bool) -> None:
    # Cleanup never changes the outcome of a run, so its failures are only logged.
    try:
        if run_ok:
            _remove_tree(root / "runs" / options.dag_id / options.run_id)
        report.prune_reports(root, options.dag_id, retention_days=sync_settings.report_retention_days)
        report.prune_plans(root, options.dag_id, retention_days=sync_settings.report_retention_days)
    except OSError as error:
        log.warning("Could not prune old parity reports or work folders: %s", error)


def check(outcome: Mapping[str, Any]) -> None:
    """Raise ``ParityCheckFailed`` when the run missed a threshold or a pair failed.

    :raises ParityCheckFailed: the message lists every reason and the report path.
    """
    if outcome.get("passed"):
        return
    reasons = "; ".join(outcome.get("reasons") or ["the report recorded no reason"])
    raise ParityCheckFailed(
        f"The parity check failed: {reasons}. The report is at {outcome.get('report_html')}"
    )


class ParityCheckFailed(SyncError):
    """The parity run missed a threshold, after repair or without it, or a pair failed."""


# --------------------------------------------------------------------------------------------
# Without a scheduler.


def run_parity(
    options: ParityOptions,
    pair_names: Iterable[str] | None = None,
    *,
    pairs_file: str | None = None,
    settings: ParitySettings | None = None,
    sync_settings: SyncSettings | None = None,
    root: Any = None,
) -> dict[str, Any]:
    """Run a whole parity run in this process, pair after pair, and write its report.

    A failing pair does not stop the others; the report records it. The threshold check is not
    raised here: the returned ``passed`` and ``reasons`` hold its outcome.
    """
    from ghl_memberstack.sync import resolve_pairs

    pairs = resolve_pairs(pair_names, pairs_file=pairs_file)
    kwargs = {"settings": settings, "sync_settings": sync_settings, "root": root}
    for pair in pairs:
        try:
            observed = observe_pair(pair, options, **kwargs)
            reconcile_pair(observed, options, **kwargs)
        except Exception as error:  # noqa: BLE001 - the failure is in the pair's status and report
            log.error("Parity pair %s failed: %s", pair.name, error)
    return summarize([pair.name for pair in pairs], options, **kwargs)


# --------------------------------------------------------------------------------------------
# Task entry points: the DAG calls these. Errors that retries cannot fix become
# AirflowFailException, so the task fails at once.


def _fail_fast(function: Any, *args: Any) -> Any:
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return function(*args)
    except non_retryable_errors() as error:
        raise AirflowFailException(f"{type(error).__name__}: {error}") from error


def observe_pair_task(pair: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``observe_pair`` for a task."""
    return _fail_fast(observe_pair, SyncPair.from_dict(pair), ParityOptions.from_dict(options))


def reconcile_pair_task(observed: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``reconcile_pair`` for a task."""
    return _fail_fast(reconcile_pair, observed, ParityOptions.from_dict(options))


def summarize_task(pairs: list[Mapping[str, Any]] | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Write the parity report; the check task decides whether the run fails."""
    from airflow.sdk.exceptions import AirflowFailException

    if pairs is None:
        raise AirflowFailException("No sync pairs were resolved, so no pair ran; read the resolve_pairs log.")
    return summarize([pair["name"] for pair in pairs], ParityOptions.from_dict(options))


def check_task(outcome: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fail the run at once (no retries) when the parity check failed."""
    from airflow.sdk.exceptions import AirflowFailException

    if outcome is None:
        raise AirflowFailException("The parity report was not written, so the check cannot pass.")
    try:
        check(outcome)
    except ParityCheckFailed as error:
        raise AirflowFailException(str(error)) from error
    return {"passed": True, "report_html": outcome.get("report_html")}
