"""The sync DAG end to end: ``dag.test()`` against the sandbox over HTTP, demo seed, both demo pairs.

The tests share one sandbox and one storage folder, so they run in file order. They cover the
first sync, a run with no change, a run interrupted by Memberstack faults and then cleared and
re-run, a backfill, a dry run and an unknown pair. After the runs that write, Memberstack is read
back through its API and compared with the GHL data under the default mapping.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from email_validator import EmailNotValidError, validate_email

from sandbox import seedgen
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "ghl_memberstack_sync"
PAIRS = {
    "demo_a": (seedgen.DEMO_LOCATION_A_ID, seedgen.DEMO_MEMBERSTACK_KEY_A),
    "demo_b": (seedgen.DEMO_LOCATION_B_ID, seedgen.DEMO_MEMBERSTACK_KEY_B),
}
TAG_PLANS = {"vip": seedgen.PLAN_VIP_FREE, "member": seedgen.PLAN_MEMBERS_FREE}
TABLE_ID_FIELDS = {"ghl_tasks": "ghl_task_id", "ghl_notes": "ghl_note_id", "ghl_appointments": "ghl_appointment_id"}
TABLE_SOURCES = {"ghl_tasks": "tasks", "ghl_notes": "notes", "ghl_appointments": "appointments"}
START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)




@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(config={"rate_limit_scale": 100, "timeout_hold_s": 2}) as handle:
        yield handle


@pytest.fixture(scope="module")
def storage(sandbox: SandboxHandle, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("sync-storage")
    connections = {
        "gohighlevel_demo_a": {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
        },
        "gohighlevel_demo_b": {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "extra": {
                "location_id": seedgen.DEMO_LOCATION_B_ID,
                "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
                "client_secret": seedgen.DEMO_OAUTH_CLIENT_SECRET,
                "refresh_token": seedgen.DEMO_REFRESH_TOKEN_B,
            },
        },
        "memberstack_demo_a": {"conn_type": "memberstack", "host": sandbox.memberstack_url, "password": PAIRS["demo_a"][1]},
        "memberstack_demo_b": {"conn_type": "memberstack", "host": sandbox.memberstack_url, "password": PAIRS["demo_b"][1]},
    }
    values = {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(body) for conn_id, body in connections.items()}
    values.update(
        AIRFLOW_VAR_GHL_MEMBERSTACK_SYNC_PAIRS="sync_pairs.demo.yaml",
        AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE=str(folder),
        MEMBERSTACK_RATE_LIMIT_PER_S="5000",
        GHL_MEMBERSTACK_RETRY_BASE_DELAY_S="0",
        GHL_MEMBERSTACK_RETRY_MAX_DELAY_S="0",
        GHL_MEMBERSTACK_READ_TIMEOUT_S="1",
        GHL_MEMBERSTACK_PAIR_LEASE_POLL_S="0.05",
    )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        yield folder


@pytest.fixture(scope="module")
def sync_dag(storage: Path) -> Any:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # pragma: no cover - older Airflow
        from airflow.models.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags[DAG_ID]
    # A failing task fails the test at once instead of waiting out Airflow's retry delay.
    for task in dag.tasks:
        task.retries = 0
    return dag


@pytest.fixture(scope="module")
def first_run(sync_dag: Any, sandbox: SandboxHandle, storage: Path) -> dict[str, Any]:
    return run_dag(sync_dag, sandbox, storage, START)




def run_dag(dag: Any, sandbox: SandboxHandle, storage: Path, logical_date: dt.datetime, conf: dict | None = None) -> dict[str, Any]:
    """Run the DAG once and return its state, report and the requests each sandbox served."""
    before = {which: sandbox.stats(which) for which in ("ghl", "memberstack")}
    # A fixed run_after gives the same run id for the same logical date, so running a date again
    # clears and re-runs that run, with the run's work folder and lease owner as before.
    dag_run = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=conf or {})
    after = {which: sandbox.stats(which) for which in ("ghl", "memberstack")}
    report_path = storage / "reports" / DAG_ID / dag_run.run_id / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else None
    return {
        "state": str(dag_run.state),
        "run_id": dag_run.run_id,
        "report": report,
        "ghl": route_delta(before["ghl"], after["ghl"]),
        "memberstack": route_delta(before["memberstack"], after["memberstack"]),
    }


def route_delta(before: dict[str, Any], after: dict[str, Any]) -> Counter:
    """Requests per route served between two stats snapshots."""
    delta: Counter = Counter()
    for route, statuses in after["by_route"].items():
        old = before["by_route"].get(route, {})
        count = sum(statuses.values()) - sum(old.values())
        if count:
            delta[route] = count
    return delta


def memberstack_writes(delta: Counter) -> int:
    reads = ("GET ", "POST /v2/data-tables/{table}/records/query")
    return sum(count for route, count in delta.items() if not route.startswith(reads))


def ghl_api_requests(delta: Counter) -> int:
    """GHL requests other than token refreshes."""
    return sum(count for route, count in delta.items() if "/oauth/token" not in route)


def list_members(sandbox: SandboxHandle, key: str) -> list[dict[str, Any]]:
    members: list[dict[str, Any]] = []
    with httpx.Client(base_url=sandbox.memberstack_url, headers={"X-API-KEY": key}, trust_env=False) as client:
        after = None
        while True:
            params: dict[str, Any] = {"first": 100, "includeJSON": "true"}
            if after is not None:
                params["after"] = after
            body = client.get("/members", params=params).raise_for_status().json()
            members.extend(body["data"])
            if not body["hasNextPage"]:
                return members
            after = body["endCursor"]


def list_records(sandbox: SandboxHandle, key: str, table: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with httpx.Client(base_url=sandbox.memberstack_url, headers={"X-API-KEY": key}, trust_env=False) as client:
        after = None
        while True:
            find: dict[str, Any] = {"take": 100}
            if after is not None:
                find["after"] = after
            response = client.post(f"/v2/data-tables/{table}/records/query", json={"query": {"findMany": find}})
            data = response.raise_for_status().json()["data"]
            records.extend(data["records"])
            if not data["pagination"]["hasMore"]:
                return records
            after = data["pagination"]["endCursor"]


def normalized_tags(tags: list[str] | None) -> set[str]:
    return {" ".join(part.split()).casefold() for tag in tags or [] for part in tag.split(",") if part.strip()}


def valid_contacts(contacts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Contacts that should have a member: a valid email, and the earliest added among equal emails."""
    by_email: dict[str, dict[str, Any]] = {}
    for contact in contacts:
        email = (contact.get("email") or "").strip().lower()
        if not email:
            continue
        try:
            validate_email(email, check_deliverability=False)
        except EmailNotValidError:
            continue
        rank = (contact.get("dateAdded") or "9999", contact["id"])
        current = by_email.get(email)
        if current is None or rank < (current.get("dateAdded") or "9999", current["id"]):
            by_email[email] = contact
    return {contact["id"]: contact for contact in by_email.values()}


