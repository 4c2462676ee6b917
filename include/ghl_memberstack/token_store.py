"""Stores for the rotating GoHighLevel OAuth token pair, shared by tasks, plain processes and hosts.

Airflow 3 tasks cannot write connections, and ``Variable.set`` works only inside a task, so the
connection holds only the initial refresh token and the live pair lives here. Every pair carries a
generation number that grows by one with each write. It also carries the SHA-256 fingerprint of the
connection's refresh token it was seeded from, so a new refresh token in the connection (after the
user re-authorised) reseeds the store.

``ObjectStorageTokenStore`` is the default backend: one Fernet-encrypted object per grant on the
storage URL, encrypted with Airflow's Fernet key (``[core] fernet_key``), with a ``Lease`` beside it.
``MemoryTokenStore`` keeps pairs in one process, for tests.

A writer must hold the key's lease. ``save`` checks that the stored generation is still the one the
writer read, writes, then reads the object back and compares it.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

from cryptography.fernet import InvalidToken

from ghl_memberstack.exceptions import TokenStoreError
from ghl_memberstack.settings import Settings
from ghl_memberstack.storage import Lease, PathLike, default_owner, read_bytes, storage_root, write_atomic

log = logging.getLogger(__name__)

TOKEN_FOLDER = "oauth_tokens"
RECORD_VERSION = 1


def fingerprint(refresh_token: str) -> str:
    """Return the SHA-256 hex digest of a refresh token, which identifies it without revealing it."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()


def token_key(client_id: str, location_id: str) -> str:
    """Return the store key of the grant of one OAuth app (client id) on one location."""
    client_digest = hashlib.sha256(client_id.encode()).hexdigest()[:12]
    safe_location = re.sub(r"[^A-Za-z0-9_-]", "_", location_id)
    return f"gohighlevel-{safe_location}-{client_digest}"


