"""The steps of one sync run, as plain functions that tasks, tests and benchmarks call alike.

Per pair: extract → validate → desired state → plan → guard (``prepare_pair``), then load → commit
(``load_pair``), then the run's report (``summarize``). ``run_pair`` and ``run_sync`` chain them
without a scheduler.

A pair's lease on the storage keeps runs of one pair from interleaving, whether manual, scheduled,
backfill or parity runs. ``prepare_pair`` takes it and keeps it, ``load_pair`` takes it over (the
owner string is the same, so it does not wait) and releases it after the commit, and ``summarize``
releases a lease its run still holds after a failure. Another run waits up to
``GHL_MEMBERSTACK_PAIR_LEASE_WAIT_S`` seconds, then stops with ``LeaseTimeout``.

Between the tasks only small dicts travel (paths, counts, ids). The extract, the desired state and
the plan live in the run's work folder ``<storage>/runs/<dag_id>/<run_id>/<pair>/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from ghl_memberstack import extract, report
from ghl_memberstack.pairs import (
    PairsError,
    SyncPair,
    load_pairs,
    read_pairs_variable,
    resolve_pairs_path,
    select_pairs,
)
from ghl_memberstack.state import ENTITIES, SCHEMA_VERSION, DesiredState, Operation, OpKind, QuarantineEntry
from ghl_memberstack.storage import Lease, LeaseLost, LeaseTimeout, read_bytes, storage_root, write_atomic

log = logging.getLogger(__name__)

DEFAULT_DAG_ID = "ghl_memberstack_sync"
STATUS_FILE = "status.json"


@dataclasses.dataclass(frozen=True)
class SyncSettings:
    """Settings of the sync steps, each read from an environment variable (see ``from_env``)."""

    # Seconds subtracted from the watermark, since GHL search results lag writes by a few seconds.
    search_overlap_s: float = 300.0
    search_page_limit: int = 500
    pair_lease_ttl_s: float = 3600.0
    pair_lease_wait_s: float = 600.0
    pair_lease_poll_s: float = 5.0
    load_concurrency: int = 4
    report_retention_days: int = 30

    ENV = {
        "search_overlap_s": "GHL_MEMBERSTACK_SEARCH_OVERLAP_S",
        "search_page_limit": "GHL_MEMBERSTACK_SEARCH_PAGE_LIMIT",
        "pair_lease_ttl_s": "GHL_MEMBERSTACK_PAIR_LEASE_TTL_S",
        "pair_lease_wait_s": "GHL_MEMBERSTACK_PAIR_LEASE_WAIT_S",
        "pair_lease_poll_s": "GHL_MEMBERSTACK_PAIR_LEASE_POLL_S",
        "load_concurrency": "GHL_MEMBERSTACK_LOAD_CONCURRENCY",
        "report_retention_days": "GHL_MEMBERSTACK_REPORT_RETENTION_DAYS",
    }

    def __post_init__(self) -> None:
        for name, env in self.ENV.items():
            if getattr(self, name) < 0:
                raise ValueError(f"{env} must not be negative, got {getattr(self, name)!r}.")
        if not 1 <= self.search_page_limit <= 500:
            raise ValueError(
                f"GHL_MEMBERSTACK_SEARCH_PAGE_LIMIT must be between 1 and 500 (the GHL search maximum), "
                f"got {self.search_page_limit!r}."
            )
        if self.pair_lease_ttl_s <= 0 or self.load_concurrency < 1:
            raise ValueError(
                "GHL_MEMBERSTACK_PAIR_LEASE_TTL_S must be positive and GHL_MEMBERSTACK_LOAD_CONCURRENCY "
                "at least 1."
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SyncSettings:
        """Read the settings from the environment; unset variables keep their defaults.

        :raises ValueError: a variable is not a number; the message names it.
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


class RunOptionsMixin:
    """XCom round trip and lease owner shared by the run options of the sync and parity DAGs."""

    dag_id: str
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a plain dict, small enough for XCom."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build options from the dict that :meth:`to_dict` returns."""
        names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{key: value for key, value in data.items() if key in names})

    @property
    def lease_owner(self) -> str:
        """The lease owner string of this run, the same in every task and retry of the run."""
        return f"{self.dag_id}/{self.run_id}"


@dataclasses.dataclass(frozen=True)
class RunOptions(RunOptionsMixin):
    """Identity and params of one DAG run, and the data interval of a backfill run."""

    dag_id: str
    run_id: str
    run_type: str = "manual"
    dry_run: bool = False
    full_refresh: bool = False
    force: bool = False
    interval_start_ms: int | None = None
    interval_end_ms: int | None = None


class SyncError(Exception):
    """A sync step stopped for a reason that a retry of the same task does not fix."""


class QualityCheckError(SyncError):
    """A batch expectation failed, so the load was stopped."""


class StalePlanError(SyncError):
    """The pair's snapshot changed after the plan was built, so the plan may no longer apply."""


class OperationsFailedError(SyncError):
    """Some Memberstack writes failed; what was written is committed and the rest stays pending."""


def non_retryable_errors() -> tuple[type[BaseException], ...]:
    """Return the error types that fail a task at once instead of retrying it."""
    from ghl_memberstack.exceptions import (
        GoHighLevelAuthError,
        GoHighLevelConfigError,
        MemberstackConfigError,
    )
    from ghl_memberstack.guard import GuardError
    from ghl_memberstack.mapping import MappingError
    from ghl_memberstack.snapshot import SnapshotError

    return (
        SyncError,
        PairsError,
        MappingError,
        GuardError,
        SnapshotError,
        LeaseTimeout,
        LeaseLost,
        GoHighLevelAuthError,
        GoHighLevelConfigError,
        MemberstackConfigError,
    )


