"""The parity DAG end to end: ``dag.test()`` against the sandbox over HTTP, one location of 150 contacts.

The tests share one sandbox and one storage folder and run in file order:
1. a sync, then out-of-band changes on both sides, then a parity run with repair;
2. a second parity run, which finds everything in sync;
3. a run without repair after another hand edit, which writes nothing and fails its check;
4. dry runs of both DAGs, which plan the writes and change neither the sandbox nor the snapshot;
5. both HTML reports rendered in headless Chromium, with a screenshot kept under ``artifacts/``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import seedgen
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO_ROOT / "artifacts" / "parity"
PARITY_DAG_ID = "ghl_memberstack_parity"
SYNC_DAG_ID = "ghl_memberstack_sync"
SEED = seedgen.generate_seed(contacts_per_location=(150,), random_seed=11)
START = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
NEW_MEMBER_EMAIL = "walk.in@example.org"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox(seed=SEED, config={"rate_limit_scale": 100}) as handle:
        yield handle


@pytest.fixture(scope="module")
def storage(
    sandbox: SandboxHandle, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("parity-storage")
    connections = {
        "gohighlevel_default": {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
        },
        "memberstack_default": {
            "conn_type": "memberstack",
            "host": sandbox.memberstack_url,
            "password": seedgen.DEMO_MEMBERSTACK_KEY_A,
        },
    }
    values = {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(body) for conn_id, body in connections.items()}
    values.update(
        AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE=str(folder),
        MEMBERSTACK_RATE_LIMIT_PER_S="5000",
        GHL_MEMBERSTACK_RETRY_BASE_DELAY_S="0",
        GHL_MEMBERSTACK_RETRY_MAX_DELAY_S="0",
        GHL_MEMBERSTACK_PAIR_LEASE_POLL_S="0.05",
        # The seed quarantines several percent of its contacts on purpose (missing, invalid and duplicate
        # emails), so the quarantine threshold is raised except where a test checks it.
        GHL_MEMBERSTACK_PARITY_MAX_QUARANTINE_PERCENT="15",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("GHL_MEMBERSTACK_PARITY_REPAIR", raising=False)
        for name, value in values.items():
            patch.setenv(name, value)
        yield folder


@pytest.fixture(scope="module")
def dags(storage: Path) -> dict[str, Any]:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # pragma: no cover - older Airflow
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    for dag in bag.dags.values():
        # A failing task fails the run at once instead of waiting out Airflow's retry delay.
        for task in dag.tasks:
            task.retries = 0
    return bag.dags


@pytest.fixture(scope="module")
def synced(storage: Path, dags: dict[str, Any]) -> dict[str, Any]:
    """Sync the seed once, so Memberstack has a member per valid contact."""
    run = run_dag(dags[SYNC_DAG_ID], storage, START)
    assert run["state"] == "success", run["report"]
    return run


@pytest.fixture(scope="module")
def changes(synced: dict[str, Any], sandbox: SandboxHandle) -> dict[str, Any]:
    """Change both sides out of band and return the ids involved."""
    ms = memberstack_hook()
    ghl = ghl_hook()
    linked = sorted(linked_members(ms).items())
    with_plan = next(cid for cid, member in linked if member.get("planConnections"))
    others = [cid for cid, _ in linked if cid != with_plan]
    members = dict(linked)
    edited, deleted_member, gone, noted = others[0], others[1], others[2], others[3]
    task_record = next(
        record
        for record in ms.query_records("ghl_tasks")
        if record["data"]["ghl_contact_id"] not in (deleted_member, gone)
    )

    ms.update_member(members[edited]["id"], custom_fields={"first-name": "Changed by hand"})
    ms.remove_plan(members[with_plan]["id"], members[with_plan]["planConnections"][0]["planId"])
    ms.delete_member(members[deleted_member]["id"])
    ms.delete_record("ghl_tasks", task_record["id"])
    walk_in = ms.create_member(email=NEW_MEMBER_EMAIL, password="a-long-password-for-the-walk-in-member")
    walk_in = ms.get_member(walk_in["id"])
    ghl.delete_contact(gone)
    note = ghl.create_note(noted, "Asked about <b>yoga</b> classes by phone.")
    return {
        "edited": edited,
        "plan_removed": with_plan,
        "removed_plan": members[with_plan]["planConnections"][0]["planId"],
        "deleted_member": deleted_member,
        "deleted_record_task": task_record["data"]["ghl_task_id"],
        "deleted_record_contact": task_record["data"]["ghl_contact_id"],
        "walk_in": walk_in["id"],
        "walk_in_member": walk_in,
        "gone": gone,
        "gone_member": members[gone]["id"],
        "noted": noted,
        "note": str(note.get("id") or (note.get("note") or {}).get("id")),
    }


@pytest.fixture(scope="module")
def repaired(changes: dict[str, str], storage: Path, dags: dict[str, Any]) -> dict[str, Any]:
    return run_dag(dags[PARITY_DAG_ID], storage, START + dt.timedelta(days=1), {"repair": True})


# --- helpers --------------------------------------------------------------------------------------


def run_dag(dag: Any, storage: Path, logical_date: dt.datetime, conf: dict | None = None) -> dict[str, Any]:
    """Run a DAG once with ``dag.test()`` and return its state, run id, report and report path."""
    dag_run = dag.test(logical_date=logical_date, run_conf=conf or {})
    folder = storage / "reports" / dag.dag_id / dag_run.run_id
    report_path = folder / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else None
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    return {
        "state": str(dag_run.state),
        "run_id": dag_run.run_id,
        "report": report,
        "folder": folder,
        "tasks": states,
    }


def memberstack_hook() -> Any:
    from ghl_memberstack.hooks.memberstack import MemberstackHook

    return MemberstackHook("memberstack_default")


def ghl_hook() -> Any:
    from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

    return GoHighLevelHook("gohighlevel_default")


def linked_members(hook: Any) -> dict[str, dict[str, Any]]:
    """Return the members linked to a GHL contact, by contact id."""
    return {
        member["metaData"]["ghlContactId"]: member
        for member in hook.list_members()
        if (member.get("metaData") or {}).get("ghlContactId")
    }


def example_ids(findings: dict[str, Any], kind: str, entity: str) -> set[str]:
    return {item["ghl_id"] for item in findings["examples"].get(kind, []) if item["entity"] == entity}


def snapshot_fingerprint(storage: Path) -> dict[str, str]:
    """Return a SHA-256 per file of the pair's state folder (manifest and snapshots)."""
    folder = storage / "state" / "default"
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "journal" not in path.parts
    }


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed; `make install` installs Debian's chromium package")
    return path


