"""Applied-state snapshots and the operation journal of one sync pair, on an ``ObjectStoragePath``.

Layout under ``<root>/state/<pair>/``::

    manifest.json                       the current snapshot: id, watermark, pending contacts, ...
    snapshots/<snapshot_id>/members.parquet
    snapshots/<snapshot_id>/records.<table>.parquet
    journal/<base_snapshot_id>/<key hash>.json     one object per finished operation

A commit writes the new snapshot's files under a fresh id first, then replaces ``manifest.json`` in
one atomic write. A crash before that write leaves the previous manifest, and so the previous
snapshot, current. The journal of a run is keyed by the snapshot the run started from, so a rerun
after a crash finds it and skips the operations it contains.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pandas as pd

from ghl_memberstack.state import SCHEMA_VERSION, AppliedState
from ghl_memberstack.storage import read_bytes, write_atomic

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MEMBERS_FILE = "members.parquet"
RECORDS_FILE_PREFIX = "records."
JOURNAL_STARTED_NAME = "_started.json"
# The id under which a pair's first run, which has no snapshot yet, keeps its journal.
INITIAL_BASE_ID = "initial"

RETENTION_ENV = "GHL_MEMBERSTACK_SNAPSHOT_RETENTION"
DEFAULT_RETENTION = 5

MEMBER_COLUMNS = ("email", "plans", "status", "json", "date_updated", "member_id")


class SnapshotError(Exception):
    """The stored state of a pair cannot be read: a file is missing, corrupt or from another schema."""


class SnapshotSchemaError(SnapshotError):
    """The stored state was written under another schema version; rebuild it with a full refresh."""


def snapshot_retention() -> int:
    """Read how many snapshots a pair keeps from ``GHL_MEMBERSTACK_SNAPSHOT_RETENTION`` (default 5).

    :raises ValueError: the variable is not a whole number of at least 1.
    """
    raw = os.environ.get(RETENTION_ENV, "").strip()
    if not raw:
        return DEFAULT_RETENTION
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{RETENTION_ENV} must be a whole number, got {raw!r}.") from None
    if value < 1:
        raise ValueError(f"{RETENTION_ENV} must be at least 1, got {value}.")
    return value


def _remove_tree(path: ObjectStoragePath) -> None:
    if path.exists():
        path.fs.rm(path.path, recursive=True)


def new_snapshot_id(now: dt.datetime | None = None) -> str:
    """Return a snapshot id that sorts by creation time, such as ``20260105T101500123456Z-3fa2c1``."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The current snapshot of a pair and the sync position that goes with it.

    ``watermark_ms`` is the highest ``dateUpdated`` (epoch ms) among committed contacts, and
    ``pending`` lists the contacts whose operations did not all finish. ``parity_checked`` maps a
    contact id to the epoch ms of its last parity check. ``files`` maps each snapshot file name to
    its row count and SHA-256, so a truncated or swapped file is detected on read.
    """

    schema_version: int = SCHEMA_VERSION
    snapshot_id: str = ""
    watermark_ms: int | None = None
    pending: tuple[str, ...] = ()
    custom_fields: tuple[dict[str, Any], ...] = ()
    run_id: str | None = None
    created_at: str = ""
    parity_checked: dict[str, int] = dataclasses.field(default_factory=dict)
    files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> bytes:
        """Serialise the manifest as UTF-8 JSON."""
        body = dataclasses.asdict(self)
        body["pending"] = list(self.pending)
        body["custom_fields"] = list(self.custom_fields)
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse a manifest written by ``to_json``; unknown keys from newer writers are ignored.

        :raises SnapshotError: the bytes are not a JSON object.
        """
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise SnapshotError(f"The snapshot manifest is not valid JSON: {exc}.") from exc
        if not isinstance(body, dict):
            raise SnapshotError("The snapshot manifest is not a JSON object.")
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in body.items() if key in known}
        values["pending"] = tuple(values.get("pending") or ())
        values["custom_fields"] = tuple(values.get("custom_fields") or ())
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """One finished operation as the journal stores it.

    ``fields`` contains the values the operation wrote (column name to value), so a rerun can fold the
    entry into the applied state it started from. ``seq`` orders entries by completion.
    """

    key: str
    kind: str
    contact_id: str
    member_id: str | None = None
    table: str | None = None
    ghl_id: str | None = None
    record_id: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    seq: int = 0

    def to_json(self) -> bytes:
        """Serialise the entry as UTF-8 JSON."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JournalEntry:
        """Parse an entry written by ``to_json``."""
        body = json.loads(data)
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in body.items() if key in known})


def _entry_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40] + ".json"


class Journal:
    """The finished operations of the runs that started from one snapshot.

    ``record`` writes each entry as its own object before it returns, so an entry survives a crash
    of the process right after the write it describes. Entries are read once, when the journal is
    opened. A journal without a path keeps entries in memory only (dry runs and tests).
    Thread-safe: the loader records entries from several worker threads.
    """

    def __init__(self, path: ObjectStoragePath | None, base_snapshot_id: str) -> None:
        self.path = path
        self.base_snapshot_id = base_snapshot_id
        self._lock = threading.Lock()
        self._entries: dict[str, JournalEntry] = {}
        self._started = False
        self._seq = time.time_ns()
        if path is not None and path.exists():
            self._load(path)
        # Entries or a start marker come from a run that did not commit. Its last writes may have
        # reached Memberstack without an entry.
        self.resumed = self._started or bool(self._entries)

    def _load(self, path: ObjectStoragePath) -> None:
        for child in path.iterdir():
            if child.name == JOURNAL_STARTED_NAME:
                self._started = True
                continue
            if not child.name.endswith(".json") or child.name.startswith("."):
                continue
            data = read_bytes(child)
            if data is None:
                continue
            try:
                entry = JournalEntry.from_json(data)
            except (ValueError, TypeError):
                # write_atomic never leaves a partial object, so this is foreign or damaged data.
                log.warning(
                    "Skipping unreadable journal entry %s of base %s", child.name, self.base_snapshot_id
                )
                continue
            self._entries[entry.key] = entry
        log.info("Opened the journal of base %s with %d entries", self.base_snapshot_id, len(self._entries))

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: str) -> JournalEntry | None:
        """Return the entry of an operation key, or None when the operation has not finished."""
        with self._lock:
            return self._entries.get(key)

    def entries(self) -> list[JournalEntry]:
        """Return every entry in the order the operations finished."""
        with self._lock:
            return sorted(self._entries.values(), key=lambda entry: entry.seq)

    def mark_started(self, run_id: str | None = None) -> None:
        """Write the start marker, so a rerun treats the journal as resumed even before any entry."""
        if self._started:
            return
        if self.path is not None:
            body = json.dumps({"run_id": run_id, "started_at": _utc_now_iso()}).encode()
            write_atomic(self.path / JOURNAL_STARTED_NAME, body)
        self._started = True

    def record(self, entry: JournalEntry) -> JournalEntry:
        """Store a finished operation durably and return it with its sequence number set."""
        with self._lock:
            self._seq = max(self._seq + 1, time.time_ns())
            entry = dataclasses.replace(entry, seq=self._seq)
        if self.path is not None:
            write_atomic(self.path / _entry_name(entry.key), entry.to_json())
        with self._lock:
            self._entries[entry.key] = entry
        return entry


def _utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def empty_applied() -> AppliedState:
    """Return the applied state of a pair that has never been loaded."""
    members = pd.DataFrame({column: pd.Series(dtype="string") for column in MEMBER_COLUMNS})
    members["date_updated"] = members["date_updated"].astype("Int64")
    members.index = pd.Index([], dtype="string", name="contact_id")
    return AppliedState(members=members, records={})


def _frame_to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", index=True)
    return buffer.getvalue()


def _frame_from_parquet(data: bytes) -> pd.DataFrame:
    frame = pd.read_parquet(io.BytesIO(data), engine="pyarrow")
    # Parquet keeps the pandas dtypes in its metadata; text columns without it come back as
    # object or str, which the diff must not see.
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column].dtype):
            frame[column] = frame[column].astype("string")
    if frame.index.dtype == object or pd.api.types.is_string_dtype(frame.index.dtype):
        frame.index = frame.index.astype("string")
    return frame


class SnapshotStore:
    """Snapshots, manifest and journals of one sync pair under ``<root>/state/<pair>/``.

    :param root: the storage root, such as ``storage.storage_root()``.
    :param pair_name: the sync pair; it becomes one path segment.
    :param retention: how many snapshots to keep; ``GHL_MEMBERSTACK_SNAPSHOT_RETENTION`` when None.
    """

    def __init__(self, root: ObjectStoragePath, pair_name: str, *, retention: int | None = None) -> None:
        if not pair_name or "/" in pair_name or pair_name in (".", ".."):
            raise ValueError(f"Invalid sync pair name {pair_name!r} for the state path.")
        self.path = root / "state" / pair_name
        self.pair_name = pair_name
        self.retention = snapshot_retention() if retention is None else retention
        if self.retention < 1:
            raise ValueError(f"Snapshot retention must be at least 1, got {self.retention}.")

    @property
    def manifest_path(self) -> ObjectStoragePath:
        """Path of the manifest that names the current snapshot."""
        return self.path / MANIFEST_NAME

    def manifest(self) -> Manifest | None:
        """Read the current manifest, or return None when the pair has never committed."""
        data = read_bytes(self.manifest_path)
        if data is None:
            return None
        return Manifest.from_json(data)

    def is_current_schema(self) -> bool:
        """Return True when there is no state or it was written under ``SCHEMA_VERSION``."""
        manifest = self.manifest()
        return manifest is None or manifest.schema_version == SCHEMA_VERSION

    def applied(self, manifest: Manifest | None = None) -> AppliedState:
        """Read the applied state of the current snapshot, or an empty state before the first commit.

        :param manifest: a manifest read just before, to avoid reading it twice.
        :raises SnapshotSchemaError: the state has another schema version; rebuild it with a full
            refresh.
        :raises SnapshotError: a snapshot file is missing or does not match its checksum.
        """
        manifest = manifest or self.manifest()
        if manifest is None:
            return empty_applied()
        if manifest.schema_version != SCHEMA_VERSION:
            raise SnapshotSchemaError(
                f"The state of sync pair {self.pair_name!r} has schema version {manifest.schema_version}, "
                f"but this version of the sync reads version {SCHEMA_VERSION}. "
                "Run the sync with full_refresh to rebuild it."
            )
        folder = self.path / "snapshots" / manifest.snapshot_id
        members = self._read_frame(folder, MEMBERS_FILE, manifest)
        records = {}
        for name in sorted(manifest.files):
            if name.startswith(RECORDS_FILE_PREFIX):
                table = name[len(RECORDS_FILE_PREFIX) : -len(".parquet")]
                records[table] = self._read_frame(folder, name, manifest)
        return AppliedState(members=members, records=records)

    def _read_frame(self, folder: ObjectStoragePath, name: str, manifest: Manifest) -> pd.DataFrame:
        data = read_bytes(folder / name)
        if data is None:
            raise SnapshotError(
                f"Snapshot {manifest.snapshot_id} of sync pair {self.pair_name!r} is missing {name}. "
                "Restore the file or run the sync with full_refresh."
            )
        expected = manifest.files.get(name, {}).get("sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise SnapshotError(
                f"Snapshot file {name} of {manifest.snapshot_id} (sync pair {self.pair_name!r}) does not "
                "match its checksum. Restore the file or run the sync with full_refresh."
            )
        return _frame_from_parquet(data)

    def journal(self, base_snapshot_id: str | None) -> Journal:
        """Open the journal of the runs that start from ``base_snapshot_id`` (None: no snapshot yet)."""
        base = base_snapshot_id or INITIAL_BASE_ID
        return Journal(self.path / "journal" / base, base)

    def commit(self, applied: AppliedState, manifest: Manifest) -> Manifest:
        """Write ``applied`` as a new snapshot and make it current in one atomic manifest write.

        This method sets the schema version, snapshot id, creation time and file list of
        ``manifest``. The caller sets the watermark, pending contacts, custom fields, run id and
        parity times.
        Older snapshots beyond the retention and journals of other bases are removed afterwards.

        :return: the manifest that is now current.
        """
        snapshot_id = new_snapshot_id()
        folder = self.path / "snapshots" / snapshot_id
        files = {MEMBERS_FILE: applied.members}
        for table, frame in sorted(applied.records.items()):
            files[f"{RECORDS_FILE_PREFIX}{table}.parquet"] = frame
        listing = {}
        for name, frame in files.items():
            data = _frame_to_parquet(frame)
            write_atomic(folder / name, data)
            listing[name] = {"rows": len(frame), "sha256": hashlib.sha256(data).hexdigest()}
        current = dataclasses.replace(
            manifest,
            schema_version=SCHEMA_VERSION,
            snapshot_id=snapshot_id,
            created_at=_utc_now_iso(),
            files=listing,
        )
        write_atomic(self.manifest_path, current.to_json())
        log.info(
            "Committed snapshot %s of sync pair %s: %d members, %d record tables",
            snapshot_id,
            self.pair_name,
            len(applied.members),
            len(applied.records),
        )
        self._prune(keep_snapshot=snapshot_id)
        return current

    def snapshot_ids(self) -> list[str]:
        """Return the stored snapshot ids, oldest first."""
        return sorted(child.name for child in _children(self.path / "snapshots"))

    def _prune(self, *, keep_snapshot: str) -> None:
        # Cleanup failures never undo a commit that already happened, so they are only logged.
        try:
            stored = self.snapshot_ids()
            for snapshot_id in stored[: max(0, len(stored) - self.retention)]:
                if snapshot_id != keep_snapshot:
                    _remove_tree(self.path / "snapshots" / snapshot_id)
            for child in _children(self.path / "journal"):
                if child.name != keep_snapshot:
                    _remove_tree(child)
        except OSError as exc:
            log.warning("Could not prune old state of sync pair %s: %s", self.pair_name, exc)


def _children(path: ObjectStoragePath) -> Iterable[ObjectStoragePath]:
    if not path.exists():
        return []
    return [child for child in path.iterdir() if not child.name.startswith(".")]
