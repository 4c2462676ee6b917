"""The official Node client ``@memberstack/admin`` 1.7.0, unmodified, against the sandbox.

``tests/node/memberstack_client.mjs`` drives the client through its ``baseUrl`` option and prints
every result as JSON. This test runs it once and checks each result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import seedgen
from sandbox.testing import running_sandbox

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).resolve().parents[2] / "node"
SCRIPT = NODE_DIR / "memberstack_client.mjs"
MEMBER_COUNT = 230
NODE_TIMEOUT_S = 120

SEED = seedgen.generate_seed(contacts_per_location=(3,), tasks=0, notes=0, appointments=0,
                             members_per_app=MEMBER_COUNT, random_seed=5)
SEEDED_IDS = {member["id"] for member in SEED["memberstack"]["apps"][0]["members"]}


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH; install Node.js 18 or later to run the official client")
    if not (NODE_DIR / "node_modules" / "@memberstack" / "admin").is_dir():
        pytest.skip("@memberstack/admin is not installed; run `make install`")

    with running_sandbox(seed=SEED) as sb:
        sb.set_config("memberstack", rate_limits=False, latency_ms=0)
        # Proxy variables are dropped so axios talks to the loopback sandbox directly.
        env = {name: value for name, value in os.environ.items() if not name.lower().endswith("_proxy")}
        env.update({
            "MEMBERSTACK_URL": sb.memberstack_url,
            "MEMBERSTACK_KEY": seedgen.DEMO_MEMBERSTACK_KEY_A,
            "MEMBERSTACK_FREE_PLAN": seedgen.PLAN_MEMBERS_FREE,
            "MEMBERSTACK_PAID_PLAN": seedgen.PLAN_PREMIUM_PAID,
            "GHL_LOCATION_ID": seedgen.DEMO_LOCATION_A_ID,
        })
        completed = subprocess.run([node, str(SCRIPT)], cwd=NODE_DIR, env=env, capture_output=True,
                                   text=True, timeout=NODE_TIMEOUT_S, check=False)
    assert completed.returncode == 0, completed.stderr
    yield json.loads(completed.stdout)


def _plan_ids(member: dict[str, Any]) -> set[str]:
    return {connection["planId"] for connection in member["planConnections"]}


def test_members_paged_with_limit(report: dict[str, Any]) -> None:
    pages = report["pagesWithLimit"]
    ids = [member_id for page in pages for member_id in page["ids"]]

    assert [page["size"] for page in pages] == [100, 100, 30]
    assert len(set(ids)) == len(ids)
    assert set(ids) == SEEDED_IDS
    assert [page["hasNextPage"] for page in pages] == [True, True, False]
    assert all(page["totalCount"] == MEMBER_COUNT for page in pages)
    assert all(isinstance(page["endCursor"], int) for page in pages)
    assert not any(page["hasJson"] for page in pages)


def test_members_paged_with_default_size(report: dict[str, Any]) -> None:
    # Without a limit the client sends `members?&after=<cursor>`, which the API tolerates.
    pages = report["pagesWithDefaultSize"]
    ids = [member_id for page in pages for member_id in page["ids"]]

    assert [page["size"] for page in pages] == [50, 50, 50, 50, 30]
    assert len(set(ids)) == len(ids)
    assert set(ids) == SEEDED_IDS


def test_member_create_and_retrieve(report: dict[str, Any]) -> None:
    created = report["created"]

    assert created["id"].startswith("mem_")
    assert created["auth"]["email"] == "ada+node@example.com"
    assert created["customFields"]["first-name"] == "Ada"
    assert "not-a-defined-field" not in created["customFields"]
    assert created["metaData"] == {"ghlContactId": "nodeContact000000001"}
    assert _plan_ids(created) == {seedgen.PLAN_MEMBERS_FREE}
    assert report["duplicateEmail"]["ok"] is False
    assert report["retrievedById"]["id"] == created["id"]
    assert report["retrievedByEmail"]["id"] == created["id"]
    assert report["missingByEmail"] == {"data": None}


def test_member_update_merges_fields(report: dict[str, Any]) -> None:
    updated = report["updated"]

    assert updated["customFields"]["first-name"] == "Ada"
    assert updated["customFields"]["last-name"] == "Lovelace"
    assert updated["metaData"] == {"ghlContactId": "nodeContact000000001", "ghlLocationId": "loc"}
    assert report["updateUnknown"]["ok"] is False


def test_member_free_plans(report: dict[str, Any]) -> None:
    assert report["removeFreePlan"] == "OK"
    assert seedgen.PLAN_MEMBERS_FREE not in _plan_ids(report["afterRemovePlan"])
    assert report["addFreePlan"] == "OK"
    assert seedgen.PLAN_MEMBERS_FREE in _plan_ids(report["afterAddPlan"])
    assert report["addPaidPlan"]["ok"] is False
    assert seedgen.PLAN_PREMIUM_PAID not in _plan_ids(report["afterAddPlan"])


def test_member_delete(report: dict[str, Any]) -> None:
    assert report["deleted"]["data"]["id"] == report["created"]["id"]
    assert report["afterDelete"] == {"data": None}


def test_data_tables_listed(report: dict[str, Any]) -> None:
    keys = {table["key"] for table in report["tables"]["tables"]}
    fields = {field["key"]: field["type"] for field in report["table"]["fields"]}

    assert keys == set(seedgen.DATA_TABLES)
    assert report["table"]["key"] == "ghl_notes"
    assert fields["ghl_note_id"] == "TEXT_UNIQUE"
    assert fields["member"] == "MEMBER_REFERENCE"


def test_record_create_query_update_delete(report: dict[str, Any]) -> None:
    created = report["recordCreated"]
    record_id = created["id"]

    assert created["data"]["body"] == "<p>Paid &amp; <b>signed</b></p>"
    assert created["data"]["member"] == report["created"]["id"]
    assert report["recordDuplicate"]["ok"] is False
    assert report["recordUnknownMember"]["ok"] is False
    assert [record["id"] for record in report["recordQuery"]["records"]] == [record_id]
    assert report["recordUpdated"]["data"]["body"] == "plain text"
    assert report["recordUpdated"]["data"]["ghl_note_id"] == "nodeNote000000000001"
    assert report["recordFetched"]["record"]["data"]["body"] == "plain text"
    assert report["recordDeleted"]["id"] == record_id
    after_delete = report["recordAfterDelete"]
    assert after_delete["ok"] is False or after_delete["value"]["data"]["record"] is None