def render(html: Path, screenshot: Path) -> str:
    """Render a report in headless Chromium, keep a screenshot, and return the dumped DOM."""
    binary = chromium()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        base = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*base, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120, check=False
        )
        shot = subprocess.run(
            [*base, "--window-size=1280,2000", f"--screenshot={screenshot}", html.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert shot.returncode == 0, shot.stderr[-2000:]
    return dom.stdout


# --- 1. repair of out-of-band changes -------------------------------------------------------------


def test_repair_run_succeeds(repaired: dict[str, Any]) -> None:
    assert repaired["state"] == "success", repaired["tasks"]
    report = repaired["report"]
    assert report["kind"] == "parity"
    assert report["check"]["passed"] is True
    assert set(repaired["tasks"]) == {
        "resolve_pairs",
        "parity_pair.observe_pair",
        "parity_pair.reconcile_pair",
        "summarize",
        "check",
    }


def test_report_lists_each_change_under_its_kind(repaired: dict[str, Any], changes: dict[str, str]) -> None:
    before = repaired["report"]["pairs"]["default"]["before"]

    assert changes["edited"] in example_ids(before, "field_mismatch", "contacts")
    edited = next(i for i in before["examples"]["field_mismatch"] if i["ghl_id"] == changes["edited"])
    assert edited["fields"] == ["first-name"]
    assert before["field_mismatches"]["contacts"]["first-name"] == 1
    assert example_ids(before, "plan_mismatch", "contacts") == {changes["plan_removed"]}
    assert example_ids(before, "missing_member", "contacts") == {changes["deleted_member"]}
    assert example_ids(before, "extra_member", "contacts") == {changes["gone"]}
    assert changes["deleted_record_task"] in example_ids(before, "record_missing", "tasks")
    assert example_ids(before, "record_missing", "notes") == {changes["note"]}
    assert before["parity"]["contacts"] < 100.0


def test_added_member_is_listed_as_unmanaged(repaired: dict[str, Any], changes: dict[str, str]) -> None:
    pair = repaired["report"]["pairs"]["default"]
    unmanaged = pair["unmanaged"]

    assert unmanaged["count"] == 1
    assert unmanaged["members"][0]["member_id"] == changes["walk_in"]
    assert unmanaged["members"][0]["email"] == "w***@example.org"
    assert unmanaged["members"][0]["reason"] == "not_linked"
    assert pair["before"]["counts"]["contacts"]["unmanaged"] == 1


def test_repair_fixes_every_change(repaired: dict[str, Any], changes: dict[str, str]) -> None:
    hook = memberstack_hook()
    members = linked_members(hook)
    records = {record["data"]["ghl_task_id"] for record in hook.query_records("ghl_tasks")}
    notes = {record["data"]["ghl_note_id"]: record for record in hook.query_records("ghl_notes")}

    assert members[changes["edited"]]["customFields"]["first-name"] != "Changed by hand"
    held = {c["planId"] for c in members[changes["plan_removed"]]["planConnections"]}
    assert changes["removed_plan"] in held
    assert changes["deleted_member"] in members
    assert changes["deleted_record_task"] in records
    assert changes["note"] in notes
    assert notes[changes["note"]]["data"]["member"] == members[changes["noted"]]["id"]
    gone = members[changes["gone"]]
    assert gone["id"] == changes["gone_member"]
    assert gone["customFields"]["ghl-status"] == "deleted"
    assert not {c["planId"] for c in gone["planConnections"]} & {
        seedgen.PLAN_VIP_FREE,
        seedgen.PLAN_MEMBERS_FREE,
    }
    assert hook.get_member(changes["walk_in"]) == changes["walk_in_member"]


def test_repair_reaches_full_parity(repaired: dict[str, Any]) -> None:
    pair = repaired["report"]["pairs"]["default"]

    assert pair["repair"]["applied"] is True
    assert pair["repair"]["failed"] == 0
    assert pair["after"]["parity"] == {
        entity: 100.0 for entity in ("contacts", "tasks", "notes", "appointments")
    }
    assert pair["snapshot"]


def test_repair_result_is_the_snapshot(
    repaired: dict[str, Any], changes: dict[str, str], storage: Path
) -> None:
    from ghl_memberstack.snapshot import SnapshotStore
    from ghl_memberstack.storage import as_storage_path

    store = SnapshotStore(as_storage_path(storage), "default")
    manifest = store.manifest()
    applied = store.applied(manifest)
    members = applied.members

    assert manifest.snapshot_id == repaired["report"]["pairs"]["default"]["snapshot"]
    assert manifest.run_id == repaired["run_id"]
    assert members.at[changes["gone"], "status"] == "deleted"
    assert (
        members.at[changes["deleted_member"], "member_id"]
        == linked_members(memberstack_hook())[changes["deleted_member"]]["id"]
    )
    assert changes["note"] in applied.records["ghl_notes"].index
    assert changes["noted"] in manifest.parity_checked


# --- 2. a second run ------------------------------------------------------------------------------


def test_second_run_reports_full_parity(
    repaired: dict[str, Any], storage: Path, sandbox: SandboxHandle
) -> None:
    from ghl_memberstack import parity

    before = sandbox.stats("memberstack")
    outcome = parity.run_parity(
        parity.ParityOptions(dag_id=PARITY_DAG_ID, run_id="manual__second_parity_run")
    )
    after = sandbox.stats("memberstack")
    report = json.loads(Path(outcome["report_json"].removeprefix("file://")).read_text(encoding="utf-8"))
    pair = report["pairs"]["default"]

    assert outcome["passed"] is True
    assert pair["before"]["parity"] == {
        entity: 100.0 for entity in ("contacts", "tasks", "notes", "appointments")
    }
    assert pair["repair"]["planned_operations"] == 0
    assert memberstack_writes(before, after) == 0
    assert [run["run_id"] for run in report["trend"]][-2:] == [
        repaired["run_id"],
        "manual__second_parity_run",
    ]


def memberstack_writes(before: dict[str, Any], after: dict[str, Any]) -> int:
    reads = ("GET ", "POST /v2/data-tables/{table}/records/query")
    total = 0
    for route, statuses in after["by_route"].items():
        if not route.startswith(reads):
            total += sum(statuses.values()) - sum(before["by_route"].get(route, {}).values())
    return total


# --- 3. no repair ---------------------------------------------------------------------------------


def test_run_without_repair_writes_nothing_and_fails(
    repaired: dict[str, Any], storage: Path, dags: dict[str, Any], sandbox: SandboxHandle
) -> None:
    hook = memberstack_hook()
    contact_id, member = sorted(linked_members(hook).items())[5]
    hook.update_member(member["id"], custom_fields={"last-name": "Edited again"})
    state_before = sandbox.state()
    snapshot_before = snapshot_fingerprint(storage)

    run = run_dag(dags[PARITY_DAG_ID], storage, START + dt.timedelta(days=2), {"repair": False})
    pair = run["report"]["pairs"]["default"]

    assert run["state"] == "failed"
    assert run["tasks"]["check"] == "failed"
    assert run["tasks"]["summarize"] == "success"
    assert pair["after"] is None
    assert contact_id in example_ids(pair["before"], "field_mismatch", "contacts")
    assert any("without repair" in reason for reason in run["report"]["check"]["reasons"])
    assert sandbox.state() == state_before
    snapshot_after = snapshot_fingerprint(storage)
    # Only the check times in the manifest move; the snapshot files stay as they are.
    assert {k: v for k, v in snapshot_after.items() if k != "manifest.json"} == {
        k: v for k, v in snapshot_before.items() if k != "manifest.json"
    }


def test_quarantine_share_above_threshold_fails_check(
    repaired: dict[str, Any], storage: Path, dags: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GHL_MEMBERSTACK_PARITY_MAX_QUARANTINE_PERCENT", "2")
    run = run_dag(dags[PARITY_DAG_ID], storage, START + dt.timedelta(days=3), {"dry_run": True})

    assert run["state"] == "failed"
    assert run["tasks"]["check"] == "failed"
    assert run["report"]["pairs"]["default"]["quarantine"]["share_percent"] > 2
    assert any("quarantined" in reason for reason in run["report"]["check"]["reasons"])


# --- 4. dry runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_runs(
    repaired: dict[str, Any], storage: Path, dags: dict[str, Any], sandbox: SandboxHandle
) -> dict[str, Any]:
    """Change GHL (a new contact, a renamed one), then dry-run both DAGs and record what changed."""
    ghl = ghl_hook()
    created = ghl.create_contact(
        email="Zoe.Dry@Example.org", firstName="Zoe", lastName="Dryrun", tags=["vip"]
    )
    renamed = sorted(linked_members(memberstack_hook()))[7]
    ghl.update_contact(renamed, firstName="Renamed in GHL")
    state_before = sandbox.state()
    snapshot_before = snapshot_fingerprint(storage)

    sync_run = run_dag(
        dags[SYNC_DAG_ID], storage, START + dt.timedelta(days=4), {"dry_run": True, "full_refresh": True}
    )
    parity_run = run_dag(dags[PARITY_DAG_ID], storage, START + dt.timedelta(days=5), {"dry_run": True})
    return {
        "sync": sync_run,
        "parity": parity_run,
        "created": str(created.get("id") or (created.get("contact") or {}).get("id")),
        "renamed": renamed,
        "state_before": state_before,
        "state_after": sandbox.state(),
        "snapshot_before": snapshot_before,
        "snapshot_after": snapshot_fingerprint(storage),
    }


def test_dry_runs_change_neither_sandbox_nor_snapshot(dry_runs: dict[str, Any]) -> None:
    assert dry_runs["sync"]["state"] == "success", dry_runs["sync"]["tasks"]
    assert dry_runs["parity"]["tasks"]["parity_pair.reconcile_pair"] == "success"
    assert dry_runs["state_after"] == dry_runs["state_before"]
    assert dry_runs["snapshot_after"] == dry_runs["snapshot_before"]


@pytest.mark.parametrize("which", ["sync", "parity"])
def test_dry_run_report_lists_masked_plan(dry_runs: dict[str, Any], which: str) -> None:
    report = dry_runs[which]["report"]
    plan = report["pairs"]["default"]["plan"]
    items = {item["key"]: item for item in plan["items"]}
    create = next(
        item
        for item in items.values()
        if item["kind"] == "member_create" and item["contact_id"] == dry_runs["created"]
    )
    rename = next(
        item
        for item in items.values()
        if item["kind"] == "member_update" and item["contact_id"] == dry_runs["renamed"]
    )

    assert report["dry_run"] is True
    assert plan["operations"] == len(plan["items"])
    assert create["values"]["email"] == "z***@example.org"
    assert create["values"]["cf:first-name"] == "Z***"
    assert "cf:first-name" in rename["fields"]
    assert rename["values"]["cf:first-name"] == "R***"
    assert rename["member_id"].startswith("mem_")
    assert "Renamed in GHL" not in json.dumps(report)
    assert "zoe.dry@example.org" not in json.dumps(report)


@pytest.mark.parametrize("which", ["sync", "parity"])
def test_dry_run_plan_file_holds_full_values(dry_runs: dict[str, Any], which: str) -> None:
    plan = dry_runs[which]["report"]["pairs"]["default"]["plan"]
    body = json.loads(Path(plan["file"].removeprefix("file://")).read_text(encoding="utf-8"))
    create = next(
        op
        for op in body["operations"]
        if op["kind"] == "member_create" and op["contact_id"] == dry_runs["created"]
    )

    assert len(body["operations"]) == plan["operations"]
    assert create["fields"]["email"] == "zoe.dry@example.org"
    assert create["fields"]["cf:first-name"] == "Zoe"
    assert not Path(plan["file"].removeprefix("file://")).is_relative_to(dry_runs[which]["folder"])


# --- 5. reports in a browser ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["sync", "parity"])
def test_data_docs_linked_from_report(dry_runs: dict[str, Any], which: str) -> None:
    run = dry_runs[which]
    index = run["folder"] / "data_docs" / "index.html"

    assert run["report"]["data_docs"] == "data_docs/index.html"
    assert index.is_file()
    assert (run["folder"] / "data_docs" / "default" / "index.html").is_file()
    assert 'href="data_docs/index.html"' in (run["folder"] / "report.html").read_text(encoding="utf-8")


def test_sync_report_renders_in_chromium(synced: dict[str, Any]) -> None:
    dom = render(synced["folder"] / "report.html", ARTIFACTS / "sync-report.png")
    contacts = synced["report"]["pairs"]["default"]["counts"]["contacts"]

    assert "Sync report" in dom
    assert f'<td class="num">{contacts["extracted"]}</td>' in dom
    assert f'<td class="num">{contacts["created"]}</td>' in dom
    assert (ARTIFACTS / "sync-report.png").stat().st_size > 10_000


def test_parity_report_renders_in_chromium(repaired: dict[str, Any]) -> None:
    dom = render(repaired["folder"] / "report.html", ARTIFACTS / "parity-report.png")
    pair = repaired["report"]["pairs"]["default"]
    contacts_before = pair["before"]["parity"]["contacts"]

    assert "Parity report" in dom
    assert f'data-figure="parity-before-default-contacts">{contacts_before:.2f} %' in dom
    assert 'data-figure="parity-after-default-contacts">100.00 %' in dom
    assert f'data-figure="unmanaged-default">{pair["unmanaged"]["count"]}' in dom
    assert f'data-figure="ghl-requests-default">{pair["requests"]["ghl"]}' in dom
    assert "check passed" in dom
    assert (ARTIFACTS / "parity-report.png").stat().st_size > 10_000
