"""Sync steps without a scheduler: watermark, pending contacts, leases, dry runs and the report."""

from __future__ import annotations

import datetime as dt
import json
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sync_fakes import BASE_MS, FakeHook, contact

from ghl_memberstack import report, sync
from ghl_memberstack.pairs import PairsError, SyncPair
from ghl_memberstack.snapshot import SnapshotStore
from ghl_memberstack.storage import Lease, LeaseTimeout, as_storage_path

MAPPING = str(Path(sync.__file__).resolve().parent.parent / "mapping.yaml")
PAIR = SyncPair("unit", "gohighlevel_unit", "memberstack_unit", MAPPING)


def seen(rows: list[tuple[str, int | None, bool, bool, bool]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_id": pd.array([r[0] for r in rows], dtype="string"),
            "date_updated": pd.array([r[1] for r in rows], dtype="Int64"),
            "valid": pd.array([r[2] for r in rows], dtype="boolean"),
            "moved": pd.array([r[3] for r in rows], dtype="boolean"),
            "fetched": pd.array([r[4] for r in rows], dtype="boolean"),
        }
    )


def options(**kwargs: Any) -> sync.RunOptions:
    kwargs.setdefault("run_id", "manual__unit")
    return sync.RunOptions(dag_id="ghl_memberstack_sync", **kwargs)


def settings(**kwargs: Any) -> sync.SyncSettings:
    kwargs.setdefault("pair_lease_poll_s", 0.01)
    kwargs.setdefault("pair_lease_wait_s", 0.2)
    return sync.SyncSettings(**kwargs)


class NoMemberstack:
    """A Memberstack hook that fails the test on any use."""

    request_count = 0

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Memberstack hook used: {name}")




def test_watermark_is_highest_date_read() -> None:
    frame = seen([("a", 100, True, True, True), ("b", 300, True, True, True)])
    assert sync.next_watermark(frame, 50, (), backfill=False) == 300


def test_watermark_never_passes_oldest_pending() -> None:
    frame = seen([("a", 100, True, True, False), ("b", 300, True, True, True)])
    assert sync.next_watermark(frame, 50, ("a",), backfill=False) == 100


def test_watermark_keeps_old_value_without_reads() -> None:
    assert sync.next_watermark(seen([]), 500, (), backfill=False) == 500
    assert sync.next_watermark(seen([]), None, (), backfill=False) is None


def test_backfill_never_moves_watermark() -> None:
    frame = seen([("a", 10, True, True, True), ("b", 9_000, True, True, True)])
    assert sync.next_watermark(frame, 500, (), backfill=True) == 500


def test_pending_holds_failed_and_unread_contacts() -> None:
    frame = seen(
        [
            ("done", 1, True, True, True),
            ("unread", 2, True, True, False),
            ("unchanged", 3, True, False, False),
            ("invalid", 4, False, True, False),
            ("failed", 5, True, True, True),
        ]
    )
    assert sync.next_pending(frame, ("old",), {"failed"}, partial=False) == ("failed", "unread")


def test_partial_extract_keeps_pending() -> None:
    frame = seen([("a", 1, True, True, True)])
    assert sync.next_pending(frame, ("a", "old"), set(), partial=True) == ("old",)
    assert sync.next_pending(frame, ("a", "old"), set(), partial=False) == ()




def test_settings_read_environment() -> None:
    values = sync.SyncSettings.from_env({"GHL_MEMBERSTACK_SEARCH_OVERLAP_S": "30", "GHL_MEMBERSTACK_LOAD_CONCURRENCY": "2"})
    assert values.search_overlap_s == 30.0
    assert values.load_concurrency == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GHL_MEMBERSTACK_PAIR_LEASE_WAIT_S": "soon"}, "GHL_MEMBERSTACK_PAIR_LEASE_WAIT_S must be a number"),
        ({"GHL_MEMBERSTACK_SEARCH_OVERLAP_S": "-1"}, "must not be negative"),
        ({"GHL_MEMBERSTACK_SEARCH_PAGE_LIMIT": "900"}, "between 1 and 500"),
    ],
)
def test_settings_reject_invalid_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sync.SyncSettings.from_env(env)


def context(run_type: str, **extra: Any) -> dict[str, Any]:
    dag_run = types.SimpleNamespace(run_type=run_type, dag_id="ghl_memberstack_sync")
    return {"params": {"dry_run": True, "sync_pairs": []}, "dag_run": dag_run, "run_id": "r1", **extra}


def test_manual_run_without_interval_uses_watermark() -> None:
    run_options = sync.options_from_context(context("manual"))
    assert run_options.run_type == "manual"
    assert run_options.interval_start_ms is None
    assert run_options.dry_run is True


def test_scheduled_run_ignores_interval() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    run_options = sync.options_from_context(context("scheduled", data_interval_start=start))
    assert run_options.interval_start_ms is None


def test_backfill_run_takes_interval() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    end = start + dt.timedelta(hours=1)
    run_options = sync.options_from_context(
        context("backfill", data_interval_start=start, data_interval_end=end)
    )
    assert run_options.interval_start_ms == BASE_MS
    assert run_options.interval_end_ms == BASE_MS + 3_600_000


def test_unknown_pair_name_fails_before_any_work() -> None:
    with pytest.raises(PairsError, match="unknown sync pairs"):
        sync.resolve_pairs(["nope"], pairs_file="sync_pairs.demo.yaml")




