"""The bad-input corpus: every case in ``tests/cases/`` and its expected outcome.

Record cases (``"kind": "records"``) hold raw GHL records. Each runs with the control contacts of
``_control.json`` through the real steps: ``models.parse_page``, ``mapping.build_desired``, the
Great Expectations batch checks, ``diff.plan_operations`` and the ``Loader`` into the Memberstack
sandbox. The test then reads Memberstack back and asserts the case's members, quarantine entries
and records, and that the control contacts came out exactly as they do on their own.

Scenario cases (``"kind": "scenario"``) need HTTP behaviour: tokens, locations, budgets, cursors,
errors of Memberstack. Each names a function below that runs the sync steps against both sandbox
servers, as the DAG's tasks would, and asserts the expected outcome from the case file.

``README.md`` in this folder lists every case with its outcome; a test keeps it complete.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import reliability
from sandbox import seedgen
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = [pytest.mark.integration]

CASES_DIR = Path(__file__).resolve().parent
REPO_ROOT = CASES_DIR.parents[1]
DEFAULT_MAPPING = REPO_ROOT / "include" / "mapping.yaml"
LOCATION_A = seedgen.DEMO_LOCATION_A_ID
LOCATION_B = seedgen.DEMO_LOCATION_B_ID
KEY_A = seedgen.DEMO_MEMBERSTACK_KEY_A
KEY_B = seedgen.DEMO_MEMBERSTACK_KEY_B
DAG_ID = "ghl_memberstack_sync"
CONN = {
    "a": ("gohighlevel_corpus_a", "memberstack_corpus_a"),
    "b": ("gohighlevel_corpus_b", "memberstack_corpus_b"),
}
TARGETS = {"a": (LOCATION_A, KEY_A), "b": (LOCATION_B, KEY_B)}


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


CONTROL = _read(CASES_DIR / "_control.json")
ALL_CASES = [_read(path) for path in sorted(CASES_DIR.glob("*.json")) if not path.name.startswith("_")]
RECORD_CASES = [case for case in ALL_CASES if case["kind"] == "records"]
SCENARIO_CASES = [case for case in ALL_CASES if case["kind"] == "scenario"]


def expand(value: Any) -> Any:
    """Expand ``{"$repeat": text, "length": n}`` into ``text`` repeated and cut to ``n`` characters."""
    if isinstance(value, dict) and "$repeat" in value:
        text = value["$repeat"]
        return (text * (value["length"] // len(text) + 1))[: value["length"]]
    if isinstance(value, dict):
        return {key: expand(item) for key, item in value.items()}
    if isinstance(value, list):
        return [expand(item) for item in value]
    return value


def load_mapping(overrides: dict[str, Any] | None = None, folder: Path | None = None) -> Any:
    """Load the default mapping, or write it with top-level ``overrides`` to a file and load that."""
    from ghl_memberstack.mapping import load_mapping as load

    if not overrides:
        return load(DEFAULT_MAPPING)
    assert folder is not None
    return load(write_mapping(overrides, folder))


def write_mapping(overrides: dict[str, Any], folder: Path) -> Path:
    content = yaml.safe_load(DEFAULT_MAPPING.read_text(encoding="utf-8"))
    content.update(overrides)
    path = folder / "mapping.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return path


# --- sandbox and hooks --------------------------------------------------------------------------


def base_seed() -> dict[str, Any]:
    """Both demo locations and apps, without contacts, with the corpus's custom field definitions."""
    seed = seedgen.generate_seed(contacts_per_location=(0, 0), random_seed=3)
    for location in seed["ghl"]["locations"]:
        location["custom_fields"] = copy.deepcopy(CONTROL["input"]["custom_fields"])
        location["allow_duplicate_contacts"] = True
    return seed


BASE_SEED = base_seed()


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with running_sandbox(seed=BASE_SEED, config={"rate_limits": False, "rate_limit_scale": 100}) as handle:
        yield handle


