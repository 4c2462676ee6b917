"""Storage helpers, the lease lock across processes, and the encrypted token store."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hook_fakes import fast_settings

from ghl_memberstack.exceptions import TokenStoreError
from ghl_memberstack.storage import (
    Lease,
    LeaseLost,
    LeaseTimeout,
    read_bytes,
    storage_root,
    write_atomic,
)
from ghl_memberstack.token_store import ObjectStorageTokenStore, TokenPair, fingerprint, token_key


def pair(generation: int = 1, **fields) -> TokenPair:
    values = {
        "refresh_token": "rt-secret-value-123456",
        "seed_fingerprint": fingerprint("rt-seed"),
        "generation": generation,
        "location_id": "Loc1",
        "access_token": "at-secret-value-123456",
        "expires_at": time.time() + 3600,
        "refresh_at": time.time() + 3540,
    }
    values.update(fields)
    return TokenPair(**values)


def test_storage_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert str(storage_root()) == f"file://{tmp_path}/home/ghl_memberstack"

    monkeypatch.setenv("AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE", str(tmp_path / "shared"))
    assert str(storage_root()) == f"file://{tmp_path}/shared"

    assert str(storage_root(tmp_path / "explicit")) == f"file://{tmp_path}/explicit"


def test_write_atomic_and_read(tmp_path):
    target = storage_root(tmp_path) / "a" / "b.bin"

    assert read_bytes(target) is None
    write_atomic(target, b"one")
    write_atomic(target, b"two")

    assert read_bytes(target) == b"two"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin"]  # no temporary files left


def test_lease_excludes_other_owner(tmp_path):
    path = tmp_path / "pair.lease"
    with Lease(path, owner="run-a", ttl_s=30, wait_s=0, poll_s=0.01):
        with pytest.raises(LeaseTimeout, match="held by 'run-a'") as raised:
            with Lease(path, owner="run-b", ttl_s=30, wait_s=0.05, poll_s=0.01):
                pass
    assert raised.value.holder == "run-a"
    with Lease(path, owner="run-b", ttl_s=30, wait_s=0, poll_s=0.01) as lease:
        assert lease.held


def test_lease_expired_is_taken_over(tmp_path):
    path = tmp_path / "pair.lease"
    stale = Lease(path, owner="crashed", ttl_s=0.05, wait_s=0, poll_s=0.01)
    stale.acquire()
    time.sleep(0.1)

    with Lease(path, owner="next", ttl_s=30, wait_s=0, poll_s=0.01):
        assert json.loads(read_bytes(path))["owner"] == "next"
        with pytest.raises(LeaseLost):
            stale.renew()
    stale.release()  # the lease already passed on; releasing must not remove the new holder's
    assert read_bytes(path) is None


def test_lease_same_owner_takes_over(tmp_path):
    path = tmp_path / "pair.lease"
    Lease(path, owner="run-1", ttl_s=60, wait_s=0).acquire()

    with Lease(path, owner="run-1", ttl_s=60, wait_s=0) as lease:
        assert lease.held


def _count_under_lease(path: str, counter: str, rounds: int) -> None:
    for _ in range(rounds):
        with Lease(
            path, owner=f"proc-{multiprocessing.current_process().pid}", ttl_s=30, wait_s=30, poll_s=0.001
        ):
            value = int(Path(counter).read_text())
            time.sleep(0.001)
            Path(counter).write_text(str(value + 1))


def test_lease_excludes_processes(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_count_under_lease, args=(str(tmp_path / "c.lease"), str(counter), 20))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)

    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert counter.read_text() == "80"  # no lost update: the increments never overlapped


def test_token_store_encrypts_and_round_trips(tmp_path, fernet):
    store = ObjectStorageTokenStore(tmp_path, fernet=fernet, settings=fast_settings())
    key = token_key("client", "Loc1")
    stored = pair()

    with store.lease(key):
        store.save(key, stored, expected_generation=None)

    raw = (tmp_path / "oauth_tokens" / f"{key}.json.fernet").read_bytes()
    assert b"rt-secret-value" not in raw
    assert b"at-secret-value" not in raw
    assert store.load(key) == stored
    assert "secret" not in repr(stored)


def test_token_store_generation_check(tmp_path, fernet):
    store = ObjectStorageTokenStore(tmp_path, fernet=fernet, settings=fast_settings())
    store.save("k", pair(1), expected_generation=None)

    with pytest.raises(TokenStoreError, match="changed while"):
        store.save("k", pair(3), expected_generation=2)
    assert store.load("k").generation == 1


def test_token_store_wrong_fernet_key(tmp_path, fernet):
    ObjectStorageTokenStore(tmp_path, fernet=fernet).save("k", pair(), expected_generation=None)
    other = ObjectStorageTokenStore(tmp_path, fernet=Fernet(Fernet.generate_key()))

    with pytest.raises(TokenStoreError, match="another Fernet key") as raised:
        other.load("k")
    assert "rt-secret" not in str(raised.value)


def test_token_store_requires_fernet_key(tmp_path, monkeypatch):
    from airflow.sdk import crypto

    class NoKey:
        is_encrypted = False

    monkeypatch.setattr(crypto, "get_fernet", lambda: NoKey())
    store = ObjectStorageTokenStore(tmp_path)

    with pytest.raises(TokenStoreError, match="AIRFLOW__CORE__FERNET_KEY"):
        store.save("k", pair(), expected_generation=None)


def test_token_key_separates_apps_and_locations():
    keys = {token_key("app-a", "Loc1"), token_key("app-b", "Loc1"), token_key("app-a", "Loc2")}

    assert len(keys) == 3
    assert token_key("app-a", "Loc/../x").startswith("gohighlevel-Loc____x-")
