"""The parity report: ``report.json`` and ``report.html`` of a parity run, its check and its trend.

``pair_entry`` turns a pair's status file into its report entry and checks it against the
thresholds (``check_pair``). ``build_report`` adds the run's check and the trend over earlier runs,
which come from ``<storage>/reports/<dag_id>/parity_history.json``. The HTML page escapes every
value and masks email addresses, as the sync report does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from ghl_memberstack import report
from ghl_memberstack.parity_findings import EXCLUDED_KINDS, FINDING_KINDS
from ghl_memberstack.state import ENTITIES
from ghl_memberstack.storage import read_bytes, write_atomic

if TYPE_CHECKING:
    from ghl_memberstack.parity import ParityOptions, ParitySettings

log = logging.getLogger(__name__)

REPORT_KIND = "parity"
HISTORY_FILE = "parity_history.json"
# The history keeps this many runs, and the report's trend shows the last TREND_RUNS of them.
HISTORY_RUNS = 60
TREND_RUNS = 14


def json_default(value: Any) -> Any:
    """Convert values json cannot serialise: pandas and NumPy scalars, sets and tuples."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    return str(value)


def pair_entry(status: Mapping[str, Any], settings: ParitySettings) -> dict[str, Any]:
    """Build one pair's report entry from its status file, with the outcome of its threshold check."""
    if not status:
        status = {"status": "failed", "error": "no step of this pair recorded a result; read the task logs"}
    state = status.get("status")
    state = state if state in ("ok", "skipped") else "failed"
    entry = {
        "status": state,
        "error": status.get("error"),
        "duration_s": status.get("duration_s", 0.0),
        "complete_observation": bool(status.get("complete")),
        "partial_reason": status.get("partial_reason"),
        "before": status.get("before"),
        "after": status.get("after"),
        "unmanaged": status.get("unmanaged") or {"count": 0, "members": []},
        "other_location_members": status.get("other_location_members", 0),
        "quarantine": status.get("quarantine") or {},
        "coverage": status.get("coverage") or {},
        "requests": status.get("requests") or {},
        "counts_read": status.get("counts_read") or {},
        "repair": status.get("repair") or {},
        "expectations": status.get("expectations") or [],
        "quality_passed": status.get("quality_passed", True),
        "snapshot": status.get("snapshot"),
    }
    if status.get("plan") is not None:
        entry["plan"] = status["plan"]
    entry["check"] = check_pair(entry, settings)
    return entry


def check_pair(entry: Mapping[str, Any], settings: ParitySettings) -> dict[str, Any]:
    """Hold a pair's parity (after repair when it ran) and quarantine share against the thresholds.

    :return: ``passed`` (None for a skipped pair), the findings it judged, and the reasons it failed.
    """
    if entry["status"] == "skipped":
        return {"passed": None, "judged": None, "reasons": []}
    if entry["status"] == "failed":
        return {"passed": False, "judged": None, "reasons": [f"the pair failed: {entry.get('error')}"]}
    judged = "after" if entry.get("after") else "before"
    findings = entry.get(judged) or {}
    lowest = findings.get("lowest") or {"entity": "contacts", "parity": 0.0}
    reasons = []
    if lowest["parity"] < settings.min_parity_percent:
        when = "after repair" if judged == "after" else "without repair"
        minimum = settings.min_parity_percent
        reasons.append(f"parity of {lowest['entity']} is {lowest['parity']:.2f} % {when}, below {minimum} %")
    share = float((entry.get("quarantine") or {}).get("share_percent", 0.0))
    if share > settings.max_quarantine_percent:
        reasons.append(
            f"{share:.2f} % of the contacts are quarantined, above {settings.max_quarantine_percent} %"
        )
    if not entry.get("quality_passed", True):
        reasons.append("the batch expectations failed")
    if not entry.get("complete_observation", True):
        reasons.append(f"GHL was not read in full ({entry.get('partial_reason') or 'partial read'})")
    return {"passed": not reasons, "judged": judged, "reasons": reasons}