def mismatches(sandbox: SandboxHandle) -> list[str]:
    """Compare every app with its location under the default mapping; return what differs."""
    from ghl_memberstack.mapping import normalize_phone, phone_region

    state = sandbox.state()
    locations = {location["id"]: location for location in state["ghl"]["locations"]}
    problems: list[str] = []
    for pair, (location_id, key) in PAIRS.items():
        location = locations[location_id]
        tier_ids = {f["id"] for f in location["custom_fields"] if f["fieldKey"] == "contact.membership_tier"}
        expected = valid_contacts(location["contacts"])
        members = list_members(sandbox, key)
        linked = Counter(m.get("metaData", {}).get("ghlContactId") for m in members)
        by_contact = {m.get("metaData", {}).get("ghlContactId"): m for m in members}

        duplicates = sorted(cid for cid, count in linked.items() if cid and count > 1)
        if duplicates:
            problems.append(f"{pair}: contacts with more than one member: {duplicates[:5]}")
        extra = sorted(cid for cid in linked if cid and cid not in expected)
        if extra:
            problems.append(f"{pair}: members of contacts that should have none: {extra[:5]}")
        emails = Counter(m["auth"]["email"] for m in members)
        if any(count > 1 for count in emails.values()):
            problems.append(f"{pair}: an email is held by more than one member")

        for contact_id, contact in expected.items():
            member = by_contact.get(contact_id)
            if member is None:
                problems.append(f"{pair}: contact {contact_id} has no member")
                continue
            problems.extend(f"{pair}: contact {contact_id}: {p}" for p in member_problems(contact, member, location_id, tier_ids, normalize_phone, phone_region))

        for table, field in TABLE_ID_FIELDS.items():
            records = list_records(sandbox, key, table)
            ids = Counter(r["data"][field] for r in records)
            if any(count > 1 for count in ids.values()):
                problems.append(f"{pair}: {table} has duplicate records")
            stored = {r["data"][field]: r for r in records}
            ghl_objects = {obj["id"]: obj for obj in location[TABLE_SOURCES[table]] if obj.get("contactId") in expected}
            missing = sorted(set(ghl_objects) - set(stored))
            if missing:
                problems.append(f"{pair}: {table} lacks records {missing[:5]}")
            for ghl_id, obj in ghl_objects.items():
                record = stored.get(ghl_id)
                member = by_contact.get(obj["contactId"])
                if record is None or member is None:
                    continue
                if record["data"].get("member") != member["id"]:
                    problems.append(f"{pair}: {table} {ghl_id} is not linked to its member")
                if table == "ghl_notes" and record["data"].get("body") != (obj.get("body") or ""):
                    problems.append(f"{pair}: note {ghl_id} body differs")
                if table == "ghl_tasks" and bool(record["data"].get("completed")) != bool(obj.get("completed")):
                    problems.append(f"{pair}: task {ghl_id} completed differs")
    return problems


