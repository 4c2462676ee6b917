"""Fixtures of the hook unit tests; the fakes themselves live in ``hook_fakes``."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from hook_fakes import (
    LOCATION_ID,
    MEMBERSTACK_KEY,
    PIT_TOKEN,
    CLIENT_ID,
    CLIENT_SECRET,
    SEED_REFRESH_TOKEN,
    FakeGoHighLevel,
    FakeMemberstack,
    set_connection,
)

from ghl_memberstack import limits


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Any:
    limits.reset_limiters()
    yield
    limits.reset_limiters()


@pytest.fixture
def sleeps() -> list[float]:
    """Delays passed to the hooks' sleep function; nothing really waits."""
    return []


@pytest.fixture
def fernet() -> Fernet:
    return Fernet(Fernet.generate_key())


@pytest.fixture
def pit_connection(monkeypatch: pytest.MonkeyPatch) -> str:
    set_connection(
        monkeypatch,
        "ghl_pit",
        conn_type="gohighlevel",
        host="http://127.0.0.1:9",
        password=PIT_TOKEN,
        extra={"location_id": LOCATION_ID},
    )
    return "ghl_pit"


@pytest.fixture
def oauth_connection(monkeypatch: pytest.MonkeyPatch) -> str:
    set_connection(
        monkeypatch,
        "ghl_oauth",
        conn_type="gohighlevel",
        host="http://127.0.0.1:9",
        extra={
            "location_id": LOCATION_ID,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": SEED_REFRESH_TOKEN,
        },
    )
    return "ghl_oauth"


@pytest.fixture
def memberstack_connection(monkeypatch: pytest.MonkeyPatch) -> str:
    set_connection(
        monkeypatch, "ms_unit", conn_type="memberstack", host="http://127.0.0.1:9", password=MEMBERSTACK_KEY
    )
    return "ms_unit"


@pytest.fixture
def fake_ghl() -> FakeGoHighLevel:
    return FakeGoHighLevel()


@pytest.fixture
def fake_memberstack() -> FakeMemberstack:
    return FakeMemberstack()
