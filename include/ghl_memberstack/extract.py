"""Extract one sync pair's GHL changes into parquet files in the run's work folder on the storage.

Each page is validated with ``models.parse_page`` while it streams, so no pydantic model and no
whole page list stays in memory, and nothing but paths and counts leaves this module.

Which contacts are read:
- a full refresh (requested, first run, or state of an older schema) reads every contact, and its
  result is a complete observation unless the request budget or a search cursor gives out;
- a backfill run reads the contacts updated in its data interval;
- every other run reads the contacts updated since the watermark minus an overlap, because search
  results lag writes by a few seconds;
- contacts left pending by an earlier run are re-read by id in every run.

Tasks, notes and appointments are read only for contacts whose ``dateUpdated`` differs from the
applied snapshot (or for every contact in a full refresh), and for pending contacts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pandas as pd

from ghl_memberstack import models
from ghl_memberstack.exceptions import (
    GoHighLevelBudgetExhaustedError,
    GoHighLevelCursorError,
    GoHighLevelRequestError,
)
from ghl_memberstack.state import ENTITIES, SCHEMA_VERSION, QuarantineEntry
from ghl_memberstack.storage import read_bytes, write_atomic

log = logging.getLogger(__name__)

CHILD_ENTITIES = ("tasks", "notes", "appointments")
# Contacts per batch of child reads; each batch becomes one parquet part per entity.
CHILD_BATCH_SIZE = 200
# Contact ids per location-wide task search; the API documents no maximum for the id filter.
TASK_SEARCH_IDS = 100

MODE_FULL = "full"
MODE_BACKFILL = "backfill"
MODE_INCREMENTAL = "incremental"


@dataclasses.dataclass(frozen=True)
class ExtractRequest:
    """The contact selection of one extraction, decided from the run's options and the pair's manifest."""

    mode: str
    updated_gte_ms: int | None
    updated_lte_ms: int | None
    pending: tuple[str, ...]


@dataclasses.dataclass
class ExtractResult:
    """Summary of one extraction; the data itself is in parquet files under ``work_dir``."""

    work_dir: str
    mode: str
    # True only when every contact page and every child read finished.
    complete: bool
    partial_reason: str | None
    counts: dict[str, dict[str, int]]
    custom_fields: list[dict[str, Any]]
    custom_fields_refreshed: bool
    requests: int

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-compatible data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractResult:
        """Build a summary from the dict that :meth:`to_dict` returns."""
        return cls(**data)


class _PartWriter:
    """Writes validated rows of one entity as numbered parquet parts."""

    def __init__(self, work_dir: Any, entity: str) -> None:
        self.folder = work_dir / entity
        self.entity = entity
        self.parts = 0
        self.valid = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.parts += 1
        self.valid += len(rows)
        write_parquet(self.folder / f"part-{self.parts:05d}.parquet", models.frame(self.entity, rows))


def write_parquet(path: Any, frame: pd.DataFrame) -> None:
    """Write a frame to a parquet object on the storage in one atomic step."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    write_atomic(path, buffer.getvalue())


def read_parquet(path: Any) -> pd.DataFrame | None:
    """Read a parquet object from the storage, or return None when it does not exist."""
    data = read_bytes(path)
    if data is None:
        return None
    return pd.read_parquet(io.BytesIO(data))


def read_entity(work_dir: Any, entity: str) -> pd.DataFrame:
    """Read every part of an entity into one frame, typed by ``models.frame`` when empty."""
    folder = work_dir / entity
    frames: list[pd.DataFrame] = []
    if folder.exists():
        for part in sorted(folder.iterdir(), key=lambda p: p.name):
            if part.name.endswith(".parquet"):
                frame = read_parquet(part)
                if frame is not None:
                    frames.append(frame)
    if not frames:
        return models.empty_frame(entity)
    combined = pd.concat(frames, ignore_index=True)
    # A record read twice (a pending contact inside the search window) keeps its latest read.
    return combined.drop_duplicates(subset="id", keep="last").reset_index(drop=True)


