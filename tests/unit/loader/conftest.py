"""Fixtures of the loader tests: a fake Memberstack app behind the real hook, and a journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from ghl_memberstack.hooks.memberstack import MemberstackHook
from ghl_memberstack.limits import reset_limiters
from ghl_memberstack.settings import Settings
from ghl_memberstack.snapshot import Journal
from ghl_memberstack.storage import as_storage_path

from fake_memberstack import FakeMemberstack

CONN_ID = "memberstack_loader_test"


@pytest.fixture
def fake() -> FakeMemberstack:
    return FakeMemberstack()


@pytest.fixture
def hook(fake: FakeMemberstack, monkeypatch: pytest.MonkeyPatch) -> MemberstackHook:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        '{"conn_type": "memberstack", "host": "http://127.0.0.1:9", "password": "sk_sb_loader_test_key"}',
    )
    reset_limiters()
    settings = Settings(
        retry_attempts=3,
        retry_base_delay_s=0,
        retry_max_delay_s=0,
        memberstack_rate_limit_per_s=100_000,
        memberstack_max_workers=4,
    )
    hook = MemberstackHook(
        CONN_ID, transport=fake.transport(), settings=settings, sleep=lambda _seconds: None
    )
    yield hook
    hook.close()
    reset_limiters()


@pytest.fixture
def storage_root(tmp_path: Path):
    return as_storage_path(tmp_path / "storage")


@pytest.fixture
def journal(storage_root) -> Journal:
    return Journal(storage_root / "state" / "test" / "journal" / "base", "base")