@dataclasses.dataclass(frozen=True)
class TokenPair:
    """One stored OAuth grant state. Times are Unix epoch seconds."""

    refresh_token: str
    seed_fingerprint: str
    generation: int
    location_id: str
    access_token: str | None = None
    expires_at: float = 0.0
    # When a refresh becomes due: the expiry minus min(60 s, 20 % of expires_in) by default.
    refresh_at: float = 0.0
    obtained_at: float = 0.0
    user_type: str = "Location"
    scope: str = ""

    def is_fresh(self, now: float | None = None) -> bool:
        """Return whether the access token exists and its refresh is not yet due."""
        now = time.time() if now is None else now
        return bool(self.access_token) and now < self.refresh_at

    def to_bytes(self) -> bytes:
        """Serialise the pair as JSON."""
        return json.dumps({"version": RECORD_VERSION, **dataclasses.asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> TokenPair:
        """Parse a pair written by ``to_bytes``.

        :raises ValueError: the bytes hold no pair of a known version.
        """
        body = json.loads(raw)
        if body.pop("version", None) != RECORD_VERSION:
            raise ValueError("unknown token record version")
        return cls(**body)

    def __repr__(self) -> str:
        # Tokens never appear in reprs, tracebacks or logs.
        return (
            f"TokenPair(location_id={self.location_id!r}, generation={self.generation}, "
            f"expires_at={self.expires_at:.0f}, refresh_at={self.refresh_at:.0f})"
        )


class RenewableLease(Protocol):
    """Held lock yielded by ``TokenStore.lease``, which a long refresh can extend."""

    def renew(self) -> None:
        """Extend the lease; raise when it was lost."""


class TokenStore(abc.ABC):
    """Storage of the live OAuth pair of each grant, keyed by ``token_key``."""

    @abc.abstractmethod
    def load(self, key: str) -> TokenPair | None:
        """Return the stored pair, or None when the key was never seeded.

        :raises TokenStoreError: the stored object cannot be read or decrypted.
        """

    @abc.abstractmethod
    def _write(self, key: str, pair: TokenPair) -> None:
        """Write the pair, replacing any stored one."""

    @abc.abstractmethod
    def lease(self, key: str) -> contextlib.AbstractContextManager[RenewableLease]:
        """Return a context manager that holds the key's exclusive lease.

        :raises storage.LeaseTimeout: another refresher held it for the whole wait.
        """

    def save(self, key: str, pair: TokenPair, *, expected_generation: int | None) -> None:
        """Write ``pair`` if the stored generation is still ``expected_generation``, then verify it.

        The caller holds the key's lease. ``expected_generation`` is None when the key was never
        seeded.

        :raises TokenStoreError: another writer changed the pair, or the read-back differs.
        """
        current = self.load(key)
        current_generation = None if current is None else current.generation
        if current_generation != expected_generation:
            raise TokenStoreError(
                f"Token store key {key!r} changed while this process held its lease (generation "
                f"{current_generation}, expected {expected_generation}); the lease probably expired "
                f"during a slow refresh. Raise GHL_TOKEN_LEASE_TTL_S and rerun."
            )
        self._write(key, pair)
        stored = self.load(key)
        if stored != pair:
            raise TokenStoreError(
                f"Token store key {key!r}: the pair read back after the write differs from the pair "
                f"written (generation {pair.generation}). Check that the storage URL is writable and "
                f"consistent; if the next run reports invalid_grant, re-authorise with "
                f"`make authorize CODE=... CONN_ID=...`."
            )


class MemoryTokenStore(TokenStore):
    """Token store inside one process (tests and single-process tools)."""

    def __init__(self) -> None:
        self._pairs: dict[str, bytes] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.writes = 0

    def load(self, key: str) -> TokenPair | None:
        raw = self._pairs.get(key)
        return None if raw is None else TokenPair.from_bytes(raw)

    def _write(self, key: str, pair: TokenPair) -> None:
        self._pairs[key] = pair.to_bytes()
        self.writes += 1

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[RenewableLease]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield _NoopLease()


class _NoopLease:
    def renew(self) -> None:
        return None


class ObjectStorageTokenStore(TokenStore):
    """Default store: one Fernet-encrypted object per grant under ``<storage root>/oauth_tokens/``.

    :param root: storage root; default ``storage.storage_root()``.
    :param fernet: object with ``encrypt``/``decrypt``; default Airflow's, which needs a Fernet key.
    :param settings: lease timings (``GHL_TOKEN_LEASE_*``).
    """

    def __init__(
        self, root: PathLike | None = None, *, fernet: Any | None = None, settings: Settings | None = None
    ) -> None:
        self.folder = storage_root(root) / TOKEN_FOLDER
        self.settings = settings or Settings.from_env()
        self._fernet = fernet

    def _cipher(self) -> Any:
        if self._fernet is None:
            from airflow.sdk.crypto import get_fernet

            fernet = get_fernet()
            if not getattr(fernet, "is_encrypted", False):
                raise TokenStoreError(
                    "The OAuth token store encrypts token pairs with Airflow's Fernet key, but none is "
                    "set. Set [core] fernet_key (AIRFLOW__CORE__FERNET_KEY) to the same value on every "
                    "Airflow component and process that calls GoHighLevel."
                )
            self._fernet = fernet
        return self._fernet

    def _path(self, key: str) -> Any:
        return self.folder / f"{key}.json.fernet"

    def load(self, key: str) -> TokenPair | None:
        raw = read_bytes(self._path(key))
        if raw is None:
            return None
        cipher = self._cipher()
        try:
            return TokenPair.from_bytes(cipher.decrypt(raw))
        except (InvalidToken, ValueError, TypeError) as error:
            raise TokenStoreError(
                f"Token store object {self._path(key)} cannot be decrypted or parsed "
                f"({type(error).__name__}). It was written with another Fernet key or is damaged: restore "
                f"the key, or re-authorise with `make authorize CODE=... CONN_ID=...`."
            ) from None

    def _write(self, key: str, pair: TokenPair) -> None:
        write_atomic(self._path(key), self._cipher().encrypt(pair.to_bytes()))

    def lease(self, key: str) -> contextlib.AbstractContextManager[RenewableLease]:
        return Lease(
            self.folder / f"{key}.lease",
            owner=f"{default_owner()}:{uuid.uuid4().hex[:8]}",
            ttl_s=self.settings.token_lease_ttl_s,
            wait_s=self.settings.token_lease_wait_s,
            poll_s=self.settings.token_lease_poll_s,
        )