def member_problems(contact, member, location_id, tier_ids, normalize_phone, phone_region) -> list[str]:  # noqa: ANN001
    fields = member.get("customFields") or {}
    tags = normalized_tags(contact.get("tags"))
    tier = next((str(f.get("value")) for f in contact.get("customFields") or [] if f.get("id") in tier_ids), "")
    phone = normalize_phone(contact.get("phone"), phone_region(contact.get("country"), "US"))[0]
    expected_fields = {
        "email": (contact["email"] or "").strip().lower(),
        "first-name": contact.get("firstName") or "",
        "last-name": contact.get("lastName") or "",
        "ghl-tags": ",".join(sorted(tags)),
        "ghl-status": "active",
        "membership-tier": tier,
        "phone": phone,
    }
    actual = {"email": member["auth"]["email"], **{k: fields.get(k, "") or "" for k in expected_fields if k != "email"}}
    problems = [f"{name} is {actual[name]!r}, expected {value!r}" for name, value in expected_fields.items() if actual[name] != value]
    meta = member.get("metaData") or {}
    if meta.get("ghlLocationId") != location_id:
        problems.append("metaData.ghlLocationId differs")
    plans = {c["planId"] for c in member.get("planConnections") or [] if c.get("active", True)}
    managed = set(TAG_PLANS.values())
    want_plans = {plan for tag, plan in TAG_PLANS.items() if tag in tags}
    if plans & managed != want_plans:
        problems.append(f"managed plans are {sorted(plans & managed)}, expected {sorted(want_plans)}")
    return problems


def ghl_hook(conn_id: str) -> Any:
    from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

    return GoHighLevelHook(gohighlevel_conn_id=conn_id)


def manifests(storage: Path) -> dict[str, Any]:
    from ghl_memberstack.snapshot import SnapshotStore
    from ghl_memberstack.storage import as_storage_path

    return {pair: SnapshotStore(as_storage_path(storage), pair).manifest() for pair in PAIRS}




def test_first_sync_succeeds(first_run: dict[str, Any]) -> None:
    assert first_run["state"] == "success"
    report = first_run["report"]
    assert report["status"] == "ok"
    for pair in PAIRS:
        contacts = report["pairs"][pair]["counts"]["contacts"]
        assert report["pairs"][pair]["status"] == "ok"
        assert contacts["created"] > 0
        assert contacts["quarantined"] > 0
        assert contacts["failed"] == 0


def test_first_sync_matches_mapping(first_run: dict[str, Any], sandbox: SandboxHandle) -> None:
    problems = mismatches(sandbox)
    assert problems == [], "\n".join(problems[:30])


def test_first_sync_member_count(first_run: dict[str, Any], sandbox: SandboxHandle) -> None:
    locations = {location["id"]: location for location in sandbox.state()["ghl"]["locations"]}
    for pair, (location_id, _key) in PAIRS.items():
        expected = len(valid_contacts(locations[location_id]["contacts"]))
        assert first_run["report"]["pairs"][pair]["counts"]["contacts"]["created"] == expected


