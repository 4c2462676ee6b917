"""The sandbox config keys that reliability tests use to script faults.

``error_after_processing`` replies HTTP 500 to requests whose change was made,
``search_repeat_cursor`` replays the previous contact search page, and ``fault_retry_after_s``
adds ``Retry-After`` to injected 429s.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sandbox import seedgen
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = pytest.mark.integration

SEED = seedgen.generate_seed(contacts_per_location=(6,), random_seed=5)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(seed=SEED, config={"rate_limits": False}) as handle:
        yield handle


@pytest.fixture
def sb(sandbox: SandboxHandle) -> SandboxHandle:
    sandbox.reset(SEED)
    for which in ("ghl", "memberstack"):
        sandbox.set_config(
            which, faults={}, error_after_processing={}, search_repeat_cursor=0, fault_retry_after_s=None
        )
    return sandbox


def memberstack(sb: SandboxHandle) -> httpx.Client:
    return httpx.Client(
        base_url=sb.memberstack_url,
        headers={"X-API-KEY": seedgen.DEMO_MEMBERSTACK_KEY_A},
        trust_env=False,
        timeout=10,
    )


def ghl(sb: SandboxHandle) -> httpx.Client:
    headers = {"Authorization": f"Bearer {seedgen.DEMO_LOCATION_A_PIT}", "Version": "2021-07-28"}
    return httpx.Client(base_url=sb.ghl_url, headers=headers, trust_env=False, timeout=10)


def test_error_after_processing_keeps_change(sb: SandboxHandle) -> None:
    sb.set_config("memberstack", error_after_processing={"POST /members": 1})
    body = {"email": "after.processing@example.org", "password": "long-enough-password"}

    with memberstack(sb) as client:
        first = client.post("/members", json=body)
        found = client.get("/members/after.processing%40example.org")
        second = client.post("/members", json={**body, "email": "second@example.org"})

    assert first.status_code == 500
    assert found.json()["data"]["auth"]["email"] == "after.processing@example.org"
    assert second.status_code == 201
    assert sb.config("memberstack")["error_after_processing"] == {"POST /members": 0}
    assert sb.stats("memberstack")["faults"]["error_after_processing"] == 1


def test_error_after_processing_skips_failures(sb: SandboxHandle) -> None:
    sb.set_config("memberstack", error_after_processing={"POST /members": 1})

    with memberstack(sb) as client:
        rejected = client.post("/members", json={"email": "no-password@example.org"})
        created = client.post(
            "/members", json={"email": "ok@example.org", "password": "long-enough-password"}
        )

    assert rejected.status_code == 400
    assert created.status_code == 500
    assert sb.config("memberstack")["error_after_processing"]["POST /members"] == 0


def test_search_repeat_cursor_replays_page(sb: SandboxHandle) -> None:
    location = seedgen.DEMO_LOCATION_A_ID
    sb.set_config("ghl", search_repeat_cursor=1)

    with ghl(sb) as client:
        first = client.post("/contacts/search", json={"locationId": location, "pageLimit": 2}).json()
        cursor = first["contacts"][-1]["searchAfter"]
        replayed = client.post(
            "/contacts/search", json={"locationId": location, "pageLimit": 2, "searchAfter": cursor}
        ).json()
        second = client.post(
            "/contacts/search", json={"locationId": location, "pageLimit": 2, "searchAfter": cursor}
        ).json()

    assert [c["id"] for c in replayed["contacts"]] == [c["id"] for c in first["contacts"]]
    assert replayed["contacts"][-1]["searchAfter"] == cursor
    assert [c["id"] for c in second["contacts"]] != [c["id"] for c in first["contacts"]]
    assert sb.config("ghl")["search_repeat_cursor"] == 0
    assert sb.stats("ghl")["faults"]["search_repeat_cursor"] == 1


def test_fault_retry_after_header(sb: SandboxHandle) -> None:
    sb.set_config("memberstack", faults={"429": 1.0}, fault_retry_after_s=0)

    with memberstack(sb) as client:
        response = client.get("/members")

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "0"


@pytest.mark.parametrize(
    "keys",
    [
        {"error_after_processing": {"members": 1}},
        {"error_after_processing": {"POST /members": -1}},
        {"error_after_processing": ["POST /members"]},
        {"search_repeat_cursor": 1.5},
        {"fault_retry_after_s": "0"},
    ],
)
def test_invalid_hook_config_rejected(sb: SandboxHandle, keys: dict) -> None:
    with pytest.raises(RuntimeError, match="failed with 400"):
        sb.set_config("ghl", **keys)