def work_dir(root: Any, options: RunOptions, pair_name: str) -> Any:
    """Return the work folder of one pair in one run."""
    return root / "runs" / options.dag_id / options.run_id / pair_name


def pair_lease(root: Any, pair_name: str, owner: str, settings: SyncSettings) -> Lease:
    """Return the lease that keeps runs of one pair apart (not yet acquired)."""
    return Lease(
        root / "locks" / f"{pair_name}.lease.json",
        owner=owner,
        ttl_s=settings.pair_lease_ttl_s,
        wait_s=settings.pair_lease_wait_s,
        poll_s=settings.pair_lease_poll_s,
    )


class LeaseKeeper:
    """Renews a held lease in a background thread while a long step runs."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lost: LeaseLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pair-lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = max(self.lease.ttl_s / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                self.lease.renew()
            except LeaseLost as error:
                log.error("Lost the pair lease %s: %s", self.lease.path, error)
                self.lost = error
                return

    def check(self) -> None:
        """Raise the error of a lost lease, so no commit follows another owner's writes."""
        if self.lost is not None:
            raise self.lost


# Status files: each step records its outcome, so the report also covers tasks that failed.


def _status_path(folder: Any) -> Any:
    return folder / STATUS_FILE


def read_status(folder: Any) -> dict[str, Any] | None:
    """Read the status a pair's steps recorded in its work folder, or None when none ran."""
    data = read_bytes(_status_path(folder))
    return None if data is None else json.loads(data)


def _write_status(folder: Any, status: Mapping[str, Any]) -> None:
    write_atomic(_status_path(folder), json.dumps(status, default=_json_default).encode("utf-8"))


