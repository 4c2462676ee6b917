"""The project's storage URL: root path, atomic writes and a lease lock on any ``ObjectStoragePath``.

The root is a local folder by default and any fsspec URL (``s3://bucket/prefix``) in production, so
workers on different machines share snapshots, journals, reports and the OAuth token store.

A lease is a small JSON object (owner, token, expiry) next to the data it protects. On a local
filesystem the read-check-write of the lease runs under ``fcntl.flock`` on a sidecar file, so
threads and processes of one machine never both hold it. Object stores offer no such lock here: a
lease there is written, then read back after ``poll_s`` to see whether another writer replaced it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow.sdk import ObjectStoragePath
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

STORAGE_VARIABLE = "ghl_memberstack_storage"
STORAGE_ENV_VAR = "AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE"

PathLike = ObjectStoragePath | str | os.PathLike


def storage_root(override: PathLike | None = None) -> ObjectStoragePath:
    """Return the storage root: ``override``, else the Variable, else ``$AIRFLOW_HOME/ghl_memberstack``.

    The Variable ``ghl_memberstack_storage`` may come from Airflow or from the environment variable
    ``AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE``. The environment variable is read first, so plain
    processes need no Airflow metadata database.
    """
    if override:
        return as_storage_path(override)
    configured = os.environ.get(STORAGE_ENV_VAR, "").strip() or _variable_value()
    if configured:
        return as_storage_path(configured)
    airflow_home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return as_storage_path(Path(airflow_home).resolve() / "ghl_memberstack")


def _variable_value() -> str | None:
    from airflow.sdk import Variable

    value = Variable.get(STORAGE_VARIABLE, default=None)
    return str(value).strip() if value else None


def as_storage_path(path: PathLike) -> ObjectStoragePath:
    """Return ``path`` as an ``ObjectStoragePath``; plain local paths become ``file://`` URLs."""
    if isinstance(path, ObjectStoragePath):
        return path
    text = os.fspath(path)
    if "://" not in text:
        text = "file://" + str(Path(text).expanduser().resolve())
    return ObjectStoragePath(text)