def test_second_run_waits_then_stops(tmp_path: Path) -> None:
    root = as_storage_path(tmp_path)
    holder = sync.pair_lease(root, PAIR.name, "ghl_memberstack_sync/other-run", settings())
    holder.acquire()
    try:
        with pytest.raises(LeaseTimeout, match="other-run"):
            sync.prepare_pair(PAIR, options(), settings=settings(), root=root, gohighlevel_hook=FakeHook([]))
    finally:
        holder.release()
    status = sync.read_status(sync.work_dir(root, options(), PAIR.name))
    assert status["status"] == "failed"
    assert status["step"] == "lease"


def test_lease_passes_from_prepare_to_load(tmp_path: Path) -> None:
    root = as_storage_path(tmp_path)
    hook = FakeHook([contact(i, BASE_MS + i) for i in range(3)])
    prepared = sync.prepare_pair(PAIR, options(dry_run=True), settings=settings(), root=root, gohighlevel_hook=hook)

    other = Lease(root / "locks" / "unit.lease.json", owner="someone-else", ttl_s=60, wait_s=0.05, poll_s=0.01)
    with pytest.raises(LeaseTimeout):
        other.acquire()

    sync.load_pair(prepared, options(dry_run=True), settings=settings(), root=root, memberstack_hook=NoMemberstack())
    other.acquire()
    other.release()




def test_dry_run_plans_but_writes_nothing(tmp_path: Path) -> None:
    root = as_storage_path(tmp_path)
    hook = FakeHook([contact(i, BASE_MS + i * 1000) for i in range(4)])
    run_options = options(dry_run=True)

    prepared = sync.prepare_pair(PAIR, run_options, settings=settings(), root=root, gohighlevel_hook=hook)
    assert prepared["status"] == "planned"
    assert prepared["operations"] > 0
    assert len(json.dumps(prepared)) < 2000

    outcome = sync.load_pair(prepared, run_options, settings=settings(), root=root, memberstack_hook=NoMemberstack())
    assert outcome["status"] == "ok"
    assert SnapshotStore(root, PAIR.name).manifest() is None

    summary = sync.summarize([PAIR.name], run_options, settings=settings(), root=root)
    written = json.loads(Path(summary["report_json"].removeprefix("file://")).read_text())
    assert written["dry_run"] is True
    assert written["status"] == "ok"
    assert written["pairs"]["unit"]["counts"]["contacts"]["created"] == 4
    assert written["pairs"]["unit"]["counts"]["contacts"]["extracted"] == 4


def test_report_marks_pair_without_status_failed(tmp_path: Path) -> None:
    root = as_storage_path(tmp_path)
    summary = sync.summarize(["ghost"], options(), settings=settings(), root=root)
    assert summary["status"] == "failed"
    written = json.loads(Path(summary["report_json"].removeprefix("file://")).read_text())
    assert written["pairs"]["ghost"]["status"] == "failed"


def test_report_has_exact_shape(tmp_path: Path) -> None:
    entry = report.pair_entry(status="ok", counts={"contacts": {"created": 2}}, requests={"ghl": 1})
    built = report.build_report(dag_id="d", run_id="r", dry_run=False, pairs={"p": entry})
    assert set(built) == {"kind", "dag_id", "run_id", "status", "dry_run", "pairs"}
    assert built["kind"] == "sync"
    assert set(built["pairs"]["p"]) == {"status", "duration_s", "counts", "quarantine", "expectations", "requests", "plans"}
    assert set(built["pairs"]["p"]["counts"]) == {"contacts", "tasks", "notes", "appointments"}
    assert set(built["pairs"]["p"]["counts"]["tasks"]) == set(report.COUNT_KEYS)
    assert built["pairs"]["p"]["requests"] == {"ghl": 1, "memberstack": 0}
    assert built["pairs"]["p"]["plans"] == {"added": 0, "removed": 0}


def test_report_html_escapes_and_masks(tmp_path: Path) -> None:
    entry = report.pair_entry(
        status="failed",
        quarantine=[{"entity": "notes", "ghl_id": "<script>alert(1)</script>", "reason": "invalid_record"}],
    )
    built = report.build_report(dag_id="d", run_id="r", dry_run=False, pairs={"p": entry})
    html = report.render_html(built, extra={"p": {"error": "member jane.doe@example.org rejected"}})
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html
    assert "jane.doe@example.org" not in html
    assert "j***@example.org" in html


def test_invalid_pair_status_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid pair status"):
        report.pair_entry(status="partial")


def test_stopped_load_reports_unfinished_writes_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ghl_memberstack import load

    class StoppingLoader:
        """Finishes the first operation, then stops the way an unknown plan id stops a load."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def preflight(self, mapping: Any) -> None:
            pass

        def run(self, operations: list[Any], **kwargs: Any) -> load.LoadResult:
            raise load.LoadConfigError("no such plan", result=load.LoadResult(done=[operations[0]]))

    monkeypatch.setattr(load, "Loader", StoppingLoader)
    root = as_storage_path(tmp_path)
    run_options = options()
    hook = FakeHook([contact(i, BASE_MS + i * 1000) for i in range(4)])
    prepared = sync.prepare_pair(PAIR, run_options, settings=settings(), root=root, gohighlevel_hook=hook)

    with pytest.raises(load.LoadConfigError):
        sync.load_pair(prepared, run_options, settings=settings(), root=root, memberstack_hook=NoMemberstack())

    summary = sync.summarize([PAIR.name], run_options, settings=settings(), root=root)
    written = json.loads(Path(summary["report_json"].removeprefix("file://")).read_text())
    contacts = written["pairs"]["unit"]["counts"]["contacts"]
    assert written["pairs"]["unit"]["status"] == "failed"
    assert contacts["created"] == 1
    assert contacts["failed"] == 3
