"""Both hooks against the sandbox over HTTP: paging, token rotation, faults and failure kinds."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from cryptography.fernet import Fernet

from ghl_memberstack import limits
from ghl_memberstack.exceptions import GoHighLevelAuthError, GoHighLevelLocationInactiveError
from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook
from ghl_memberstack.hooks.memberstack import MemberstackHook
from ghl_memberstack.settings import Settings
from ghl_memberstack.token_store import ObjectStorageTokenStore
from sandbox import seedgen
from sandbox.testing import running_sandbox

pytestmark = pytest.mark.integration

# Faults make retries happen; zero backoff and short timeouts keep the suite fast.
FAST = Settings(
    retry_base_delay_s=0.01,
    retry_max_delay_s=0.05,
    retry_attempts=8,
    read_timeout_s=0.5,
    connect_timeout_s=1.0,
    token_lease_poll_s=0.01,
)


@pytest.fixture(scope="module")
def sandbox():
    seed = seedgen.generate_seed((300, 200), members_per_app=0)
    with running_sandbox(seed=seed, config={"timeout_hold_s": 1.0}) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _clean_sandbox(sandbox):
    limits.reset_limiters()
    sandbox.set_config("ghl", faults={}, access_token_ttl_s=86399)
    sandbox.set_config("memberstack", faults={})
    yield


@contextmanager
def connection(conn_id: str, **fields) -> Iterator[str]:
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    os.environ[name] = json.dumps(fields)
    try:
        yield conn_id
    finally:
        os.environ.pop(name, None)


def oauth_fields(sandbox, refresh_token: str = seedgen.DEMO_REFRESH_TOKEN_B) -> dict:
    return {
        "conn_type": "gohighlevel",
        "host": sandbox.ghl_url,
        "extra": {
            "location_id": seedgen.DEMO_LOCATION_B_ID,
            "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
            "client_secret": seedgen.DEMO_OAUTH_CLIENT_SECRET,
            "refresh_token": refresh_token,
        },
    }


def pit_hook(sandbox, conn_id: str = "it_ghl_pit") -> GoHighLevelHook:
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
        {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
        }
    )
    return GoHighLevelHook(conn_id, settings=FAST)


def memberstack_hook(sandbox, key: str = seedgen.DEMO_MEMBERSTACK_KEY_A) -> MemberstackHook:
    os.environ["AIRFLOW_CONN_IT_MS"] = json.dumps(
        {"conn_type": "memberstack", "host": sandbox.memberstack_url, "password": key}
    )
    return MemberstackHook("it_ms", settings=FAST)


def location_contacts(sandbox, location_id: str) -> list[dict]:
    locations = sandbox.state()["ghl"]["locations"]
    return next(location for location in locations if location["id"] == location_id)["contacts"]


def test_search_reads_every_contact_once(sandbox):
    hook = pit_hook(sandbox)

    pages = list(hook.search_contacts(page_limit=50))

    ids = [c["id"] for page in pages for c in page]
    expected = {c["id"] for c in location_contacts(sandbox, seedgen.DEMO_LOCATION_A_ID)}
    assert len(ids) == len(set(ids))
    assert set(ids) == expected
    keys = [(c["dateUpdated"], c["id"]) for page in pages for c in page]
    assert keys == sorted(keys)


def test_search_under_faults_returns_same_contacts(sandbox):
    clean = {c["id"] for page in pit_hook(sandbox).search_contacts(page_limit=50) for c in page}
    sandbox.set_config("ghl", faults={"500": 0.15, "502": 0.1, "429": 0.1, "reset": 0.05, "timeout": 0.03})
    hook = pit_hook(sandbox)

    faulty = [c["id"] for page in hook.search_contacts(page_limit=50) for c in page]

    assert sorted(faulty) == sorted(clean)
    assert hook.request_count > len(clean) // 50


def test_children_and_location_tasks(sandbox):
    hook = pit_hook(sandbox)
    contact_ids = [c["id"] for c in location_contacts(sandbox, seedgen.DEMO_LOCATION_A_ID)[:20]]

    per_contact = hook.map_concurrently(hook.get_contact_tasks, contact_ids)
    searched = [t for page in hook.search_location_tasks(contact_ids=contact_ids, limit=25) for t in page]

    assert sorted(t["id"] for tasks in per_contact for t in tasks) == sorted(t["id"] for t in searched)
    assert hook.get_contact("no-such-contact-id") is None
    assert any(f["fieldKey"] == seedgen.MEMBERSHIP_TIER_FIELD_KEY for f in hook.get_custom_fields())


def test_oauth_refresh_and_401_recovery(sandbox, tmp_path):
    sandbox.reset(seed=seedgen.generate_seed((300, 200), members_per_app=0))
    store = ObjectStorageTokenStore(tmp_path, fernet=Fernet(Fernet.generate_key()), settings=FAST)
    with connection("it_ghl_oauth", **oauth_fields(sandbox)):
        hook = GoHighLevelHook("it_ghl_oauth", token_store=store, settings=FAST)
        first = sum(len(page) for page in hook.search_contacts(page_limit=100))
        sandbox.advance_clock(86_400)  # the sandbox now treats the access token as expired
        second = sum(len(page) for page in hook.search_contacts(page_limit=100))

    assert first == second == 200
    assert sandbox.stats("ghl")["refresh"] == {"granted": 2, "rejected": 0}


def test_dead_refresh_token_is_invalid_grant(sandbox, tmp_path):
    store = ObjectStorageTokenStore(tmp_path, fernet=Fernet(Fernet.generate_key()), settings=FAST)
    rejected_before = sandbox.stats("ghl").get("refresh", {}).get("rejected", 0)
    with connection("it_ghl_dead", **oauth_fields(sandbox, refresh_token="sandbox-unknown-refresh")):
        hook = GoHighLevelHook("it_ghl_dead", token_store=store, settings=FAST)
        with pytest.raises(GoHighLevelAuthError, match="invalid_grant"):
            list(hook.search_contacts())

    assert sandbox.stats("ghl")["refresh"]["rejected"] == rejected_before + 1


def test_inactive_location_refresh(tmp_path):
    seed = seedgen.generate_seed((5, 5), members_per_app=0)
    seed["ghl"]["locations"][1]["active"] = False
    store = ObjectStorageTokenStore(tmp_path, fernet=Fernet(Fernet.generate_key()), settings=FAST)
    with running_sandbox(seed=seed) as inactive, connection("it_ghl_inactive", **oauth_fields(inactive)):
        hook = GoHighLevelHook("it_ghl_inactive", token_store=store, settings=FAST)
        with pytest.raises(GoHighLevelLocationInactiveError) as raised:
            list(hook.search_contacts())

    assert raised.value.location_id == seedgen.DEMO_LOCATION_B_ID


def test_member_creates_under_faults_happen_once(sandbox):
    sandbox.set_config(
        "memberstack", faults={"500": 0.1, "503": 0.1, "429": 0.1, "timeout_after": 0.1, "reset": 0.05}
    )
    hook = memberstack_hook(sandbox)
    emails = [f"fault.create.{i}@example.org" for i in range(20)]

    created = hook.map_concurrently(
        lambda email: hook.create_member(
            email=email, password="Sandbox-password-0123456789", plans=["pln_members-free"]
        ),
        emails,
    )

    assert [m["auth"]["email"] for m in created] == emails
    sandbox.set_config("memberstack", faults={})
    listed = [
        m["auth"]["email"] for m in hook.list_members() if m["auth"]["email"].startswith("fault.create.")
    ]
    assert sorted(listed) == sorted(emails)
    stats = sandbox.stats("memberstack")
    assert sum(stats["faults"].values()) > 0


def test_member_plans_and_records(sandbox):
    hook = memberstack_hook(sandbox)
    member = hook.create_member(email="plans.records@example.org", password="Sandbox-password-0123456789")

    hook.add_plan(member["id"], seedgen.PLAN_VIP_FREE)
    plans = [c["planId"] for c in hook.get_member(member["id"])["planConnections"]]
    hook.remove_plan(member["id"], seedgen.PLAN_VIP_FREE)
    tables = {t["key"] for t in hook.list_data_tables()}
    hook.delete_member(member["id"])
    hook.delete_member(member["id"])

    assert plans == [seedgen.PLAN_VIP_FREE]
    assert {"ghl_tasks", "ghl_notes", "ghl_appointments"} <= tables
    assert hook.get_member(member["id"]) is None


def test_connection_tests(sandbox):
    assert pit_hook(sandbox).test_connection()[0] is True
    assert memberstack_hook(sandbox).test_connection()[0] is True

    ok, message = memberstack_hook(sandbox, key="sk_sb_wrong_key").test_connection()
    assert ok is False
    assert "secret key was rejected" in message


def test_authorize_then_hook_uses_store(sandbox, tmp_path):
    from ghl_memberstack.authorize import authorize

    sandbox.reset(seed=seedgen.generate_seed((300, 200), members_per_app=0))
    store = ObjectStorageTokenStore(tmp_path, fernet=Fernet(Fernet.generate_key()), settings=FAST)
    app_fields = oauth_fields(sandbox)
    del app_fields["extra"]["refresh_token"]
    with connection("it_ghl_new", **app_fields):
        printed = authorize("it_ghl_new", seedgen.DEMO_AUTHORIZATION_CODE_B, store=store, settings=FAST)

    printed["extra"]["client_secret"] = seedgen.DEMO_OAUTH_CLIENT_SECRET
    with connection("it_ghl_new", **printed):
        hook = GoHighLevelHook("it_ghl_new", token_store=store, settings=FAST)
        contacts = sum(len(page) for page in hook.search_contacts(page_limit=100))

    assert contacts == 200
    assert printed["extra"]["refresh_token"] == "token-store"
    assert sandbox.stats("ghl")["refresh"] == {"granted": 0, "rejected": 0}
    assert hook.token_manager.refresh_count == 0