def build_report(
    options: ParityOptions,
    pairs: Mapping[str, dict[str, Any]],
    settings: ParitySettings,
    *,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build the parity report: ``"kind": "parity"``, the pairs, the run's check and the trend."""
    failed = not pairs or any(entry["status"] == "failed" for entry in pairs.values())
    reasons = [f"{name}: {reason}" for name, entry in pairs.items() for reason in entry["check"]["reasons"]]
    if not pairs:
        reasons.append("no pair ran")
    parity_report = {
        "kind": REPORT_KIND,
        "dag_id": options.dag_id,
        "run_id": options.run_id,
        "status": "failed" if failed else "ok",
        "dry_run": options.dry_run,
        "repair": options.repair,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "thresholds": settings.thresholds(),
        "check": {"passed": not reasons, "reasons": reasons},
        "pairs": dict(pairs),
    }
    parity_report["trend"] = [*(history or [])[-(TREND_RUNS - 1) :], _history_entry(parity_report)]
    return parity_report


def _history_entry(parity_report: Mapping[str, Any]) -> dict[str, Any]:
    pairs = {}
    for name, entry in parity_report["pairs"].items():
        judged = entry["check"].get("judged")
        findings = entry.get(judged) if judged else None
        pairs[name] = {
            "status": entry["status"],
            "parity": (findings or {}).get("parity"),
            "lowest": ((findings or {}).get("lowest") or {}).get("parity"),
            "quarantine_percent": (entry.get("quarantine") or {}).get("share_percent"),
            "covered_percent": (entry.get("coverage") or {}).get("covered_percent"),
            "passed": entry["check"]["passed"],
            "contacts_read": (entry.get("counts_read") or {}).get("contacts"),
            "valid_contacts": (entry.get("coverage") or {}).get("valid_contacts"),
            "tasks_read": (entry.get("counts_read") or {}).get("tasks_listed"),
        }
    return {
        "run_id": parity_report["run_id"],
        "generated_at": parity_report["generated_at"],
        "dry_run": parity_report["dry_run"],
        "repair": parity_report["repair"],
        "passed": parity_report["check"]["passed"],
        "pairs": pairs,
    }


def _history_path(root: Any, dag_id: str) -> Any:
    return root / "reports" / dag_id / HISTORY_FILE


def read_history(root: Any, dag_id: str) -> list[dict[str, Any]]:
    """Return the summaries of earlier parity runs of ``dag_id``, oldest first."""
    data = read_bytes(_history_path(root, dag_id))
    if data is None:
        return []
    try:
        history = json.loads(data)
    except ValueError:
        log.warning("Ignoring the unreadable parity history %s", _history_path(root, dag_id))
        return []
    return history if isinstance(history, list) else []


def append_history(
    root: Any, dag_id: str, parity_report: Mapping[str, Any], history: list[dict[str, Any]]
) -> None:
    """Add this run's summary to the history, keeping the last ``HISTORY_RUNS`` runs."""
    entries = [entry for entry in history if entry.get("run_id") != parity_report["run_id"]]
    entries.append(parity_report["trend"][-1])
    write_atomic(_history_path(root, dag_id), json.dumps(entries[-HISTORY_RUNS:], indent=1).encode("utf-8"))


def write_report(root: Any, parity_report: Mapping[str, Any]) -> dict[str, str]:
    """Write the parity run's ``report.json`` and ``report.html``, and return both paths."""
    folder = report.report_dir(root, parity_report["dag_id"], parity_report["run_id"])
    json_path = folder / "report.json"
    html_path = folder / "report.html"
    write_atomic(json_path, json.dumps(parity_report, indent=1, default=json_default).encode("utf-8"))
    write_atomic(html_path, render_html(parity_report).encode("utf-8"))
    return {"json": str(json_path), "html": str(html_path)}


def render_html(parity_report: Mapping[str, Any]) -> str:
    """Render the parity report's HTML page; values are escaped and emails masked."""
    template = report._environment().get_template("parity_report.html.j2")
    return template.render(
        report=parity_report,
        entities=ENTITIES,
        finding_kinds=FINDING_KINDS,
        excluded_kinds=EXCLUDED_KINDS,
        plan_limit=report.HTML_PLAN_LIMIT,
        list_limit=report.HTML_QUARANTINE_LIMIT,
        expectation_rows=report._expectation_rows,
    )


def summary_lines(parity_report: Mapping[str, Any]) -> list[str]:
    """Return one summary line per pair: what the parity run found and what it wrote."""
    lines = []
    outcomes = {True: "passed", False: "failed", None: "skipped"}
    for name, entry in parity_report["pairs"].items():
        judged = entry["check"].get("judged")
        findings = (entry.get(judged) if judged else None) or {}
        parity = ", ".join(
            f"{entity} {value:.2f} %" for entity, value in (findings.get("parity") or {}).items()
        )
        requests = entry.get("requests") or {}
        coverage = entry.get("coverage") or {}
        repair = entry.get("repair") or {}
        parts = [
            f"{name}: {entry['status']}",
            f"parity ({judged or 'none'}) {parity or '-'}",
            f"unmanaged {entry['unmanaged']['count']}",
            f"quarantined {entry['quarantine'].get('share_percent', 0)} %",
            f"notes and appointments of {coverage.get('covered_contacts', 0)} of "
            f"{coverage.get('valid_contacts', 0)} contacts read",
            f"GHL requests {requests.get('ghl', 0)} of budget {requests.get('ghl_budget', 0)}",
            f"repair {repair.get('done', 0)} done, {repair.get('failed', 0)} failed of "
            f"{repair.get('planned_operations', 0)} planned",
            f"check {outcomes[entry['check']['passed']]}",
        ]
        if entry.get("error"):
            parts.append(f"error: {entry['error']}")
        lines.append("; ".join(parts))
    return lines