def is_local(path: ObjectStoragePath) -> bool:
    """Return whether ``path`` lives on the local filesystem."""
    return isinstance(path.fs, LocalFileSystem)


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` so that readers see the old object or the new one, never a partial write.

    Locally the bytes go to a temporary file in the same folder, are fsynced and renamed over the
    target. An object store replaces an object in one PUT, so the bytes are written directly.
    """
    target = as_storage_path(path)
    if not is_local(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return
    local = Path(target.path)
    local.parent.mkdir(parents=True, exist_ok=True)
    temporary = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, local)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def read_bytes(path: PathLike) -> bytes | None:
    """Return the object's bytes, or None when it does not exist."""
    try:
        return as_storage_path(path).read_bytes()
    except FileNotFoundError:
        return None


def default_owner() -> str:
    """Return an owner string naming this host, process and thread, for lease diagnostics."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class LeaseTimeout(TimeoutError):
    """Another owner held the lease for longer than the wait allowed."""

    def __init__(self, message: str, *, path: str = "", holder: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.holder = holder

    def __reduce__(self):  # noqa: ANN204
        return (self.__class__, self.args, self.__dict__)


class LeaseLost(RuntimeError):
    """The lease expired and another owner took it before this owner renewed or released it."""


class Lease:
    """Exclusive lease on a storage object, for one owner at a time across threads, processes and hosts.

    Use it as a context manager. Entering waits up to ``wait_s`` seconds, polling every ``poll_s``
    seconds, and raises ``LeaseTimeout`` naming the holder. A lease expires ``ttl_s`` seconds after it
    was taken or last renewed, so a crashed owner blocks others for at most ``ttl_s``. A lease whose
    recorded owner equals ``owner`` is taken over at once, so a retried task that reuses its owner
    string (for example its run id) does not wait for its own earlier attempt.

    Expiry uses the wall clock, so hosts sharing a lease need synchronised clocks (NTP).
    """

    def __init__(
        self,
        path: PathLike,
        *,
        owner: str,
        ttl_s: float,
        wait_s: float,
        poll_s: float = 0.1,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"Lease ttl_s must be positive, got {ttl_s!r}.")
        self.path = as_storage_path(path)
        self.owner = owner
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        self._token: str | None = None

    @property
    def held(self) -> bool:
        """Whether this object acquired the lease and has not released it."""
        return self._token is not None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Wait for the lease and take it.

        :raises LeaseTimeout: another owner kept it for ``wait_s`` seconds.
        """
        deadline = self._clock() + self.wait_s
        token = uuid.uuid4().hex
        while True:
            holder = self._try_take(token)
            if holder is None:
                self._token = token
                log.debug("Lease %s acquired by %s.", self.path, self.owner)
                return
            if self._clock() >= deadline:
                raise LeaseTimeout(
                    f"Timed out after {self.wait_s:g} s waiting for the lease {self.path}, held by "
                    f"{holder.get('owner')!r} until {_format_epoch(holder.get('expires_at'))}. If that "
                    f"owner crashed, the lease expires by itself; otherwise wait for its run to finish.",
                    path=str(self.path),
                    holder=holder.get("owner"),
                )
            self._sleep(self.poll_s)

    def renew(self) -> None:
        """Extend the lease to ``ttl_s`` seconds from now.

        :raises LeaseLost: the lease expired and another owner took it.
        """
        if self._token is None:
            raise LeaseLost(f"Lease {self.path} is not held by {self.owner!r}, so it cannot be renewed.")
        with self._mutex():
            current = self._read()
            if current is None or current.get("token") != self._token:
                self._token = None
                raise LeaseLost(
                    f"Lease {self.path} expired and was taken by "
                    f"{(current or {}).get('owner')!r} before {self.owner!r} renewed it."
                )
            self._write(self._token)

    def release(self) -> None:
        """Remove the lease if this owner still holds it; a lease taken over by others stays."""
        if self._token is None:
            return
        token, self._token = self._token, None
        with self._mutex():
            current = self._read()
            if current is not None and current.get("token") == token:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                log.debug("Lease %s released by %s.", self.path, self.owner)
            else:
                log.warning(
                    "Lease %s had expired and passed to %r before %r released it.",
                    self.path,
                    (current or {}).get("owner"),
                    self.owner,
                )

    def _try_take(self, token: str) -> dict[str, Any] | None:
        """Take the lease if it is free, expired or ours; return None on success, else the holder."""
        with self._mutex():
            current = self._read()
            if current is not None and not self._takeable(current):
                return current
            self._write(token)
        if is_local(self.path):
            return None
        # Object stores: another writer may have written between our read and our write.
        self._sleep(self.poll_s)
        current = self._read()
        if current is not None and current.get("token") == token:
            return None
        return current or {"owner": None, "expires_at": None}

    def _takeable(self, current: dict[str, Any]) -> bool:
        expired = float(current.get("expires_at") or 0) <= self._clock()
        return expired or current.get("owner") == self.owner

    def _read(self) -> dict[str, Any] | None:
        raw = read_bytes(self.path)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            log.warning("Lease %s is not valid JSON; treating it as expired.", self.path)
            return {"owner": None, "expires_at": 0}

    def _write(self, token: str) -> None:
        now = self._clock()
        body = {"owner": self.owner, "token": token, "acquired_at": now, "expires_at": now + self.ttl_s}
        write_atomic(self.path, json.dumps(body).encode())

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        if not is_local(self.path):
            yield
            return
        mutex_path = Path(self.path.path).with_name(Path(self.path.path).name + ".mutex")
        mutex_path.parent.mkdir(parents=True, exist_ok=True)
        with open(mutex_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _format_epoch(value: Any) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(value)))
    except (TypeError, ValueError):
        return "an unknown time"
