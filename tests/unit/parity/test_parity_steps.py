"""Parity settings, request estimate, coverage order, threshold check, masking and the report page."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))

from sync_fakes import BASE_MS, FakeHook, contact  # noqa: E402

from ghl_memberstack import extract, parity, parity_report, report  # noqa: E402
from ghl_memberstack.state import Operation, OpKind  # noqa: E402
from ghl_memberstack.storage import as_storage_path  # noqa: E402

SETTINGS = parity.ParitySettings()


def entry(
    *, status: str = "ok", before: float = 100.0, after: float | None = None, share: float = 0.0
) -> dict[str, Any]:
    def findings(value: float) -> dict[str, Any]:
        return {"lowest": {"entity": "notes", "parity": value}, "parity": {"notes": value}}

    return {
        "status": status,
        "error": "LeaseTimeout: busy" if status == "failed" else None,
        "before": findings(before),
        "after": findings(after) if after is not None else None,
        "quarantine": {"share_percent": share},
        "quality_passed": True,
    }


# --- settings and options -------------------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = parity.ParitySettings.from_env({})

    assert settings.request_budget == 50_000
    assert settings.min_parity_percent == 99.5
    assert settings.max_quarantine_percent == 2.0


def test_settings_from_environment() -> None:
    settings = parity.ParitySettings.from_env(
        {"GHL_MEMBERSTACK_PARITY_REQUEST_BUDGET": "1200", "GHL_MEMBERSTACK_PARITY_MIN_PERCENT": "98"}
    )

    assert settings.request_budget == 1200
    assert settings.min_parity_percent == 98.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GHL_MEMBERSTACK_PARITY_REQUEST_BUDGET", "lots"),
        ("GHL_MEMBERSTACK_PARITY_REQUEST_BUDGET", "0"),
        ("GHL_MEMBERSTACK_PARITY_MIN_PERCENT", "101"),
        ("GHL_MEMBERSTACK_PARITY_MAX_QUARANTINE_PERCENT", "-1"),
    ],
)
def test_invalid_setting_names_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        parity.ParitySettings.from_env({name: value})


@pytest.mark.parametrize(("raw", "expected"), [("", True), ("0", False), ("off", False), ("YES", True)])
def test_repair_default_from_setting(raw: str, expected: bool) -> None:
    assert parity.repair_default({"GHL_MEMBERSTACK_PARITY_REPAIR": raw}) is expected


def test_repair_default_rejects_unknown_value() -> None:
    with pytest.raises(ValueError, match="GHL_MEMBERSTACK_PARITY_REPAIR"):
        parity.repair_default({"GHL_MEMBERSTACK_PARITY_REPAIR": "maybe"})


def test_options_take_repair_setting_when_param_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GHL_MEMBERSTACK_PARITY_REPAIR", "0")
    context = {
        "params": {"repair": None, "dry_run": True},
        "dag_run": SimpleNamespace(dag_id="ghl_memberstack_parity", run_type="scheduled"),
        "run_id": "scheduled__2026-01-02T03:00:00+00:00",
    }
    options = parity.options_from_context(context)

    assert options.repair is False
    assert options.dry_run is True
    assert options.run_type == "scheduled"
    assert options.lease_owner == "ghl_memberstack_parity/scheduled__2026-01-02T03:00:00+00:00"
    assert parity.ParityOptions.from_dict(options.to_dict()) == options


def test_parity_conf_from_environment() -> None:
    import parity_conf

    assert parity_conf.build_conf({"REPAIR": "0", "SYNC_PAIRS": "a, b"}) == {
        "dry_run": False,
        "force": False,
        "repair": False,
        "sync_pairs": ["a", "b"],
    }
    assert "repair" not in parity_conf.build_conf({})


# --- estimate and coverage ------------------------------------------------------------------------


def test_estimate_counts_pages_and_child_reads() -> None:
    # 1200 contacts: 3 search pages (2 full, 1 short); 250 tasks: 3 pages and an empty one;
    # one custom field read; 2 reads per valid contact.
    assert (
        parity.estimate_requests(contacts=1200, valid_contacts=1100, tasks=250, page_limit=500)
        == 3 + 4 + 1 + 2200
    )


def test_estimate_of_empty_location() -> None:
    assert parity.estimate_requests(contacts=0, valid_contacts=0, tasks=0, page_limit=500) == 3


def test_coverage_order_puts_oldest_checked_first() -> None:
    order = parity.coverage_order({"c1": 300, "c2": 100, "c4": 200})

    assert order(["c1", "c2", "c3", "c4"]) == ["c3", "c2", "c4", "c1"]


def test_coverage_order_leaves_out_ineligible() -> None:
    order = parity.coverage_order({}, lambda: {"c2", "c3"})

    assert order(["c3", "c1", "c2"]) == ["c2", "c3"]


def test_extract_child_budget_limits_per_contact_reads(tmp_path: Path) -> None:
    hook = FakeHook([contact(i, BASE_MS + i) for i in range(6)], page_limit=10)
    extractor = extract.Extractor(
        hook,
        as_storage_path(tmp_path / "work"),
        applied_updated={},
        cached_custom_fields=None,
        page_limit=10,
        child_order=lambda ids: sorted(ids, reverse=True),
        # One contact page, one custom fields read and one task page leave 5 requests: 2 contacts.
        child_request_budget=8,
    )
    result = extractor.run(extract.ExtractRequest(extract.MODE_FULL, None, None, ()))
    seen = extract.read_seen(tmp_path / "work")
    fetched = set(seen.loc[seen["fetched"].fillna(False).astype(bool), "contact_id"])

    assert hook.request_count <= 8
    assert fetched == {"c005", "c004"}
    assert [cid for kind, cid in hook.calls if kind == "notes"] == ["c005", "c004"]
    assert result.complete is True
    assert result.counts["tasks"]["extracted"] == 6
    assert extractor.tasks_listed == 6


# --- threshold check ------------------------------------------------------------------------------


def test_check_passes_within_thresholds() -> None:
    assert parity_report.check_pair(entry(before=99.6, share=1.0), SETTINGS) == {
        "passed": True,
        "judged": "before",
        "reasons": [],
    }


def test_check_judges_after_repair_when_it_ran() -> None:
    outcome = parity_report.check_pair(entry(before=50.0, after=100.0), SETTINGS)

    assert outcome["passed"] is True
    assert outcome["judged"] == "after"


def test_check_fails_below_parity_threshold() -> None:
    outcome = parity_report.check_pair(entry(before=99.4), SETTINGS)

    assert outcome["passed"] is False
    assert outcome["reasons"] == ["parity of notes is 99.40 % without repair, below 99.5 %"]


def test_check_fails_above_quarantine_share() -> None:
    outcome = parity_report.check_pair(entry(share=2.5), SETTINGS)

    assert outcome["passed"] is False
    assert outcome["reasons"] == ["2.50 % of the contacts are quarantined, above 2.0 %"]


def test_check_fails_failed_pair_and_skips_skipped_pair() -> None:
    assert parity_report.check_pair(entry(status="failed"), SETTINGS)["passed"] is False
    assert parity_report.check_pair(entry(status="skipped"), SETTINGS)["passed"] is None


def test_check_raises_with_reasons() -> None:
    with pytest.raises(parity.ParityCheckFailed, match="default: parity of notes"):
        parity.check(
            {"passed": False, "reasons": ["default: parity of notes is 90 %"], "report_html": "r.html"}
        )
    parity.check({"passed": True})


def test_report_fails_check_when_no_pair_ran() -> None:
    options = parity.ParityOptions(dag_id="ghl_memberstack_parity", run_id="manual__1")
    built = parity_report.build_report(options, {}, SETTINGS)

    assert built["kind"] == "parity"
    assert built["status"] == "failed"
    assert built["check"] == {"passed": False, "reasons": ["no pair ran"]}


def test_report_trend_appends_this_run() -> None:
    options = parity.ParityOptions(dag_id="ghl_memberstack_parity", run_id="manual__2")
    pair = entry(before=99.0) | {"check": parity_report.check_pair(entry(before=99.0), SETTINGS)}
    history = [{"run_id": f"manual__old{i}", "pairs": {}} for i in range(20)]
    built = parity_report.build_report(options, {"default": pair}, SETTINGS, history=history)

    assert len(built["trend"]) == parity_report.TREND_RUNS
    assert built["trend"][-1]["run_id"] == "manual__2"
    assert built["trend"][-1]["pairs"]["default"]["lowest"] == 99.0
    assert built["trend"][-2]["run_id"] == "manual__old19"


# --- masking, plans and the page --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("email", "ada.lovelace@example.org", "a***@example.org"),
        ("cf:first-name", "Ada", "A***"),
        ("body", "<p>Call me</p>", "<***"),
        ("json", '{"notes": []}', "***"),
        ("cf:last-name", "", ""),
        ("status", "deleted", "deleted"),
        ("plan", "pln_vip-free", "pln_vip-free"),
        ("completed", True, True),
        ("due_date", "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000Z"),
        ("title", None, None),
    ],
)
def test_mask_value(field: str, value: Any, expected: Any) -> None:
    assert report.mask_value(field, value) == expected


def operations() -> list[Operation]:
    return [
        Operation(
            key="member:create:C1:abc",
            kind=OpKind.MEMBER_CREATE,
            contact_id="C1",
            fields={"email": "ada@example.org", "cf:first-name": "Ada", "status": "active"},
        ),
        Operation(
            key="record:update:ghl_notes:N1:def",
            kind=OpKind.RECORD_UPDATE,
            contact_id="C1",
            member_id="mem_1",
            table="ghl_notes",
            ghl_id="N1",
            record_id="rec_1",
            fields={"body": ""},
            cleared=("body",),
        ),
    ]


def test_plan_items_list_ids_and_field_names_masked() -> None:
    items = report.plan_items(operations())

    assert items[0]["fields"] == ["cf:first-name", "email", "status"]
    assert items[0]["values"] == {"cf:first-name": "A***", "email": "a***@example.org", "status": "active"}
    assert items[1]["kind"] == "record_update"
    assert (items[1]["table"], items[1]["ghl_id"], items[1]["record_id"]) == ("ghl_notes", "N1", "rec_1")
    assert items[1]["cleared"] == ["body"]


def test_plan_summary_keeps_full_values_in_plan_file(tmp_path: Path) -> None:
    root = as_storage_path(tmp_path)
    summary = report.plan_summary(root, "ghl_memberstack_sync", "manual__1", "default", operations())
    body = json.loads(
        (tmp_path / "plans" / "ghl_memberstack_sync" / "manual__1" / "default.json").read_text()
    )

    assert summary["operations"] == 2
    assert summary["by_kind"] == {"member_create": 1, "record_update": 1}
    assert summary["file"].endswith("plans/ghl_memberstack_sync/manual__1/default.json")
    assert body["operations"][0]["fields"]["email"] == "ada@example.org"
    assert "ada@example.org" not in json.dumps(summary)


def test_parity_page_masks_and_escapes() -> None:
    options = parity.ParityOptions(dag_id="ghl_memberstack_parity", run_id="manual__3", dry_run=True)
    status = {
        "status": "failed",
        "error": "MemberstackRequestError: <b>member ada@example.org</b> rejected",
        "unmanaged": {
            "count": 1,
            "members": [
                {
                    "member_id": "mem_9",
                    "email": "w***@example.org",
                    "reason": "not_linked",
                    "contact_id": None,
                }
            ],
        },
    }
    page = parity_report.render_html(
        parity_report.build_report(options, {"default": parity_report.pair_entry(status, SETTINGS)}, SETTINGS)
    )

    assert "ada@example.org" not in page
    assert "a***@example.org" in page
    assert "<b>member" not in page
    assert "&lt;b&gt;member" in page
    assert 'data-figure="unmanaged-default">1<' in page
    assert "check failed" in page


def test_sync_page_lists_dry_run_plan(tmp_path: Path) -> None:
    plan = report.plan_summary(
        as_storage_path(tmp_path), "ghl_memberstack_sync", "manual__4", "default", operations()
    )
    pair = report.pair_entry(status="ok", plan=plan)
    page = report.render_html(
        report.build_report(dag_id="d", run_id="manual__4", dry_run=True, pairs={"default": pair})
    )

    assert "Planned operations (2)" in page
    assert "member:create:C1:abc" in page
    assert "Ada" not in page
    assert "ada@example.org" not in page


def test_sync_entry_without_plan_keeps_fixed_shape() -> None:
    pair = report.pair_entry(status="ok")

    assert "plan" not in pair
    assert set(pair) == {"status", "duration_s", "counts", "quarantine", "expectations", "requests", "plans"}


def test_check_fails_partial_observation() -> None:
    partial = entry() | {"complete_observation": False, "partial_reason": "budget_exhausted"}
    outcome = parity_report.check_pair(partial, SETTINGS)

    assert outcome["passed"] is False
    assert outcome["reasons"] == ["GHL was not read in full (budget_exhausted)"]