def test_unchanged_run_makes_no_writes(first_run: dict[str, Any], sync_dag: Any, sandbox: SandboxHandle, storage: Path) -> None:
    second = run_dag(sync_dag, sandbox, storage, START + dt.timedelta(hours=1))
    assert second["state"] == "success"
    assert memberstack_writes(second["memberstack"]) == 0
    assert ghl_api_requests(second["ghl"]) <= 2, dict(second["ghl"])


def test_interrupted_run_rerun_repairs(first_run: dict[str, Any], sync_dag: Any, sandbox: SandboxHandle, storage: Path) -> None:
    hook_a = ghl_hook("gohighlevel_demo_a")
    state = sandbox.state()
    location_a = next(loc for loc in state["ghl"]["locations"] if loc["id"] == seedgen.DEMO_LOCATION_A_ID)
    chosen = sorted(valid_contacts(location_a["contacts"]))[:12]
    for contact_id in chosen[:6]:
        hook_a.update_contact(contact_id, lastName="Rerun-Check")
    for contact_id in chosen[6:]:
        hook_a.create_note(contact_id, "Rerun check <i>note</i>")
        hook_a.add_tags(contact_id, ["VIP"])
    for number in range(3):
        hook_a.create_contact(email=f"rerun.{number}@example.org", firstName=f"Rerun{number}", tags=["member"])

    logical_date = START + dt.timedelta(hours=2)
    sandbox.set_config("memberstack", faults={"500": 0.25, "timeout_after": 0.05})
    try:
        interrupted = run_dag(sync_dag, sandbox, storage, logical_date)
    finally:
        sandbox.set_config("memberstack", faults={})
    # Depending on the faults drawn the run fails or pulls through; the rerun must repair either.
    assert interrupted["state"] in ("success", "failed")

    rerun = run_dag(sync_dag, sandbox, storage, logical_date)
    assert rerun["run_id"] == interrupted["run_id"]
    assert rerun["state"] == "success"
    problems = mismatches(sandbox)
    assert problems == [], "\n".join(problems[:30])


def test_backfill_over_past_intervals(first_run: dict[str, Any], sandbox: SandboxHandle, storage: Path) -> None:
    from ghl_memberstack import sync

    before = manifests(storage)
    stats_before = sandbox.stats("memberstack")
    for days_back in (400, 200):
        end = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_back - 200)
        start = end - dt.timedelta(days=200)
        options = sync.RunOptions(
            dag_id=DAG_ID,
            run_id=f"backfill__{start:%Y-%m-%dT%H:%M:%S}",
            run_type="backfill",
            interval_start_ms=int(start.timestamp() * 1000),
            interval_end_ms=int(end.timestamp() * 1000),
        )
        outcome = sync.run_sync(options)
        assert outcome["status"] == "ok"
    after = manifests(storage)
    for pair in PAIRS:
        assert after[pair].watermark_ms == before[pair].watermark_ms
    assert memberstack_writes(route_delta(stats_before, sandbox.stats("memberstack"))) == 0
    problems = mismatches(sandbox)
    assert problems == [], "\n".join(problems[:30])


def test_dry_run_writes_nothing(first_run: dict[str, Any], sync_dag: Any, sandbox: SandboxHandle, storage: Path) -> None:
    ghl_hook("gohighlevel_demo_b").create_contact(email="dry.run@example.org", firstName="Dry")
    before = manifests(storage)
    result = run_dag(sync_dag, sandbox, storage, START + dt.timedelta(hours=3), {"dry_run": True, "full_refresh": True})
    assert result["state"] == "success"
    assert result["report"]["dry_run"] is True
    assert result["report"]["pairs"]["demo_b"]["counts"]["contacts"]["created"] == 1
    assert memberstack_writes(result["memberstack"]) == 0
    assert manifests(storage) == before


def test_unknown_pair_fails_early(first_run: dict[str, Any], sync_dag: Any, sandbox: SandboxHandle, storage: Path) -> None:
    result = run_dag(sync_dag, sandbox, storage, START + dt.timedelta(hours=4), {"sync_pairs": ["no_such_pair"]})
    assert result["state"] == "failed"
    assert sum(result["ghl"].values()) == 0
    assert sum(result["memberstack"].values()) == 0