def _json_default(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    return str(value)


def _new_status(pair: SyncPair, options: RunOptions) -> dict[str, Any]:
    return {
        "pair": pair.name,
        "status": "running",
        "step": "extract",
        "error": None,
        "dry_run": options.dry_run,
        "duration_s": 0.0,
        "counts": report.empty_counts(),
        "quarantine": [],
        "expectations": [],
        "requests": {"ghl": 0, "memberstack": 0},
        "mode": None,
        "complete": False,
        "partial_reason": None,
        "operations": 0,
        "committed_snapshot": None,
    }


# Resolving pairs and options.


def resolve_pairs(requested: Iterable[str] | None = None, *, pairs_file: str | None = None) -> list[SyncPair]:
    """Load the pairs file, select the requested pairs and check each pair's mapping file.

    :param pairs_file: the pairs file; when None, the Variable ``ghl_memberstack_sync_pairs`` or the
        default file.
    :raises PairsError: the pairs file is invalid or a requested name is unknown.
    :raises MappingError: a selected pair's mapping file is invalid.
    """
    from ghl_memberstack.mapping import load_mapping

    path = resolve_pairs_path(pairs_file if pairs_file is not None else read_pairs_variable())
    selected = select_pairs(load_pairs(path), requested)
    for pair in selected:
        load_mapping(pair.mapping)
    log.info("Sync pairs from %s: %s", path, ", ".join(pair.name for pair in selected))
    return selected


def options_from_context(context: Mapping[str, Any]) -> RunOptions:
    """Build run options from an Airflow task context.

    Only a backfill run takes the data interval. Other runs read from the stored watermark, because
    a manual run in Airflow 3 may have no data interval at all.
    """
    params = context.get("params") or {}
    dag_run = context.get("dag_run")
    run_type = getattr(dag_run, "run_type", None) or "manual"
    run_type = str(getattr(run_type, "value", run_type))
    start = end = None
    if run_type == "backfill":
        start = _epoch_ms(context.get("data_interval_start"))
        end = _epoch_ms(context.get("data_interval_end"))
    return RunOptions(
        dag_id=str(getattr(dag_run, "dag_id", None) or context["dag"].dag_id),
        run_id=str(context["run_id"]),
        run_type=run_type,
        dry_run=bool(params.get("dry_run", False)),
        full_refresh=bool(params.get("full_refresh", False)),
        force=bool(params.get("force", False)),
        interval_start_ms=start,
        interval_end_ms=end,
    )


def _epoch_ms(value: Any) -> int | None:
    if value is None:
        return None
    return int(value.timestamp() * 1000)


# prepare: extract → validate → desired → plan → guard


def prepare_pair(
    pair: SyncPair,
    options: RunOptions,
    *,
    settings: SyncSettings | None = None,
    root: Any = None,
    gohighlevel_hook: Any = None,
) -> dict[str, Any]:
    """Extract, validate and plan one pair, and keep the pair's lease for ``load_pair``.

    :return: a small dict for ``load_pair``: the pair, ``status`` (``planned`` or ``skipped``), the
        work folder, the base snapshot id and the operation count.
    :raises LeaseTimeout: another run kept the pair's lease for the whole wait.
    """
    from ghl_memberstack.exceptions import GoHighLevelLocationInactiveError

    settings = settings or SyncSettings.from_env()
    root = storage_root(root)
    folder = work_dir(root, options, pair.name)
    started = time.monotonic()
    _remove_tree(folder)
    status = _new_status(pair, options)
    _write_status(folder, status)

    lease = pair_lease(root, pair.name, options.lease_owner, settings)
    try:
        lease.acquire()
    except LeaseTimeout as error:
        _fail(folder, status, "lease", error, started)
        raise

    hook = gohighlevel_hook
    try:
        if hook is None:
            from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

            hook = GoHighLevelHook(gohighlevel_conn_id=pair.gohighlevel_conn_id)
        with LeaseKeeper(lease) as keeper:
            prepared = _prepare(pair, options, settings, root, folder, status, hook)
            keeper.check()
    except GoHighLevelLocationInactiveError as error:
        log.warning("Skipping sync pair %s: its GHL location is not active (%s)", pair.name, error)
        status.update(status="skipped", step="extract", error=str(error))
        _finish_step(folder, status, started, hook)
        lease.release()
        return {"pair": pair.to_dict(), "status": "skipped", "work_dir": str(folder)}
    except BaseException as error:
        _fail(folder, status, status["step"], error, started, hook)
        lease.release()
        raise

    _finish_step(folder, status, started, hook)
    return prepared


def _prepare(
    pair: SyncPair,
    options: RunOptions,
    settings: SyncSettings,
    root: Any,
    folder: Any,
    status: dict[str, Any],
    hook: Any,
) -> dict[str, Any]:
    from ghl_memberstack import diff, guard, mapping, quality
    from ghl_memberstack.snapshot import SnapshotStore

    mapping_config = mapping.load_mapping(pair.mapping)
    store = SnapshotStore(root, pair.name)
    manifest = store.manifest()
    current = manifest is not None and manifest.schema_version == SCHEMA_VERSION
    applied = _applied_with_journal(store, manifest if current else None)

    status["step"] = "extract"
    request = extract.plan_request(
        manifest=manifest,
        run_type=options.run_type,
        full_refresh=options.full_refresh,
        interval_start_ms=options.interval_start_ms,
        interval_end_ms=options.interval_end_ms,
        overlap_ms=int(settings.search_overlap_s * 1000),
    )
    extractor = extract.Extractor(
        hook,
        folder / "extract",
        applied_updated={**read_quarantine_memory(root, pair.name), **_applied_updated(applied)},
        cached_custom_fields=list(manifest.custom_fields) if current and manifest.custom_fields else None,
        page_limit=settings.search_page_limit,
    )
    result = extractor.run(request)
    status.update(mode=result.mode, complete=result.complete, partial_reason=result.partial_reason)
    if result.partial_reason == "cursor_error":
        from ghl_memberstack.exceptions import GoHighLevelCursorError

        # A search that repeats a cursor may have skipped contacts, so nothing of it is loaded.
        raise GoHighLevelCursorError(
            f"Sync pair {pair.name!r}: the contact search of location {hook.location_id!r} returned a "
            "searchAfter cursor twice, so the run stops before loading and infers no deletions. Rerun it, "
            "and report the location to HighLevel if it happens again."
        )
    seen = extract.read_seen(folder / "extract")
    observed = seen.loc[seen["fetched"].fillna(False).astype(bool), "contact_id"].astype(str).tolist()
    parse_quarantine = extract.read_quarantine(folder / "extract" / "quarantine.json")

    status["step"] = "desired"
    frames = {entity: extract.read_entity(folder / "extract", entity) for entity in ENTITIES}
    observed_set = set(observed)
    contacts = frames["contacts"]
    contacts = contacts[contacts["id"].astype(str).isin(observed_set)].reset_index(drop=True)
    desired = mapping.build_desired(
        contacts,
        frames["tasks"],
        frames["notes"],
        frames["appointments"],
        result.custom_fields,
        mapping_config,
        location_id=hook.location_id,
        complete=result.complete,
    )
    # Contacts that failed validation are still present in GHL, so a complete observation must
    # not treat them as gone.
    desired.quarantine = _unique_quarantine([*parse_quarantine, *desired.quarantine])

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
    if not quality_result.success:
        failed = [
            str(e.get("name") or e.get("expectation") or e)
            for e in quality_result.expectations
            if not e.get("success", True)
        ]
        raise QualityCheckError(
            f"Sync pair {pair.name!r}: the batch failed the expectations {failed}, so nothing was loaded. "
            "Read the expectations in the run report, fix the data in GHL, then rerun."
        )

    status["step"] = "plan"
    operations = diff.plan_operations(desired, applied, mapping_config, observed_contact_ids=observed)
    status["step"] = "guard"
    max_share, max_count = guard.guard_limits()
    guard.check_guard(operations, applied, max_share=max_share, max_count=max_count, force=options.force)

    _save_plan(folder, desired, operations, result)
    status.update(
        step="planned",
        status="planned",
        operations=len(operations),
        quarantine=_quarantine_dicts(desired.quarantine),
        counts=count_outcomes(result.counts, desired, operations, observed_set, failed_keys=set()),
    )
    return {
        "pair": pair.to_dict(),
        "status": "planned",
        "work_dir": str(folder),
        "base_snapshot_id": manifest.snapshot_id if current else None,
        "operations": len(operations),
        "location_id": hook.location_id,
    }


def _applied_with_journal(store: Any, manifest: Any) -> Any:
    """Read the applied state with the finished operations of an interrupted run folded in.

    A run that crashed after some writes left them in the journal of its base snapshot, so a plan
    made against this state does not repeat them.
    """
    from ghl_memberstack.load import fold_journal
    from ghl_memberstack.snapshot import empty_applied

    applied = store.applied(manifest) if manifest is not None else empty_applied()
    return fold_journal(applied, store.journal(manifest.snapshot_id if manifest is not None else None))


def _quarantine_memory_path(root: Any, pair_name: str) -> Any:
    return root / "sync" / pair_name / "quarantined_contacts.json"


def read_quarantine_memory(root: Any, pair_name: str) -> dict[str, int]:
    """Return the ``dateUpdated`` (epoch ms) of each contact quarantined when it was last read.

    Such a contact has no member and no applied row, so without this record every run that
    re-reads it inside the search overlap would count it as changed and read its children again.
    """
    data = read_bytes(_quarantine_memory_path(root, pair_name))
    if data is None:
        return {}
    try:
        return {str(key): int(value) for key, value in json.loads(data).items()}
    except (ValueError, TypeError, AttributeError):
        log.warning("Ignoring the unreadable quarantine record of sync pair %s", pair_name)
        return {}


def _remember_quarantine(
    root: Any, pair_name: str, seen: pd.DataFrame, desired: DesiredState, *, complete: bool
) -> None:
    """Update the quarantine record after a commit: observed contacts replace their old entries."""
    fetched = seen[seen["fetched"].fillna(False).astype(bool)]
    dates = dict(zip(fetched["contact_id"].astype(str), fetched["date_updated"].astype(object), strict=True))
    memory = {} if complete else read_quarantine_memory(root, pair_name)
    for contact_id in dates:
        memory.pop(contact_id, None)
    for entry in desired.quarantine:
        date = dates.get(entry.ghl_id)
        if entry.entity == "contacts" and date is not None and date is not pd.NA:
            memory[entry.ghl_id] = int(date)
    write_atomic(_quarantine_memory_path(root, pair_name), json.dumps(memory, sort_keys=True).encode("utf-8"))


def _applied_updated(applied: Any) -> dict[str, int]:
    members = applied.members
    if members.empty or "date_updated" not in members.columns:
        return {}
    values = members["date_updated"]
    return {
        str(contact_id): int(value)
        for contact_id, value in zip(members.index, values.astype(object), strict=True)
        if value is not None and value is not pd.NA
    }


def _unique_quarantine(entries: Iterable[QuarantineEntry]) -> list[QuarantineEntry]:
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for entry in entries:
        key = (entry.entity, entry.ghl_id, entry.reason)
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def _quarantine_dicts(entries: Iterable[QuarantineEntry]) -> list[dict[str, str]]:
    return [{"entity": e.entity, "ghl_id": e.ghl_id, "reason": e.reason} for e in entries]


# The plan on the storage: desired state frames, operations and the extract summary.


def _save_plan(folder: Any, desired: DesiredState, operations: list[Operation], result: Any) -> None:
    plan = folder / "plan"
    extract.write_parquet(plan / "members.parquet", desired.members)
    for table, frame in desired.records.items():
        extract.write_parquet(plan / f"records.{table}.parquet", frame)
    extract.write_quarantine(plan / "quarantine.json", desired.quarantine)
    body = {
        "complete": desired.complete,
        "tables": sorted(desired.records),
        "extract": result.to_dict(),
        "operations": [_operation_to_dict(op) for op in operations],
    }
    write_atomic(plan / "plan.json", json.dumps(body, default=_json_default).encode("utf-8"))


def _load_plan(folder: Any) -> tuple[DesiredState, list[Operation], extract.ExtractResult]:
    plan = folder / "plan"
    data = read_bytes(plan / "plan.json")
    if data is None:
        raise StalePlanError(f"{plan}/plan.json not found; clear prepare_pair of this run and run it again.")
    body = json.loads(data)
    members = extract.read_parquet(plan / "members.parquet")
    records = {table: extract.read_parquet(plan / f"records.{table}.parquet") for table in body["tables"]}
    desired = DesiredState(
        members=members,
        records=records,
        quarantine=extract.read_quarantine(plan / "quarantine.json"),
        complete=bool(body["complete"]),
    )
    operations = [_operation_from_dict(op) for op in body["operations"]]
    return desired, operations, extract.ExtractResult.from_dict(body["extract"])


def _operation_to_dict(operation: Operation) -> dict[str, Any]:
    data = dataclasses.asdict(operation)
    data["kind"] = operation.kind.value
    data["cleared"] = list(operation.cleared)
    return data


def _operation_from_dict(data: Mapping[str, Any]) -> Operation:
    values = dict(data)
    values["kind"] = OpKind(values["kind"])
    values["cleared"] = tuple(values.get("cleared") or ())
    return Operation(**values)


# load: Loader → apply_result → commit


def load_pair(
    prepared: Mapping[str, Any],
    options: RunOptions,
    *,
    settings: SyncSettings | None = None,
    root: Any = None,
    memberstack_hook: Any = None,
) -> dict[str, Any]:
    """Write the plan of one pair to Memberstack and commit what was loaded, then release the lease.

    A dry run writes nothing and commits nothing. A pair skipped in ``prepare_pair`` is passed through.

    :raises OperationsFailedError: some writes failed; they were committed as pending.
    :raises StalePlanError: another run committed after this plan was built.
    """
    pair = SyncPair.from_dict(prepared["pair"])
    if prepared.get("status") != "planned":
        return dict(prepared)
    settings = settings or SyncSettings.from_env()
    root = storage_root(root)
    folder = work_dir(root, options, pair.name)
    started = time.monotonic()
    status = read_status(folder) or _new_status(pair, options)
    status.update(step="load", status="running", error=None)

    lease = pair_lease(root, pair.name, options.lease_owner, settings)
    try:
        lease.acquire()
    except LeaseTimeout as error:
        _fail(folder, status, "lease", error, started)
        raise

    ms_hook = memberstack_hook
    try:
        with LeaseKeeper(lease) as keeper:
            outcome = _load(pair, prepared, options, settings, root, folder, status, keeper, ms_hook)
    except BaseException as error:
        _fail(folder, status, status["step"], error, started, memberstack_hook=ms_hook)
        lease.release()
        raise
    lease.release()
    status["duration_s"] = round(status["duration_s"] + time.monotonic() - started, 3)
    _write_status(folder, status)
    if outcome.get("failed_operations"):
        raise OperationsFailedError(
            f"Sync pair {pair.name!r}: {outcome['failed_operations']} Memberstack writes failed. What was "
            "written is committed, and the affected contacts are retried in the next run."
        )
    return outcome


def _load(
    pair: SyncPair,
    prepared: Mapping[str, Any],
    options: RunOptions,
    settings: SyncSettings,
    root: Any,
    folder: Any,
    status: dict[str, Any],
    keeper: LeaseKeeper,
    ms_hook: Any,
) -> dict[str, Any]:
    from ghl_memberstack import load, mapping
    from ghl_memberstack.snapshot import SnapshotStore

    store = SnapshotStore(root, pair.name)
    manifest = store.manifest()
    base = prepared.get("base_snapshot_id")
    current_id = (
        manifest.snapshot_id if manifest is not None and manifest.schema_version == SCHEMA_VERSION else None
    )
    if current_id != base:
        if manifest is not None and manifest.run_id == options.run_id:
            log.info(
                "Sync pair %s was already committed by this run as %s; nothing to do", pair.name, current_id
            )
            status.update(status="ok", step="done")
            return _outcome(pair, status, 0)
        raise StalePlanError(
            f"Sync pair {pair.name!r}: the snapshot changed from {base!r} to {current_id!r} after this run "
            "built its plan. Clear the whole run (prepare_pair included) to plan again."
        )

    desired, operations, result = _load_plan(folder)
    applied = _applied_with_journal(store, manifest if current_id is not None else None)
    seen = extract.read_seen(folder / "extract")
    observed = set(seen.loc[seen["fetched"].fillna(False).astype(bool), "contact_id"].astype(str))

    if options.dry_run:
        log.info("Dry run of sync pair %s: %d operations planned, none written", pair.name, len(operations))
        status["plan"] = report.plan_summary(root, options.dag_id, options.run_id, pair.name, operations)
        status["plans"] = count_plan_writes(operations)
        status.update(status="ok", step="done")
        return _outcome(pair, status, 0)

    status["step"] = "load"
    load_result = load.LoadResult()
    if operations:
        if ms_hook is None:
            from ghl_memberstack.hooks.memberstack import MemberstackHook

            ms_hook = MemberstackHook(memberstack_conn_id=pair.memberstack_conn_id)
        loader = load.Loader(
            ms_hook,
            store.journal(base),
            location_id=prepared.get("location_id") or "",
            concurrency=settings.load_concurrency,
            contact_exists=_contact_checker(pair),
            run_id=options.run_id,
        )
        loader.preflight(mapping.load_mapping(pair.mapping))
        try:
            load_result = loader.run(operations, desired=desired, observed_contact_ids=observed)
        except BaseException as error:
            # The planned counts must not read as done, so every operation the load did not finish
            # counts as failed. Only a configuration stop reports which operations finished.
            partial = getattr(error, "result", None)
            done = {op.key for op in partial.done} if isinstance(partial, load.LoadResult) else set()
            status["counts"] = count_outcomes(
                result.counts, desired, operations, observed, failed_keys={op.key for op in operations} - done
            )
            raise
        finally:
            status["requests"]["memberstack"] = int(getattr(ms_hook, "request_count", 0))
        desired.quarantine = _unique_quarantine([*desired.quarantine, *load_result.quarantine])
        status["quarantine"] = _quarantine_dicts(desired.quarantine)
        status["missing_custom_fields"] = sorted(load_result.missing_custom_fields)

    keeper.check()
    status["step"] = "commit"
    applied_next = load.apply_result(applied, desired, load_result, observed_contact_ids=observed)
    committed = _commit(store, manifest, applied_next, seen, result, options, set(load_result.pending))
    _remember_quarantine(root, pair.name, seen, desired, complete=result.complete)
    counts = count_outcomes(
        result.counts, desired, operations, observed, failed_keys={op.key for op, _ in load_result.failed}
    )
    for entity, values in (load_result.counts or {}).items():
        for key in ("created", "updated", "deactivated", "deleted", "unchanged", "failed"):
            if entity in counts and key in values:
                counts[entity][key] = int(values[key])
    status["plans"] = count_plan_writes(load_result.done)
    failed = len(load_result.failed)
    status.update(
        counts=counts, status="failed" if failed else "ok", step="done", committed_snapshot=committed
    )
    if failed:
        status["error"] = (
            f"{failed} Memberstack writes failed for {len(load_result.pending)} contacts; they stay pending"
        )
    log.info(
        "Loaded sync pair %s: %d operations done, %d failed, snapshot %s",
        pair.name,
        len(load_result.done),
        failed,
        committed,
    )
    return _outcome(pair, status, failed)


def _contact_checker(pair: SyncPair) -> Any:
    """Return a function that looks a contact up in GHL and returns whether it exists.

    The GHL hook is created on the first call, so a load that never needs the check opens no client.
    """
    hooks: list[Any] = []

    def contact_exists(contact_id: str) -> bool:
        if not hooks:
            from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

            hooks.append(GoHighLevelHook(gohighlevel_conn_id=pair.gohighlevel_conn_id))
        return hooks[0].get_contact(contact_id) is not None

    return contact_exists


def _outcome(pair: SyncPair, status: Mapping[str, Any], failed: int) -> dict[str, Any]:
    return {
        "pair": pair.to_dict(),
        "status": status["status"],
        "operations": status.get("operations", 0),
        "failed_operations": failed,
        "committed_snapshot": status.get("committed_snapshot"),
    }


def _commit(
    store: Any,
    manifest: Any,
    applied_next: Any,
    seen: pd.DataFrame,
    result: extract.ExtractResult,
    options: RunOptions,
    failed_contacts: set[str],
) -> str | None:
    """Commit the new snapshot and sync position, or keep the current one when nothing moved."""
    from ghl_memberstack.snapshot import Manifest

    old_pending = tuple(manifest.pending) if manifest is not None else ()
    pending = next_pending(seen, old_pending, failed_contacts, partial=result.partial_reason is not None)
    watermark = next_watermark(
        seen,
        manifest.watermark_ms if manifest is not None else None,
        pending,
        backfill=result.mode == extract.MODE_BACKFILL,
    )
    custom_fields = tuple(result.custom_fields)
    moved = bool(seen["moved"].fillna(False).astype(bool).any())
    if (
        manifest is not None
        and not moved
        and manifest.watermark_ms == watermark
        and tuple(manifest.pending) == pending
        and tuple(manifest.custom_fields) == custom_fields
    ):
        log.info(
            "Nothing changed for sync pair %s; the snapshot stays %s", store.pair_name, manifest.snapshot_id
        )
        return manifest.snapshot_id
    new_manifest = Manifest(
        watermark_ms=watermark,
        pending=pending,
        custom_fields=custom_fields,
        run_id=options.run_id,
        parity_checked=dict(manifest.parity_checked) if manifest is not None else {},
    )
    return store.commit(applied_next, new_manifest).snapshot_id


def next_pending(
    seen: pd.DataFrame, old_pending: Iterable[str], failed_contacts: set[str], *, partial: bool
) -> tuple[str, ...]:
    """Return the contacts the next run must re-read by id.

    They are the contacts with a failed write, valid changed contacts whose tasks, notes or
    appointments were not read, and earlier pending contacts this run did not reach. A pending
    contact that a finished extract did not find is gone from GHL and dropped.
    """
    valid = seen["valid"].fillna(False).astype(bool)
    moved = seen["moved"].fillna(False).astype(bool)
    fetched = seen["fetched"].fillna(False).astype(bool)
    unread = set(seen.loc[valid & moved & ~fetched, "contact_id"].astype(str))
    read = set(seen["contact_id"].astype(str))
    carried = {cid for cid in old_pending if cid not in read} if partial else set()
    return tuple(sorted(unread | carried | set(failed_contacts)))


def next_watermark(
    seen: pd.DataFrame, old_watermark: int | None, pending: Iterable[str], *, backfill: bool
) -> int | None:
    """Return the new watermark: the highest ``dateUpdated`` read, capped by the oldest pending contact.

    A backfill keeps the old watermark, so it never lowers it and never skips contacts between the
    watermark and its interval.
    """
    if backfill and old_watermark is not None:
        return old_watermark
    dates = seen.set_index(seen["contact_id"].astype(str))["date_updated"].dropna()
    candidates = [int(value) for value in dates.astype("int64")]
    watermark = max([*candidates, *([old_watermark] if old_watermark is not None else [])], default=None)
    pending_dates = [int(dates[cid]) for cid in pending if cid in dates.index]
    if pending_dates and watermark is not None:
        watermark = min(watermark, min(pending_dates))
    return watermark


# Counts for the report.


def count_plan_writes(operations: Iterable[Operation]) -> dict[str, int]:
    """Count the managed plans that operations add to and remove from members."""
    kinds = [op.kind for op in operations]
    return {"added": kinds.count(OpKind.PLAN_ADD), "removed": kinds.count(OpKind.PLAN_REMOVE)}


def count_outcomes(
    extracted: Mapping[str, Mapping[str, int]],
    desired: DesiredState,
    operations: Iterable[Operation],
    observed: set[str],
    *,
    failed_keys: set[str],
) -> dict[str, dict[str, int]]:
    """Count per entity what a plan did (or, in a dry run, would do).

    A contact counts once, under the first that applies of failed, created, deleted, deactivated
    and updated. Observed contacts and records with no operation count as unchanged.
    """
    from ghl_memberstack.diff import is_deactivation

    counts = report.empty_counts()
    for entity in ENTITIES:
        for key in ("extracted", "valid", "quarantined"):
            counts[entity][key] = int((extracted.get(entity) or {}).get(key, 0))
    quarantined: dict[str, set[str]] = {}
    for entry in desired.quarantine:
        quarantined.setdefault(entry.entity, set()).add(entry.ghl_id)
    for entity in ENTITIES:
        counts[entity]["quarantined"] = len(quarantined.get(entity, ()))
        counts[entity]["valid"] = max(counts[entity]["extracted"] - counts[entity]["quarantined"], 0)

    ranks = ("failed", "created", "deleted", "deactivated", "updated")
    outcome: dict[tuple[str, str], str] = {}
    for op in operations:
        if op.kind in (OpKind.RECORD_CREATE, OpKind.RECORD_UPDATE, OpKind.RECORD_DELETE):
            entity = (op.table or "").removeprefix("ghl_")
            target = (entity, op.ghl_id or op.key)
            kind = {OpKind.RECORD_CREATE: "created", OpKind.RECORD_UPDATE: "updated"}.get(op.kind, "deleted")
        else:
            target = ("contacts", op.contact_id)
            if op.kind is OpKind.MEMBER_CREATE:
                kind = "created"
            elif op.kind is OpKind.MEMBER_DELETE:
                kind = "deleted"
            elif is_deactivation(op):
                kind = "deactivated"
            else:
                kind = "updated"
        if op.key in failed_keys:
            kind = "failed"
        previous = outcome.get(target)
        if previous is None or ranks.index(kind) < ranks.index(previous):
            outcome[target] = kind
    for (entity, _), kind in outcome.items():
        if entity in counts:
            counts[entity][kind] += 1

    touched_contacts = {ghl_id for (entity, ghl_id) in outcome if entity == "contacts"}
    observed_members = {str(cid) for cid in desired.members.index if str(cid) in observed}
    counts["contacts"]["unchanged"] = len(observed_members - touched_contacts)
    for table, frame in desired.records.items():
        entity = table.removeprefix("ghl_")
        if entity not in counts or frame is None or frame.empty:
            continue
        ids = {
            str(i)
            for i, cid in zip(frame.index, frame["contact_id"].astype(str), strict=True)
            if cid in observed
        }
        touched = {ghl_id for (e, ghl_id) in outcome if e == entity}
        counts[entity]["unchanged"] = len(ids - touched)
    return counts


# Failure bookkeeping.


def _finish_step(folder: Any, status: dict[str, Any], started: float, hook: Any = None) -> None:
    status["duration_s"] = round(status["duration_s"] + time.monotonic() - started, 3)
    if hook is not None:
        status["requests"]["ghl"] = int(getattr(hook, "request_count", 0))
    _write_status(folder, status)


def _fail(
    folder: Any,
    status: dict[str, Any],
    step: str,
    error: BaseException,
    started: float,
    hook: Any = None,
    *,
    memberstack_hook: Any = None,
) -> None:
    log.error("Sync pair %s failed in step %s: %s", status.get("pair"), step, error)
    status.update(status="failed", step=step, error=f"{type(error).__name__}: {error}")
    if memberstack_hook is not None:
        status["requests"]["memberstack"] = int(getattr(memberstack_hook, "request_count", 0))
    try:
        _finish_step(folder, status, started, hook)
    except OSError as write_error:
        log.error("Could not record the failure of sync pair %s: %s", status.get("pair"), write_error)


def _remove_tree(path: Any) -> None:
    if path.exists():
        path.fs.rm(path.path, recursive=True)


# summarize: the run report.


def summarize(
    pair_names: Iterable[str],
    options: RunOptions,
    *,
    settings: SyncSettings | None = None,
    root: Any = None,
) -> dict[str, Any]:
    """Write the run's report from the pairs' status files, and release leases the run still holds.

    :return: the run status and the paths of ``report.json`` and ``report.html``.
    """
    settings = settings or SyncSettings.from_env()
    root = storage_root(root)
    entries: dict[str, dict[str, Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    for name in pair_names:
        status = read_status(work_dir(root, options, name)) or {}
        entries[name] = report.pair_entry(
            status=_report_status(status),
            duration_s=status.get("duration_s", 0.0),
            counts=status.get("counts"),
            quarantine=status.get("quarantine"),
            expectations=status.get("expectations"),
            requests=status.get("requests"),
            plan=status.get("plan"),
            plans=status.get("plans"),
        )
        extra[name] = _report_details(status)
        _release_leftover_lease(root, name, options, settings)

    run_report = report.build_report(
        dag_id=options.dag_id,
        run_id=options.run_id,
        dry_run=options.dry_run,
        pairs=entries,
        data_docs=report.write_data_docs_index(root, options.dag_id, options.run_id, entries),
    )
    paths = report.write_report(root, run_report, extra=extra)
    log.info("Report written to %s and %s", paths["json"], paths["html"])
    for name, entry in entries.items():
        log.info("%s", summary_line(name, entry, extra[name]))
    _prune(root, options, settings, run_ok=run_report["status"] == "ok")
    return {"status": run_report["status"], "report_json": paths["json"], "report_html": paths["html"]}


def _report_status(status: Mapping[str, Any]) -> str:
    value = status.get("status")
    if value in ("ok", "skipped"):
        return value
    return "failed"


def _report_details(status: Mapping[str, Any]) -> dict[str, Any]:
    if not status:
        return {"error": "no step of this pair recorded a result; read the task logs"}
    details = {
        "extract_mode": status.get("mode"),
        "complete_observation": status.get("complete"),
        "partial_reason": status.get("partial_reason"),
        "planned_operations": status.get("operations"),
        "snapshot": status.get("committed_snapshot"),
        "last_step": status.get("step"),
        # Memberstack drops values of custom fields the app does not define, so the loader lists them.
        "missing_custom_fields": ", ".join(status.get("missing_custom_fields") or ()),
    }
    if status.get("error"):
        details["error"] = status["error"]
    return {key: value for key, value in details.items() if value not in (None, "")}


def summary_line(name: str, entry: Mapping[str, Any], details: Mapping[str, Any]) -> str:
    """Return a one-line summary of what a pair's run did."""
    counts = entry["counts"]
    contacts = counts["contacts"]
    records = {
        key: sum(counts[entity][key] for entity in ("tasks", "notes", "appointments"))
        for key in ("created", "updated", "deleted")
    }
    line = (
        f"{name}: {entry['status']} in {entry['duration_s']:.1f} s, mode {details.get('extract_mode', '-')}; "
        f"contacts {contacts['extracted']} read, {contacts['quarantined']} quarantined; members "
        f"{contacts['created']} created, {contacts['updated']} updated, {contacts['deactivated']} "
        f"deactivated, {contacts['deleted']} deleted, {contacts['unchanged']} unchanged, "
        f"{contacts['failed']} failed; records {records['created']} created, {records['updated']} "
        f"updated, {records['deleted']} deleted; plans {entry['plans']['added']} added, "
        f"{entry['plans']['removed']} removed; requests GHL {entry['requests']['ghl']}, "
        f"Memberstack {entry['requests']['memberstack']}"
    )
    if details.get("error"):
        line += f"; error: {details['error']}"
    return line


def _release_leftover_lease(root: Any, pair_name: str, options: RunOptions, settings: SyncSettings) -> None:
    """Release the pair's lease if this run still holds it, as after a failed prepare or load."""
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
    lease = dataclasses.replace(settings, pair_lease_wait_s=0.0)
    with pair_lease(root, pair_name, options.lease_owner, lease):
        log.info("Released the lease of sync pair %s left by this run", pair_name)


def _prune(root: Any, options: RunOptions, settings: SyncSettings, *, run_ok: bool) -> None:
    # Cleanup never changes the outcome of a run, so its failures are only logged.
    try:
        if run_ok:
            _remove_tree(root / "runs" / options.dag_id / options.run_id)
        report.prune_reports(root, options.dag_id, retention_days=settings.report_retention_days)
        report.prune_plans(root, options.dag_id, retention_days=settings.report_retention_days)
        _prune_work_dirs(root, options.dag_id, settings.report_retention_days)
    except OSError as error:
        log.warning("Could not prune old reports or work folders: %s", error)


def _prune_work_dirs(root: Any, dag_id: str, retention_days: int) -> None:
    folder = root / "runs" / dag_id
    if retention_days <= 0 or not folder.exists():
        return
    cutoff = time.time() - retention_days * 86400
    for run_folder in folder.iterdir():
        for pair_folder in run_folder.iterdir() if run_folder.is_dir() else ():
            modified = report._modified_at(pair_folder / STATUS_FILE)
            if modified is not None and modified < cutoff:
                _remove_tree(run_folder)
                break


# Without a scheduler.


def run_pair(pair: SyncPair, options: RunOptions, **kwargs: Any) -> dict[str, Any]:
    """Run every step of one pair in this process and return the load step's outcome.

    Keyword arguments ``settings``, ``root``, ``gohighlevel_hook`` and ``memberstack_hook`` go to
    the steps that take them.
    """
    prepare_kwargs = {k: v for k, v in kwargs.items() if k in ("settings", "root", "gohighlevel_hook")}
    load_kwargs = {k: v for k, v in kwargs.items() if k in ("settings", "root", "memberstack_hook")}
    prepared = prepare_pair(pair, options, **prepare_kwargs)
    return load_pair(prepared, options, **load_kwargs)


def run_sync(
    options: RunOptions,
    pair_names: Iterable[str] | None = None,
    *,
    pairs_file: str | None = None,
    settings: SyncSettings | None = None,
    root: Any = None,
) -> dict[str, Any]:
    """Run a whole sync in this process, pair after pair, and write its report.

    A failing pair does not stop the others; the report records it.
    """
    pairs = resolve_pairs(pair_names, pairs_file=pairs_file)
    for pair in pairs:
        try:
            run_pair(pair, options, settings=settings, root=root)
        except Exception as error:  # noqa: BLE001 - the failure is in the pair's status and report
            log.error("Sync pair %s failed: %s", pair.name, error)
    return summarize([pair.name for pair in pairs], options, settings=settings, root=root)


def new_run_id(prefix: str = "manual") -> str:
    """Return a run id in Airflow's style for runs started without a scheduler."""
    return f"{prefix}__{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}"


# Task entry points: the DAG calls these, and they turn errors that retries cannot fix into
# AirflowFailException so the task fails at once.


def _fail_fast(function: Any, *args: Any) -> Any:
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return function(*args)
    except non_retryable_errors() as error:
        raise AirflowFailException(f"{type(error).__name__}: {error}") from error


def resolve_pairs_task(params: Mapping[str, Any]) -> list[dict[str, str]]:
    """Resolve the pairs of a run from its ``sync_pairs`` param."""
    requested = params.get("sync_pairs") or []
    pairs = _fail_fast(resolve_pairs, requested)
    return [pair.to_dict() for pair in pairs]


def prepare_pair_task(pair: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``prepare_pair`` for a task."""
    return _fail_fast(prepare_pair, SyncPair.from_dict(pair), RunOptions.from_dict(options))


def load_pair_task(prepared: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``load_pair`` for a task."""
    return _fail_fast(load_pair, prepared, RunOptions.from_dict(options))


def summarize_task(pairs: list[Mapping[str, Any]] | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Write the run report, and fail the task when a pair failed so the run shows as failed."""
    from airflow.sdk.exceptions import AirflowFailException

    if pairs is None:
        raise AirflowFailException("No sync pairs were resolved, so no pair ran; read the resolve_pairs log.")
    run_options = RunOptions.from_dict(options)
    outcome = summarize([pair["name"] for pair in pairs], run_options)
    if outcome["status"] != "ok":
        raise AirflowFailException(
            f"At least one sync pair failed; the report is at {outcome['report_html']}"
        )
    return outcome