@pytest.fixture
def environment(sandbox: SandboxHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point both pairs' connections at the sandbox and set fast settings; return the storage folder."""
    from ghl_memberstack.limits import reset_limiters

    storage = tmp_path / "storage"
    values = {
        f"AIRFLOW_CONN_{CONN['a'][0].upper()}": {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": LOCATION_A},
        },
        f"AIRFLOW_CONN_{CONN['b'][0].upper()}": {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "extra": {
                "location_id": LOCATION_B,
                "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
                "client_secret": seedgen.DEMO_OAUTH_CLIENT_SECRET,
                "refresh_token": seedgen.DEMO_REFRESH_TOKEN_B,
            },
        },
        f"AIRFLOW_CONN_{CONN['a'][1].upper()}": {
            "conn_type": "memberstack",
            "host": sandbox.memberstack_url,
            "password": KEY_A,
        },
        f"AIRFLOW_CONN_{CONN['b'][1].upper()}": {
            "conn_type": "memberstack",
            "host": sandbox.memberstack_url,
            "password": KEY_B,
        },
    }
    for name, body in values.items():
        monkeypatch.setenv(name, json.dumps(body))
    for name, value in reliability.sync_environment(storage).items():
        monkeypatch.setenv(name, value)
    for which in ("ghl", "memberstack"):
        sandbox.set_config(
            which, faults={}, error_after_processing={}, search_repeat_cursor=0, rate_limit_scale=100
        )
    reset_limiters()
    return storage


def app_state(sandbox: SandboxHandle, key: str = KEY_A) -> dict[str, Any]:
    return next(app for app in sandbox.state()["memberstack"]["apps"] if app["secret_key"] == key)


def location_state(sandbox: SandboxHandle, location_id: str = LOCATION_A) -> dict[str, Any]:
    return next(loc for loc in sandbox.state()["ghl"]["locations"] if loc["id"] == location_id)


def linked_members(app: dict[str, Any], contact_id: str) -> list[dict[str, Any]]:
    return [m for m in app["members"] if (m.get("metaData") or {}).get("ghlContactId") == contact_id]


def records_by_ghl_id(app: dict[str, Any], table: str) -> dict[str, list[dict[str, Any]]]:
    from ghl_memberstack.mapping import TABLE_ID_FIELDS

    found: dict[str, list[dict[str, Any]]] = {}
    stored = next(t for t in app["data_tables"] if t["key"] == table)
    for record in stored["records"]:
        found.setdefault(str(record["data"].get(TABLE_ID_FIELDS[table])), []).append(record)
    return found


def memberstack_writes(sandbox: SandboxHandle) -> int:
    return reliability.memberstack_writes(sandbox.stats("memberstack"))


# --- record cases ---------------------------------------------------------------------------------


@dataclasses.dataclass
class RecordRun:
    """What one record case produced: the desired state, every quarantine entry and the app."""

    desired: Any
    quarantine: set[tuple[str, str, str]]
    app: dict[str, Any]
    quality_success: bool


def merged_input(case_input: dict[str, Any]) -> dict[str, Any]:
    """Return the case's records followed by the control records."""
    merged: dict[str, Any] = {}
    control = CONTROL["input"]
    for entity in ("contacts", "tasks", "notes", "appointments"):
        merged[entity] = expand(case_input.get(entity, [])) + copy.deepcopy(control.get(entity, []))
    merged["custom_fields"] = case_input.get("custom_fields", control["custom_fields"])
    return merged


def run_record_steps(raw: dict[str, Any], mapping: Any, sandbox: SandboxHandle) -> RecordRun:
    """Run raw records through parse, desired state, batch checks, plan and load."""
    from ghl_memberstack import diff, load, models, quality, snapshot
    from ghl_memberstack import mapping as mapping_module
    from ghl_memberstack.hooks.memberstack import MemberstackHook

    frames = {}
    parse_quarantine = []
    for entity in ("contacts", "tasks", "notes", "appointments"):
        rows, quarantined = models.parse_page(entity, raw[entity])
        parse_quarantine += quarantined
        frames[entity] = models.frame(entity, rows)
    definitions, _ = models.parse_page("custom_fields", raw["custom_fields"])
    desired = mapping_module.build_desired(
        frames["contacts"],
        frames["tasks"],
        frames["notes"],
        frames["appointments"],
        definitions,
        mapping,
        location_id=LOCATION_A,
        complete=True,
    )
    desired.quarantine = [*parse_quarantine, *desired.quarantine]
    checked = quality.validate_batch(frames["contacts"], desired, complete=True, snapshot_size=0)
    observed = frames["contacts"]["id"].astype(str).tolist()
    operations = diff.plan_operations(
        desired, snapshot.empty_applied(), mapping, observed_contact_ids=observed
    )
    with MemberstackHook(CONN["a"][1]) as hook:
        loader = load.Loader(hook, snapshot.Journal(None, "corpus"), location_id=LOCATION_A, concurrency=2)
        loader.preflight(mapping)
        result = loader.run(operations, desired=desired, observed_contact_ids=observed)
    entries = {(e.entity, e.ghl_id, e.reason) for e in [*desired.quarantine, *result.quarantine]}
    assert result.failed == [], result.failed
    return RecordRun(
        desired=desired, quarantine=entries, app=app_state(sandbox), quality_success=checked.success
    )


def check_members(expected: dict[str, Any], app: dict[str, Any], managed: set[str]) -> None:
    for contact_id, want in expected.items():
        members = linked_members(app, contact_id)
        assert len(members) == 1, f"contact {contact_id} has {len(members)} members"
        member = members[0]
        assert member["auth"]["email"] == want["email"], contact_id
        for key, value in want.get("fields", {}).items():
            assert (member.get("customFields") or {}).get(key, "") == value, f"{contact_id}: {key}"
        held = {c["planId"] for c in member.get("planConnections") or []} & managed
        assert held == set(want.get("plans", [])), f"{contact_id}: plans"
        assert member["metaData"].get("ghlLocationId") == LOCATION_A


def check_records(expected: dict[str, dict[str, Any]], app: dict[str, Any]) -> None:
    for table, records in expected.items():
        stored = records_by_ghl_id(app, table)
        for ghl_id, fields in records.items():
            found = stored.get(ghl_id, [])
            assert len(found) == 1, f"{table} {ghl_id} has {len(found)} records"
            data = found[0]["data"]
            for key, value in expand(fields).items():
                if value is None:
                    assert data.get(key) in (None, ""), f"{table} {ghl_id}: {key}"
                else:
                    assert data.get(key) == value, f"{table} {ghl_id}: {key}"
            contact_members = linked_members(app, data["ghl_contact_id"])
            assert data.get("member") == contact_members[0]["id"], f"{table} {ghl_id}: member link"


def check_record_case(expect: dict[str, Any], run: RecordRun, managed: set[str]) -> None:
    check_members(expect.get("members", {}), run.app, managed)
    for contact_id in expect.get("no_member", []):
        assert linked_members(run.app, contact_id) == [], contact_id
    check_records(expect.get("records", {}), run.app)
    for table, ghl_ids in expect.get("no_record", {}).items():
        stored = records_by_ghl_id(run.app, table)
        for ghl_id in ghl_ids:
            assert ghl_id not in stored, f"{table} {ghl_id}"
    for contact_id, value in expect.get("date_updated_ms", {}).items():
        assert int(run.desired.members.loc[contact_id, "date_updated"]) == value


@pytest.mark.parametrize("case", RECORD_CASES, ids=lambda case: case["id"])
def test_record_case(case: dict[str, Any], sandbox: SandboxHandle, environment: Path) -> None:
    sandbox.reset(BASE_SEED)
    mapping = load_mapping()
    run = run_record_steps(merged_input(case["input"]), mapping, sandbox)
    managed = set(mapping.managed_plans)
    expect = case["expect"]

    check_record_case(expect, run, managed)
    assert run.quarantine == {(q["entity"], q["ghl_id"], q["reason"]) for q in expect.get("quarantine", [])}
    assert run.quality_success
    # The rest of the run: the control contacts come out as they do on their own.
    check_record_case(CONTROL["expect"], run, managed)
    expected_members = len(expect.get("members", {})) + len(CONTROL["expect"]["members"])
    assert len(run.app["members"]) == expected_members
    for table, control_records in CONTROL["expect"]["records"].items():
        case_records = expect.get("records", {}).get(table, {})
        assert len(records_by_ghl_id(run.app, table)) == len(case_records) + len(control_records), table


def test_control_alone(sandbox: SandboxHandle, environment: Path) -> None:
    sandbox.reset(BASE_SEED)
    mapping = load_mapping()
    run = run_record_steps(merged_input({}), mapping, sandbox)

    check_record_case(CONTROL["expect"], run, set(mapping.managed_plans))
    assert run.quarantine == set()
    assert len(run.app["members"]) == len(CONTROL["expect"]["members"])


# --- scenario cases -------------------------------------------------------------------------------


def scenario_seed(
    case: dict[str, Any], edit: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Seed both locations with the control records plus the case's own records.

    Location B gets the control records under ids and emails of its own, since contact ids are
    unique across locations.
    """
    seed = copy.deepcopy(BASE_SEED)
    locations = {location["id"]: location for location in seed["ghl"]["locations"]}
    control = CONTROL["input"]
    for which, location_id in (("a", LOCATION_A), ("b", LOCATION_B)):
        location = locations[location_id]
        prefix = "" if which == "a" else "b-"
        for entity in ("contacts", "tasks", "notes", "appointments"):
            items = copy.deepcopy(control.get(entity, [])) + copy.deepcopy(
                case.get("ghl", {}).get(which, {}).get(entity, [])
            )
            for item in items:
                item["id"] = prefix + item["id"]
                if entity == "contacts":
                    item["locationId"] = location_id
                    if prefix and item.get("email"):
                        item["email"] = "b." + item["email"]
                else:
                    item["contactId"] = prefix + item["contactId"]
            location[entity] = items
    if edit is not None:
        edit(seed)
    return seed


@dataclasses.dataclass
class DagRun:
    """One emulated DAG run: each pair's error (if any), status file and the run report."""

    run_id: str
    errors: dict[str, BaseException]
    statuses: dict[str, dict[str, Any]]
    prepared: dict[str, dict[str, Any]]
    report: dict[str, Any]
    report_html: str


class World:
    """The sync pairs of one scenario: the pairs file, the mapping and the runs made so far."""

    def __init__(
        self, sandbox: SandboxHandle, storage: Path, folder: Path, mapping: dict[str, Any] | None = None
    ) -> None:
        self.sandbox = sandbox
        self.storage = storage
        self.folder = folder
        self.runs = 0
        self.set_mapping(mapping)

    def set_mapping(self, overrides: dict[str, Any] | None) -> None:
        mapping_path = write_mapping(overrides, self.folder) if overrides else DEFAULT_MAPPING
        pairs = [
            {
                "name": name,
                "gohighlevel_conn_id": ghl,
                "memberstack_conn_id": ms,
                "mapping": str(mapping_path),
            }
            for name, (ghl, ms) in CONN.items()
        ]
        self.pairs_file = self.folder / "sync_pairs.yaml"
        self.pairs_file.write_text(yaml.safe_dump({"pairs": pairs}), encoding="utf-8")

    def pairs(self, names: list[str]) -> list[Any]:
        from ghl_memberstack import sync

        return sync.resolve_pairs(names, pairs_file=str(self.pairs_file))

    def run(
        self, names: list[str], *, full_refresh: bool = False, ghl_hooks: dict[str, Any] | None = None
    ) -> DagRun:
        """Run the pairs' prepare and load steps, then the report, as one DAG run without retries."""
        from ghl_memberstack import sync
        from ghl_memberstack.storage import as_storage_path

        self.runs += 1
        options = sync.RunOptions(
            dag_id=DAG_ID, run_id=f"corpus__{self.runs}", run_type="scheduled", full_refresh=full_refresh
        )
        root = as_storage_path(self.storage)
        errors: dict[str, BaseException] = {}
        statuses: dict[str, dict[str, Any]] = {}
        prepared_all: dict[str, dict[str, Any]] = {}
        for pair in self.pairs(names):
            try:
                prepared = sync.prepare_pair(pair, options, gohighlevel_hook=(ghl_hooks or {}).get(pair.name))
                prepared_all[pair.name] = prepared
                sync.load_pair(prepared, options)
            except Exception as error:  # noqa: BLE001 - each scenario asserts on the error it expects
                errors[pair.name] = error
            statuses[pair.name] = sync.read_status(sync.work_dir(root, options, pair.name)) or {}
        summary = sync.summarize(names, options)
        report_dir = self.storage / "reports" / DAG_ID / options.run_id
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
        html = (report_dir / "report.html").read_text(encoding="utf-8")
        assert summary["status"] == report["status"]
        return DagRun(options.run_id, errors, statuses, prepared_all, report, html)

    def parity(self, which: str = "a", *, deletions_seen: bool = False, mapping: Any = None) -> Any:
        location_id, key = TARGETS[which]
        return reliability.check_parity(
            location_state(self.sandbox, location_id),
            app_state(self.sandbox, key),
            mapping,
            deletions_seen=deletions_seen,
        )

    def ghl_hook(self, which: str = "a") -> Any:
        from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

        return GoHighLevelHook(gohighlevel_conn_id=CONN[which][0])

    def memberstack_hook(self, which: str = "a") -> Any:
        from ghl_memberstack.hooks.memberstack import MemberstackHook

        return MemberstackHook(CONN[which][1])


def assert_error(error: BaseException | None, expect: dict[str, Any]) -> None:
    assert error is not None, f"expected {expect['error_type']}, but the pair did not fail"
    assert type(error).__name__ == expect["error_type"], f"{type(error).__name__}: {error}"
    for text in expect.get("message_contains", []):
        assert text in str(error), f"{text!r} not in: {error}"


def assert_parity(parity: Any) -> None:
    assert parity.ok, json.dumps(parity.summary(), indent=1)


def quarantine_of(run: DagRun, pair: str) -> set[tuple[str, str, str]]:
    return {(q["entity"], q["ghl_id"], q["reason"]) for q in run.report["pairs"][pair]["quarantine"]}


# Each scenario function takes the case, the sandbox, the storage folder and a scratch folder.


def email_taken_after_change(
    case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path
) -> None:
    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder)
    first = world.run(["a"])
    assert first.errors == {}
    params = case["params"]
    before = linked_members(app_state(sandbox), params["contact"])[0]
    with world.ghl_hook() as hook:
        hook.update_contact(params["contact"], email=params["new_email"])
    writes = memberstack_writes(sandbox)

    second = world.run(["a"])

    assert second.errors == {}
    expected = {(q["entity"], q["ghl_id"], q["reason"]) for q in case["expect"]["quarantine"]}
    assert expected <= quarantine_of(second, "a")
    assert memberstack_writes(sandbox) == writes
    app = app_state(sandbox)
    for contact_id, email in case["expect"]["member_emails"].items():
        assert [m["auth"]["email"] for m in linked_members(app, contact_id)] == [email]
    assert linked_members(app, params["contact"])[0] == before
    assert_parity(world.parity())


def email_taken_shared_app(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    other = case["expect"]["member"]

    def add_foreign_member(seed: dict[str, Any]) -> None:
        app = next(app for app in seed["memberstack"]["apps"] if app["secret_key"] == KEY_A)
        app["members"].append(
            {
                "id": "mem_otherlocation000000000001",
                "auth": {"email": other["email"]},
                "metaData": {"ghlContactId": other["ghlContactId"], "ghlLocationId": other["ghlLocationId"]},
                "customFields": {"first-name": "Other"},
            }
        )

    sandbox.reset(scenario_seed(case, add_foreign_member))
    world = World(sandbox, storage, folder)
    before = next(m for m in app_state(sandbox)["members"] if m["auth"]["email"] == other["email"])

    run = world.run(["a"])

    assert run.errors == {}
    expected = {(q["entity"], q["ghl_id"], q["reason"]) for q in case["expect"]["quarantine"]}
    assert expected <= quarantine_of(run, "a")
    app = app_state(sandbox)
    after = next(m for m in app["members"] if m["auth"]["email"] == other["email"])
    assert after == before
    assert linked_members(app, "sc-shared") == []
    for contact_id in CONTROL["expect"]["members"]:
        assert len(linked_members(app, contact_id)) == 1


def member_adopted(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    params = case["params"]

    def add_unlinked_member(seed: dict[str, Any]) -> None:
        app = next(app for app in seed["memberstack"]["apps"] if app["secret_key"] == KEY_A)
        app["members"].append(
            {
                "id": "mem_signedupbyhand000000000001",
                "auth": {"email": params["email"]},
                "planConnections": [{"planId": plan} for plan in params["held"]],
            }
        )

    sandbox.reset(scenario_seed(case, add_unlinked_member))
    world = World(sandbox, storage, folder)

    run = world.run(["a"])

    assert run.errors == {}
    members = [m for m in app_state(sandbox)["members"] if m["auth"]["email"] == params["email"]]
    assert [m["id"] for m in members] == ["mem_signedupbyhand000000000001"]
    assert members[0]["metaData"]["ghlContactId"] == case["expect"]["linked_to"]
    assert sorted(c["planId"] for c in members[0]["planConnections"]) == case["expect"]["plans"]
    assert_parity(world.parity())


def deleted_recreated(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    params = case["params"]
    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder)
    assert world.run(["a"]).errors == {}
    old_member = linked_members(app_state(sandbox), params["old"])[0]
    with world.ghl_hook() as hook:
        hook.delete_contact(params["old"])
        new_contact = hook.create_contact(
            email=params["email"], firstName=params["new_first_name"], tags=params["new_tags"]
        )
    new_id = new_contact["id"]

    if params["mode"] == "incremental_then_full":
        assert world.run(["a"]).errors == {}
    final = world.run(["a"], full_refresh=True)

    assert final.errors == {}
    app = app_state(sandbox)
    holders = [m for m in app["members"] if m["auth"]["email"] == params["email"]]
    assert len(holders) == 1
    member = holders[0]
    assert member["id"] == old_member["id"]
    assert member["metaData"]["ghlContactId"] == new_id
    for key, value in case["expect"]["fields"].items():
        assert member["customFields"].get(key) == value, key
    managed = set(load_mapping().managed_plans)
    assert {c["planId"] for c in member["planConnections"]} & managed == set(case["expect"]["plans"])
    assert_parity(world.parity(deletions_seen=True))
    # A further complete run leaves the relinked member as it is.
    writes = memberstack_writes(sandbox)
    assert world.run(["a"], full_refresh=True).errors == {}
    assert memberstack_writes(sandbox) == writes


def location_returns_none(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    from ghl_memberstack import mapping as mapping_module
    from ghl_memberstack import models
    from ghl_memberstack.snapshot import Manifest, SnapshotStore
    from ghl_memberstack.state import AppliedState
    from ghl_memberstack.storage import as_storage_path

    def empty_location(seed: dict[str, Any]) -> None:
        for location in seed["ghl"]["locations"]:
            if location["id"] == LOCATION_A:
                for entity in ("contacts", "tasks", "notes", "appointments"):
                    location[entity] = []

    sandbox.reset(scenario_seed(case, empty_location))
    count = case["params"]["snapshot_members"]
    contacts = [
        {"id": f"gone{n:06d}", "email": f"gone.{n}@example.org", "dateUpdated": "2024-01-01T00:00:00.000Z"}
        for n in range(count)
    ]
    rows, _ = models.parse_page("contacts", contacts)
    desired = mapping_module.build_desired(
        models.frame("contacts", rows),
        None,
        None,
        None,
        [],
        load_mapping(),
        location_id=LOCATION_A,
        complete=True,
    )
    members = desired.members.copy()
    members["member_id"] = [f"mem_gone{n:020d}" for n in range(count)]
    members["member_id"] = members["member_id"].astype("string")
    store = SnapshotStore(as_storage_path(storage), "a")
    store.commit(
        AppliedState(members=members, records={}), Manifest(watermark_ms=1704067200000, run_id="earlier")
    )
    manifest_path = storage / "state" / "a" / "manifest.json"
    before = manifest_path.read_bytes()
    world = World(sandbox, storage, folder)

    full = world.run(["a"], full_refresh=True)

    assert_error(full.errors.get("a"), case["expect"])
    assert sandbox.stats("memberstack")["total"] == case["expect"]["memberstack_requests"]
    assert manifest_path.read_bytes() == before
    assert full.report["pairs"]["a"]["status"] == "failed"

    incremental = world.run(["a"])

    assert incremental.errors == {}
    assert incremental.prepared["a"]["operations"] == 0
    assert sandbox.stats("memberstack")["total"] == 0
    assert len(store.applied().members) == count


def token_rejected_mid_run(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook

    jump_after = case["params"]["jump_after_calls"]

    class ClockJumpHook(GoHighLevelHook):
        """Moves the GHL sandbox clock two days on, past every access token's expiry, mid-extract."""

        calls = 0

        def get_contact_notes(self, contact_id: str) -> list[dict[str, Any]]:
            ClockJumpHook.calls += 1
            if ClockJumpHook.calls == jump_after:
                sandbox.advance_clock(2 * 86_400)
            return super().get_contact_notes(contact_id)

    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder)

    run = world.run(["b"], ghl_hooks={"b": ClockJumpHook(gohighlevel_conn_id=CONN["b"][0])})

    assert run.errors == {}
    assert ClockJumpHook.calls >= jump_after
    stats = sandbox.stats("ghl")
    assert stats["refresh"]["granted"] == case["expect"]["refreshes_granted"]
    assert stats["by_status"].get("401", 0) >= case["expect"]["min_401"]
    assert_parity(world.parity("b"))


def refresh_token_revoked(
    case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"AIRFLOW_CONN_{CONN['b'][0].upper()}"
    connection = json.loads(os.environ[name])
    connection["extra"]["refresh_token"] = "sandbox-revoked-refresh-token-0001"
    monkeypatch.setenv(name, json.dumps(connection))
    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder)

    run = world.run(["a", "b"])

    assert_error(run.errors.get("b"), case["expect"])
    assert "a" not in run.errors
    assert sandbox.stats("ghl")["refresh"]["rejected"] == case["expect"]["refreshes_rejected"]
    assert run.report["pairs"]["b"]["status"] == "failed"
    assert run.report["pairs"]["a"]["status"] == case["expect"]["other_pair"]
    assert app_state(sandbox, KEY_B)["members"] == []
    assert_parity(world.parity("a"))


def location_inactive(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    def suspend(seed: dict[str, Any]) -> None:
        next(loc for loc in seed["ghl"]["locations"] if loc["id"] == LOCATION_B)["active"] = False

    sandbox.reset(scenario_seed(case, suspend))
    world = World(sandbox, storage, folder)

    run = world.run(["a", "b"])

    assert run.errors == {}
    assert run.report["status"] == case["expect"]["run_status"]
    assert run.report["pairs"]["b"]["status"] == case["expect"]["pair_status"]
    assert run.report["pairs"]["a"]["status"] == case["expect"]["other_pair"]
    assert "is not active" in (run.statuses["b"].get("error") or "")
    assert app_state(sandbox, KEY_B)["members"] == []
    assert_parity(world.parity("a"))


def budget_exhausted(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    from ghl_memberstack.limits import reset_limiters

    params = case["params"]
    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder)
    assert world.run(["a"]).errors == {}
    deleted = params["deleted"]
    member_before = linked_members(app_state(sandbox), deleted)[0]
    with world.ghl_hook() as hook:
        hook.delete_contact(deleted)
        hook.update_contact("ctl-0001", lastName="Budget")
    # Requests so far all count in the location's daily window; allow only a few more.
    used = sandbox.stats("ghl")["total"]
    daily_limit = -(-(used + params["allowed_requests"]) * 10 // 8)
    sandbox.set_config("ghl", rate_limit_scale=1, ghl_burst_limit=100_000, ghl_daily_limit=daily_limit)
    reset_limiters()

    partial = world.run(["a"], full_refresh=True)

    assert partial.errors == {}
    assert partial.statuses["a"]["partial_reason"] == case["expect"]["partial_reason"]
    assert partial.statuses["a"]["complete"] is False
    assert (
        partial.report["pairs"]["a"]["counts"]["contacts"]["deactivated"]
        == case["expect"]["deactivated_after_partial"]
    )
    assert linked_members(app_state(sandbox), deleted)[0] == member_before

    sandbox.set_config("ghl", rate_limit_scale=100, ghl_burst_limit=100, ghl_daily_limit=200_000)
    reset_limiters()
    complete = world.run(["a"], full_refresh=True)

    assert complete.errors == {}
    assert complete.report["pairs"]["a"]["counts"]["contacts"]["deactivated"] == 1
    assert_parity(world.parity(deletions_seen=True))


def cursor_repeats(
    case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = case["params"]
    monkeypatch.setenv("GHL_MEMBERSTACK_SEARCH_PAGE_LIMIT", str(params["page_limit"]))
    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder)
    assert world.run(["a"]).errors == {}
    deleted = params["deleted"]
    member_before = linked_members(app_state(sandbox), deleted)[0]
    with world.ghl_hook() as hook:
        hook.delete_contact(deleted)
    writes = memberstack_writes(sandbox)
    sandbox.set_config("ghl", search_repeat_cursor=1)

    failed = world.run(["a"], full_refresh=True)

    assert sandbox.stats("ghl")["faults"].get("search_repeat_cursor") == 1
    assert_error(failed.errors.get("a"), case["expect"])
    assert failed.report["pairs"]["a"]["status"] == "failed"
    assert memberstack_writes(sandbox) - writes == case["expect"]["memberstack_writes"]
    assert linked_members(app_state(sandbox), deleted)[0] == member_before

    again = world.run(["a"], full_refresh=True)

    assert again.errors == {}
    assert_parity(world.parity(deletions_seen=True))


def create_error_after_processing(
    case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path
) -> None:
    sandbox.reset(scenario_seed(case))
    sandbox.set_config("memberstack", error_after_processing={"POST /members": case["params"]["count"]})
    world = World(sandbox, storage, folder)

    run = world.run(["a"])

    assert run.errors == {}
    assert sandbox.stats("memberstack")["faults"].get("error_after_processing") == case["expect"]["faults"]
    assert sandbox.config("memberstack")["error_after_processing"]["POST /members"] == 0
    parity = world.parity()
    assert parity.duplicates == 0
    assert_parity(parity)


def member_deleted_by_hand(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    contact_id = case["params"]["contact"]
    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder)
    assert world.run(["a"]).errors == {}
    app = app_state(sandbox)
    old_member = linked_members(app, contact_id)[0]
    old_records = {
        table: {
            ghl_id: records[0]["id"]
            for ghl_id, records in records_by_ghl_id(app, table).items()
            if records[0]["data"]["ghl_contact_id"] == contact_id
        }
        for table in ("ghl_tasks", "ghl_notes", "ghl_appointments")
    }
    assert any(old_records.values())
    with world.memberstack_hook() as hook:
        hook.delete_member(old_member["id"])
    with world.ghl_hook() as hook:
        hook.update_contact(contact_id, lastName="Came-Back")

    run = world.run(["a"])

    assert run.errors == {}
    app = app_state(sandbox)
    members = linked_members(app, contact_id)
    assert len(members) == 1
    assert members[0]["id"] != old_member["id"]
    for table, records in old_records.items():
        stored = records_by_ghl_id(app, table)
        for ghl_id, record_id in records.items():
            assert [r["id"] for r in stored[ghl_id]] == [record_id], (
                f"{table} {ghl_id} was not relinked in place"
            )
            assert stored[ghl_id][0]["data"]["member"] == members[0]["id"]
    assert_parity(world.parity())


def mapping_error(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    from ghl_memberstack import sync

    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder, mapping=case["params"]["mapping"])

    with pytest.raises(Exception) as raised:
        sync.resolve_pairs(["a"], pairs_file=str(world.pairs_file))
    assert_error(raised.value, case["expect"])
    assert str(folder / "mapping.yaml") in str(raised.value)

    pair = sync.SyncPair("a", *CONN["a"], str(folder / "mapping.yaml"))
    options = sync.RunOptions(dag_id=DAG_ID, run_id="corpus__mapping")
    with pytest.raises(Exception) as raised:
        sync.prepare_pair(pair, options)
    assert_error(raised.value, case["expect"])
    assert sandbox.stats("ghl")["total"] == case["expect"]["requests"]
    assert sandbox.stats("memberstack")["total"] == case["expect"]["requests"]


def plan_missing_in_app(
    case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GHL_MEMBERSTACK_LOAD_CONCURRENCY", "1")
    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder, mapping=case["params"]["mapping"])

    stopped = world.run(["a"])

    assert_error(stopped.errors.get("a"), case["expect"])
    assert stopped.report["pairs"]["a"]["status"] == "failed"
    plan_writes = sandbox.stats("memberstack")["by_route"].get("POST /members/{id}/add-plan", {})
    assert plan_writes.get("400", 0) <= case["expect"]["max_failed_plan_writes"]

    world.set_mapping(None)
    fixed = world.run(["a"])

    assert fixed.errors == {}
    parity = world.parity()
    assert parity.duplicates == 0
    assert_parity(parity)


def custom_field_missing(
    case: dict[str, Any],
    sandbox: SandboxHandle,
    storage: Path,
    folder: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = case["expect"]["missing_field"]
    sandbox.reset(scenario_seed(case))
    world = World(sandbox, storage, folder, mapping=case["params"]["mapping"])

    with caplog.at_level(logging.WARNING, logger="ghl_memberstack.load"):
        run = world.run(["a"])

    assert run.errors == {}
    app = app_state(sandbox)
    assert all(missing not in (m.get("customFields") or {}) for m in app["members"])
    assert any(
        missing in record.getMessage() for record in caplog.records if record.name == "ghl_memberstack.load"
    )
    assert missing in run.report_html
    assert run.statuses["a"].get("missing_custom_fields") == [missing]
    mapping = load_mapping(case["params"]["mapping"], folder)
    parity = world.parity(mapping=mapping)
    assert parity.matched_records == parity.expected_records
    assert parity.duplicates == 0
    assert all(f"customFields.{missing}" in entry for entry in parity.lost)


def data_table_missing(case: dict[str, Any], sandbox: SandboxHandle, storage: Path, folder: Path) -> None:
    table = case["params"]["table"]

    def drop_table(seed: dict[str, Any]) -> None:
        app = next(app for app in seed["memberstack"]["apps"] if app["secret_key"] == KEY_A)
        app["data_tables"] = [t for t in app["data_tables"] if t["key"] != table]

    sandbox.reset(scenario_seed(case, drop_table))
    world = World(sandbox, storage, folder)

    run = world.run(["a"])

    assert_error(run.errors.get("a"), case["expect"])
    assert memberstack_writes(sandbox) == case["expect"]["memberstack_writes"]
    assert run.report["pairs"]["a"]["status"] == "failed"


SCENARIOS: dict[str, Callable[..., None]] = {
    function.__name__: function
    for function in (
        email_taken_after_change,
        email_taken_shared_app,
        member_adopted,
        deleted_recreated,
        location_returns_none,
        token_rejected_mid_run,
        refresh_token_revoked,
        location_inactive,
        budget_exhausted,
        cursor_repeats,
        create_error_after_processing,
        member_deleted_by_hand,
        mapping_error,
        plan_missing_in_app,
        custom_field_missing,
        data_table_missing,
    )
}


@pytest.mark.parametrize("case", SCENARIO_CASES, ids=lambda case: case["id"])
def test_scenario_case(
    case: dict[str, Any],
    sandbox: SandboxHandle,
    environment: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    function = SCENARIOS[case["scenario"]]
    extras = {"monkeypatch": monkeypatch, "caplog": caplog}
    wanted = function.__code__.co_varnames[: function.__code__.co_argcount]
    function(
        case,
        sandbox,
        environment,
        tmp_path,
        **{name: value for name, value in extras.items() if name in wanted},
    )


# --- the corpus itself ----------------------------------------------------------------------------


def test_corpus_covers_every_bullet() -> None:
    bullets = Counter(case["bullet"] for case in ALL_CASES)
    required = [
        "emails: missing",
        "emails: invalid",
        "emails: with capitals or spaces",
        "emails: duplicated across contacts",
        "names: unicode",
        "names: emoji",
        "notes: 100 KB long",
        "notes: with HTML and script tags",
        "tasks with no dueDate or no contactId",
        "custom fields: an unknown id",
        "custom fields: values as list, number or null",
        "custom fields: the value spelling",
        "custom fields: the field_value spelling",
        "custom fields: the fieldValue spelling",
        "tags differing only in case or spaces",
        "tags containing commas",
        "dateUpdated as Z, as an offset, without milliseconds",
        "phones in messy formats",
        "a contact whose new email belongs to another member",
        "a contact deleted and re-created with the same email",
        "a location that had thousands of contacts returning none",
        "a 401 in the middle of a run",
        "a revoked refresh token",
        "a location that is not active",
        "the daily budget running out mid-run (a partial run infers no deletions)",
        "a repeating search cursor (the run fails and infers no deletions)",
        "a Memberstack create that answers an error although the member was created",
        "a member deleted by hand whose contact then changes",
        "a plan id in the mapping that is not a pln_ id (a configuration error before any write)",
        "a plan that the app lacks (the first plan write stops the pair with a configuration error)",
        "a mapped custom field that the app lacks (found by reading back, and reported)",
        "a missing Data Table (a preflight error)",
    ]
    assert [bullet for bullet in required if not bullets[bullet]] == []
    assert len(ALL_CASES) >= 40
    assert {case["scenario"] for case in SCENARIO_CASES} <= set(SCENARIOS)


def test_readme_lists_every_case() -> None:
    readme = (CASES_DIR / "README.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip().strip("`"): line for line in readme.splitlines() if line.startswith("| `")
    }
    assert sorted(rows) == sorted(case["id"] for case in ALL_CASES)
    for case in ALL_CASES:
        summary = case["expect"]["summary"].replace("|", "\\|")
        assert f"{case['expect']['outcome']}: {summary}" in rows[case["id"]], case["id"]


def test_case_ids_match_file_names() -> None:
    for path in sorted(CASES_DIR.glob("*.json")):
        if not path.name.startswith("_"):
            assert _read(path)["id"] == path.stem