def parse_iso_ms(value: Any) -> int | None:
    """Convert a GHL timestamp (ISO 8601 text or epoch milliseconds) to epoch milliseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    try:
        parsed = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def plan_request(
    *,
    manifest: Any,
    run_type: str,
    full_refresh: bool,
    interval_start_ms: int | None,
    interval_end_ms: int | None,
    overlap_ms: int,
) -> ExtractRequest:
    """Decide which contacts an extraction reads.

    A manual, scheduled or retried run reads from the stored watermark and never from the data
    interval, because a manual run has no data interval in Airflow 3.
    """
    pending = tuple(manifest.pending) if manifest is not None else ()
    usable = manifest is not None and manifest.schema_version == SCHEMA_VERSION
    if full_refresh or not usable:
        if manifest is not None and not usable:
            log.info(
                "Stored state has schema version %s, expected %s; running a full refresh",
                manifest.schema_version,
                SCHEMA_VERSION,
            )
        return ExtractRequest(MODE_FULL, None, None, pending if usable else ())
    if run_type == "backfill" and interval_start_ms is not None:
        return ExtractRequest(MODE_BACKFILL, max(interval_start_ms - overlap_ms, 0), interval_end_ms, pending)
    watermark = manifest.watermark_ms
    if watermark is None:
        return ExtractRequest(MODE_FULL, None, None, pending)
    return ExtractRequest(MODE_INCREMENTAL, max(int(watermark) - overlap_ms, 0), None, pending)


class Extractor:
    """Reads one pair's GHL changes into the run's work folder.

    :param hook: a ``GoHighLevelHook`` for the pair's location.
    :param work_dir: the run's work folder for this pair (an ``ObjectStoragePath``).
    :param applied_updated: the applied snapshot's ``date_updated`` per contact id.
    :param cached_custom_fields: custom field definition rows (``models.parse_page`` rows of the
        entity ``custom_fields``) from the manifest, or None when they were never read.
    :param child_order: orders the contacts whose notes and appointments are read, and may leave
        some out; the parity run puts the contacts it checked longest ago first.
    :param child_request_budget: the maximum requests of the whole extraction. Contacts and tasks
        are always read in full; notes and appointments (two requests per contact) are read only
        while the rest of the budget covers them, and the other contacts stay unfetched.
    """

    def __init__(
        self,
        hook: Any,
        work_dir: Any,
        *,
        applied_updated: dict[str, int],
        cached_custom_fields: list[dict[str, Any]] | None,
        page_limit: int = 500,
        child_order: Callable[[list[str]], list[str]] | None = None,
        child_request_budget: int | None = None,
    ) -> None:
        self.hook = hook
        self.child_order = child_order
        self.child_request_budget = child_request_budget
        self.start_requests = 0
        # Tasks the task search returned, including those of contacts whose children are not read.
        self.tasks_listed = 0
        self.work_dir = work_dir
        self.applied_updated = applied_updated
        self.custom_fields = list(cached_custom_fields or [])
        self.custom_fields_cached = cached_custom_fields is not None
        self.custom_fields_refreshed = False
        self.page_limit = page_limit
        self.writers = {entity: _PartWriter(work_dir, entity) for entity in ENTITIES}
        self.extracted = dict.fromkeys(ENTITIES, 0)
        self.quarantine: list[QuarantineEntry] = []
        # Per contact read: [dateUpdated ms, valid, moved, children fetched].
        self.seen: dict[str, list[Any]] = {}
        self.referenced_field_ids: set[str] = set()
        self.partial_reason: str | None = None

    def run(self, request: ExtractRequest) -> ExtractResult:
        """Read contacts and their children, and write the parquet parts and ``seen.parquet``."""
        start_requests = self.start_requests = self.hook.request_count
        log.info(
            "Extracting location %s: mode=%s updated_gte_ms=%s updated_lte_ms=%s pending=%d",
            self.hook.location_id,
            request.mode,
            request.updated_gte_ms,
            request.updated_lte_ms,
            len(request.pending),
        )
        if request.pending:
            pages = self.hook.search_contacts(contact_ids=list(request.pending), page_limit=self.page_limit)
            self._read_contacts(pages, force_moved=True)
            missing = set(request.pending) - set(self.seen)
            if missing and self.partial_reason is None:
                log.info("%d pending contacts no longer exist in GHL; dropping them", len(missing))
        if self.partial_reason is None:
            pages = self.hook.search_contacts(
                updated_gte_ms=request.updated_gte_ms,
                updated_lte_ms=request.updated_lte_ms,
                page_limit=self.page_limit,
            )
            self._read_contacts(pages, force_moved=request.mode == MODE_FULL)

        self._refresh_custom_fields(force=request.mode == MODE_FULL)
        self._read_children(full=request.mode == MODE_FULL)
        self._write_summary_files()

        complete = request.mode == MODE_FULL and self.partial_reason is None
        result = ExtractResult(
            work_dir=str(self.work_dir),
            mode=request.mode,
            complete=complete,
            partial_reason=self.partial_reason,
            counts=self._counts(),
            custom_fields=self.custom_fields,
            custom_fields_refreshed=self.custom_fields_refreshed,
            requests=self.hook.request_count - start_requests,
        )
        log.info(
            "Extracted location %s: contacts=%d moved=%d complete=%s partial_reason=%s requests=%d",
            self.hook.location_id,
            len(self.seen),
            sum(1 for entry in self.seen.values() if entry[2]),
            complete,
            self.partial_reason,
            result.requests,
        )
        return result

    def _read_contacts(self, pages: Iterator[list[dict[str, Any]]], *, force_moved: bool) -> None:
        try:
            for page in pages:
                self._take_contact_page(page, force_moved=force_moved)
        except GoHighLevelBudgetExhaustedError as error:
            self._mark_partial("budget_exhausted", error)
        except GoHighLevelCursorError as error:
            self._mark_partial("cursor_error", error)

    def _take_contact_page(self, page: list[dict[str, Any]], *, force_moved: bool) -> None:
        self.extracted["contacts"] += len(page)
        rows, quarantined = models.parse_page("contacts", page)
        self.quarantine.extend(quarantined)
        invalid = {entry.ghl_id for entry in quarantined}
        for record in page:
            contact_id = str(record.get("id") or "")
            if not contact_id:
                continue
            updated = parse_iso_ms(record.get("dateUpdated"))
            moved = force_moved or self.applied_updated.get(contact_id) != updated
            # A contact read twice (pending and in the search window) keeps the forced flag.
            if contact_id in self.seen:
                moved = moved or self.seen[contact_id][2]
            self.seen[contact_id] = [updated, contact_id not in invalid, moved, False]
            for field in record.get("customFields") or []:
                field_id = field.get("id") if isinstance(field, dict) else None
                if field_id:
                    self.referenced_field_ids.add(str(field_id))
        self.writers["contacts"].write(rows)

    def _refresh_custom_fields(self, *, force: bool) -> None:
        known = {str(field.get("id")) for field in self.custom_fields}
        unknown = self.referenced_field_ids - known
        if not (force or unknown or not self.custom_fields_cached):
            return
        if self.partial_reason == "budget_exhausted":
            return
        if unknown and not force:
            log.info("Contacts reference %d unknown custom field ids; re-reading definitions", len(unknown))
        try:
            raw = self.hook.get_custom_fields()
        except GoHighLevelBudgetExhaustedError as error:
            self._mark_partial("budget_exhausted", error)
            return
        rows, quarantined = models.parse_page("custom_fields", raw)
        if quarantined:
            log.warning("Ignored %d invalid custom field definitions", len(quarantined))
        self.custom_fields = rows
        self.custom_fields_refreshed = True

    def _read_children(self, *, full: bool) -> None:
        targets = [cid for cid, entry in self.seen.items() if entry[1] and entry[2]]
        if not targets or self.partial_reason == "budget_exhausted":
            return
        if self.child_order is not None:
            targets = self.child_order(targets)
        task_ok = self._read_tasks(targets, location_wide=full)
        fetched: list[str] = []
        for start in range(0, len(targets), CHILD_BATCH_SIZE):
            if self.partial_reason == "budget_exhausted":
                break
            batch = targets[start : start + CHILD_BATCH_SIZE]
            if self.child_request_budget is not None:
                used = self.hook.request_count - self.start_requests
                # Notes and appointments cost one request each per contact.
                batch = batch[: max(self.child_request_budget - used, 0) // 2]
                if not batch:
                    log.info(
                        "The request budget of %d is used up, so the children of %d more contacts are not read",
                        self.child_request_budget,
                        len(targets) - start,
                    )
                    break
            notes_ok = self._read_per_contact("notes", self.hook.get_contact_notes, batch)
            appointments_ok = self._read_per_contact(
                "appointments", self.hook.get_contact_appointments, batch
            )
            fetched.extend(c for c in batch if c in task_ok and c in notes_ok and c in appointments_ok)
        for contact_id in fetched:
            self.seen[contact_id][3] = True
        skipped = len(targets) - len(fetched)
        if skipped:
            log.warning("Children of %d contacts were not read; they stay pending", skipped)

    def _read_tasks(self, contact_ids: list[str], *, location_wide: bool) -> set[str]:
        """Read tasks through the location-wide search, one call per page instead of per contact."""
        target_set = set(contact_ids)
        if location_wide:
            chunks: list[list[str] | None] = [None]
        else:
            chunks = [
                contact_ids[i : i + TASK_SEARCH_IDS] for i in range(0, len(contact_ids), TASK_SEARCH_IDS)
            ]
        done: set[str] = set()
        for chunk in chunks:
            try:
                for page in self.hook.search_location_tasks(contact_ids=chunk):
                    self.tasks_listed += len(page)
                    records = [task for task in page if str(task.get("contactId") or "") in target_set]
                    self._take_child_records("tasks", records)
            except (GoHighLevelBudgetExhaustedError, GoHighLevelCursorError) as error:
                reason = (
                    "budget_exhausted"
                    if isinstance(error, GoHighLevelBudgetExhaustedError)
                    else "cursor_error"
                )
                self._mark_partial(reason, error)
                break
            done.update(target_set if chunk is None else chunk)
        return done

    def _read_per_contact(
        self, entity: str, fetch: Callable[[str], list[dict[str, Any]]], contact_ids: list[str]
    ) -> set[str]:
        outcomes = self.hook.map_concurrently(_guarded(fetch), contact_ids)
        records: list[dict[str, Any]] = []
        done: set[str] = set()
        for contact_id, (error, items) in zip(contact_ids, outcomes, strict=True):
            if error is None:
                done.add(contact_id)
                for item in items:
                    item.setdefault("contactId", contact_id)
                    records.append(item)
            elif isinstance(error, GoHighLevelBudgetExhaustedError):
                self._mark_partial("budget_exhausted", error)
            else:
                self._mark_partial("child_read_failed", error)
        self._take_child_records(entity, records)
        return done

    def _take_child_records(self, entity: str, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self.extracted[entity] += len(records)
        rows, quarantined = models.parse_page(entity, records)
        self.quarantine.extend(quarantined)
        self.writers[entity].write(rows)

    def _mark_partial(self, reason: str, error: Exception) -> None:
        log.warning("Extract of location %s is partial (%s): %s", self.hook.location_id, reason, error)
        # Budget exhaustion stops all further reads, so it wins over softer reasons.
        if self.partial_reason is None or reason == "budget_exhausted":
            self.partial_reason = reason

    def _write_summary_files(self) -> None:
        seen = pd.DataFrame(
            {
                "contact_id": pd.array(list(self.seen), dtype="string"),
                "date_updated": pd.array([e[0] for e in self.seen.values()], dtype="Int64"),
                "valid": pd.array([e[1] for e in self.seen.values()], dtype="boolean"),
                "moved": pd.array([e[2] for e in self.seen.values()], dtype="boolean"),
                "fetched": pd.array([e[3] for e in self.seen.values()], dtype="boolean"),
            }
        )
        write_parquet(self.work_dir / "seen.parquet", seen)
        write_quarantine(self.work_dir / "quarantine.json", self.quarantine)
        write_atomic(self.work_dir / "custom_fields.json", json.dumps(self.custom_fields).encode("utf-8"))

    def _counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for entity in ENTITIES:
            quarantined = sum(1 for entry in self.quarantine if entry.entity == entity)
            counts[entity] = {
                "extracted": self.extracted[entity],
                "valid": self.writers[entity].valid,
                "quarantined": quarantined,
            }
        return counts


def _guarded(fetch: Callable[[str], list[dict[str, Any]]]) -> Callable[[str], tuple[Exception | None, list]]:
    """Wrap a per-contact read so one failure does not discard the other contacts' results."""

    def call(contact_id: str) -> tuple[Exception | None, list]:
        try:
            return None, list(fetch(contact_id))
        except (GoHighLevelBudgetExhaustedError, GoHighLevelRequestError) as error:
            return error, []

    return call


def write_quarantine(path: Any, entries: Iterable[QuarantineEntry]) -> None:
    """Write quarantine entries as a JSON list."""
    data = [dataclasses.asdict(entry) for entry in entries]
    write_atomic(path, json.dumps(data).encode("utf-8"))


def read_quarantine(path: Any) -> list[QuarantineEntry]:
    """Read quarantine entries written by :func:`write_quarantine`."""
    data = read_bytes(path)
    if data is None:
        return []
    return [QuarantineEntry(**entry) for entry in json.loads(data)]


def read_seen(work_dir: Any) -> pd.DataFrame:
    """Read the per-contact extraction summary (id, date_updated, valid, moved, fetched)."""
    frame = read_parquet(work_dir / "seen.parquet")
    if frame is None:
        raise FileNotFoundError(f"{work_dir}/seen.parquet not found; the extract step did not finish")
    return frame
