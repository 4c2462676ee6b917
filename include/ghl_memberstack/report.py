"""Run reports: ``<storage>/reports/<dag_id>/<run_id>/report.json`` and ``report.html``.

The JSON has one fixed shape::

    {"kind": "sync", "dag_id", "run_id", "status", "dry_run",
     "pairs": {"<name>": {"status": "ok" | "skipped" | "failed", "duration_s",
       "counts": {"contacts" | "tasks" | "notes" | "appointments":
                  {"extracted", "valid", "quarantined", "created", "updated", "deactivated",
                   "deleted", "unchanged", "failed"}},
       "quarantine": [{"entity", "ghl_id", "reason"}],
       "expectations": [...], "requests": {"ghl", "memberstack"}}}}

A dry run adds ``"plan"`` to each planned pair: every operation with its key, ids and field names,
personal values masked, and the path of the plan file on the storage that contains the full values
(``<storage>/plans/<dag_id>/<run_id>/<pair>.json``). A run whose expectations built Great
Expectations Data Docs adds ``"data_docs"``, the path of ``data_docs/index.html`` relative to the
report folder.

The HTML page shows the same data. Jinja2 escapes every value, and email addresses in any text are
masked before they reach the page.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from ghl_memberstack.state import ENTITIES
from ghl_memberstack.storage import write_atomic

log = logging.getLogger(__name__)

REPORT_KIND = "sync"
COUNT_KEYS = (
    "extracted",
    "valid",
    "quarantined",
    "created",
    "updated",
    "deactivated",
    "deleted",
    "unchanged",
    "failed",
)
PAIR_STATUSES = ("ok", "skipped", "failed")
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# The HTML page lists at most this many quarantine entries per pair; the JSON lists all of them.
HTML_QUARANTINE_LIMIT = 500

_EMAIL_RE = re.compile(r"([A-Za-z0-9._%+'-])[A-Za-z0-9._%+'-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")


def empty_counts() -> dict[str, dict[str, int]]:
    """Return a counts block with every entity and every count at zero."""
    return {entity: dict.fromkeys(COUNT_KEYS, 0) for entity in ENTITIES}


def pair_entry(
    *,
    status: str,
    duration_s: float = 0.0,
    counts: Mapping[str, Mapping[str, int]] | None = None,
    quarantine: list[Mapping[str, Any]] | None = None,
    expectations: list[Any] | None = None,
    requests: Mapping[str, int] | None = None,
    plan: Mapping[str, Any] | None = None,
    plans: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Build one pair's report entry in the fixed shape, filling missing counts with zeros.

    :param plan: a dry run's plan from :func:`plan_summary`; the entry has no ``plan`` key without it.
    :param plans: managed free plans ``added`` to and ``removed`` from members (planned, in a dry run).

    :raises ValueError: when ``status`` is not ``ok``, ``skipped`` or ``failed``.
    """
    if status not in PAIR_STATUSES:
        raise ValueError(f"invalid pair status {status!r}; expected one of {PAIR_STATUSES}")
    full_counts = empty_counts()
    for entity, values in (counts or {}).items():
        if entity in full_counts:
            for key in COUNT_KEYS:
                full_counts[entity][key] = int(values.get(key, 0) or 0)
    requests = requests or {}
    entry = {
        "status": status,
        "duration_s": round(float(duration_s), 3),
        "counts": full_counts,
        "quarantine": [
            {"entity": str(q["entity"]), "ghl_id": str(q["ghl_id"]), "reason": str(q["reason"])}
            for q in quarantine or []
        ],
        "expectations": list(expectations or []),
        "requests": {
            "ghl": int(requests.get("ghl", 0) or 0),
            "memberstack": int(requests.get("memberstack", 0) or 0),
        },
    }
    plans = plans or {}
    entry["plans"] = {"added": int(plans.get("added", 0) or 0), "removed": int(plans.get("removed", 0) or 0)}
    if plan is not None:
        entry["plan"] = dict(plan)
    return entry


def build_report(
    *,
    dag_id: str,
    run_id: str,
    dry_run: bool,
    pairs: Mapping[str, dict[str, Any]],
    data_docs: str | None = None,
) -> dict[str, Any]:
    """Build a run report from pair entries made by :func:`pair_entry`.

    The run's status is ``failed`` when any pair failed or no pair ran, else ``ok``.

    :param data_docs: the Data Docs index relative to the report folder, from :func:`write_data_docs_index`.
    """
    failed = not pairs or any(entry["status"] == "failed" for entry in pairs.values())
    report = {
        "kind": REPORT_KIND,
        "dag_id": dag_id,
        "run_id": run_id,
        "status": "failed" if failed else "ok",
        "dry_run": bool(dry_run),
        "pairs": dict(pairs),
    }
    if data_docs:
        report["data_docs"] = data_docs
    return report


def report_dir(root: Any, dag_id: str, run_id: str) -> Any:
    """Return the folder of one run's report under the storage root."""
    return root / "reports" / dag_id / run_id


def write_report(
    root: Any, report: Mapping[str, Any], *, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` of a run and return both paths.

    :param extra: details shown on the HTML page only, such as each pair's extract mode.
    """
    folder = report_dir(root, report["dag_id"], report["run_id"])
    json_path = folder / "report.json"
    html_path = folder / "report.html"
    write_atomic(json_path, json.dumps(report, indent=2, sort_keys=False, default=str).encode("utf-8"))
    write_atomic(html_path, render_html(report, extra=extra).encode("utf-8"))
    return {"json": str(json_path), "html": str(html_path)}


def mask_emails(text: str) -> str:
    """Replace each email address in ``text`` with its first character and domain, as ``j***@example.org``."""
    return _EMAIL_RE.sub(lambda match: f"{match.group(1)}***@{match.group(2)}", text)


def _finalize(value: Any) -> Any:
    if isinstance(value, str):
        return mask_emails(value)
    return value


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(report: Mapping[str, Any], *, extra: Mapping[str, Any] | None = None) -> str:
    """Render the HTML page of a report."""
    template = _environment().get_template("report.html.j2")
    return template.render(
        report=report,
        extra=extra or {},
        entities=ENTITIES,
        count_keys=COUNT_KEYS,
        quarantine_limit=HTML_QUARANTINE_LIMIT,
        plan_limit=HTML_PLAN_LIMIT,
        expectation_rows=_expectation_rows,
        generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )


def _expectation_rows(expectations: list[Any]) -> list[dict[str, str]]:
    """Flatten expectation results into rows of check name, outcome and detail for the HTML table."""
    rows = []
    for item in expectations:
        if not isinstance(item, Mapping):
            rows.append({"name": str(item), "success": "", "detail": ""})
            continue
        name = item.get("name") or item.get("expectation") or item.get("expectation_type") or "expectation"
        success = item.get("success")
        if item.get("skipped"):
            outcome = "skipped"
        elif success is None:
            outcome = ""
        else:
            outcome = "passed" if success else "failed"
        parts = []
        if item.get("expectation") and item.get("expectation") != name:
            parts.append(str(item["expectation"]))
        if item.get("observed") is not None:
            parts.append(f"observed {json.dumps(item['observed'], default=str, sort_keys=True)}")
        if item.get("note"):
            parts.append(str(item["note"]))
        known = {"name", "expectation", "expectation_type", "success", "skipped", "observed", "note"}
        extra = {k: v for k, v in item.items() if k not in known}
        if extra:
            parts.append(json.dumps(extra, default=str, sort_keys=True))
        rows.append({"name": str(name), "success": outcome, "detail": "; ".join(parts)})
    return rows


def prune_reports(root: Any, dag_id: str, *, retention_days: int, now: dt.datetime | None = None) -> int:
    """Remove report folders of ``dag_id`` older than ``retention_days`` and return how many went.

    The age is the modification time of each folder's ``report.json``; a folder without it stays.
    """
    folder = root / "reports" / dag_id
    if retention_days <= 0 or not folder.exists():
        return 0
    cutoff = (now or dt.datetime.now(dt.UTC)).timestamp() - retention_days * 86400
    removed = 0
    for run_folder in folder.iterdir():
        modified = _modified_at(run_folder / "report.json")
        if modified is not None and modified < cutoff:
            run_folder.fs.rm(run_folder.path, recursive=True)
            removed += 1
    if removed:
        log.info("Removed %d reports of %s older than %d days", removed, dag_id, retention_days)
    return removed


def _modified_at(path: Any) -> float | None:
    try:
        info = path.fs.info(path.path)
    except (FileNotFoundError, OSError):
        return None
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(value, dt.datetime):
        return value.timestamp()
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Dry-run plans: masked in reports, full values only in a plan file on the storage.

# Operation fields whose values are ids, statuses, flags or dates rather than personal data, so a
# report shows them in clear. Every other text value is masked.
PLAN_CLEAR_FIELDS = frozenset(
    {
        "status",
        "cf:ghl-status",
        "plan",
        "member",
        "completed",
        "ghl_task_id",
        "ghl_note_id",
        "ghl_appointment_id",
        "ghl_contact_id",
        "ghl_location_id",
        "due_date",
        "date_added",
        "start_time",
        "end_time",
    }
)
# The HTML page lists at most this many planned operations per pair; the JSON lists all of them.
HTML_PLAN_LIMIT = 500


def mask_value(field: str, value: Any) -> Any:
    """Mask one value an operation writes, as reports show it.

    Ids, statuses, flags and dates (``PLAN_CLEAR_FIELDS``), numbers, booleans, None and "" stay as
    they are, so a cleared field is visible. An email becomes ``a***@example.org``, member json
    ``***``, and any other text its first character and ``***``.
    """
    if value is None or isinstance(value, bool | int | float) or field in PLAN_CLEAR_FIELDS:
        return value
    text = str(value)
    if text == "":
        return ""
    if field == "json":
        return "***"
    if "@" in text:
        local, _, domain = text.strip().rpartition("@")
        if local and domain:
            return f"{local[0]}***@{domain}"
    return f"{text[0]}***"


def plan_items(operations: Iterable[Any]) -> list[dict[str, Any]]:
    """Return every operation with its key, kind, ids, field names and masked values."""
    items = []
    for op in operations:
        kind = getattr(op.kind, "value", op.kind)
        items.append(
            {
                "key": op.key,
                "kind": str(kind),
                "contact_id": op.contact_id,
                "member_id": op.member_id,
                "table": op.table,
                "ghl_id": op.ghl_id,
                "record_id": op.record_id,
                "fields": sorted(op.fields),
                "values": {name: mask_value(name, value) for name, value in sorted(op.fields.items())},
                "cleared": list(op.cleared),
            }
        )
    return items


def plan_file_path(root: Any, dag_id: str, run_id: str, pair_name: str) -> Any:
    """Return the path of a pair's full plan file: ``<storage>/plans/<dag_id>/<run_id>/<pair>.json``."""
    return root / "plans" / dag_id / run_id / f"{pair_name}.json"


def plan_summary(
    root: Any, dag_id: str, run_id: str, pair_name: str, operations: list[Any]
) -> dict[str, Any]:
    """Write a pair's plan with full values to its plan file, and return the masked plan for the report.

    :return: ``{"operations", "by_kind", "file", "items"}`` where ``items`` comes from :func:`plan_items`.
    """
    path = plan_file_path(root, dag_id, run_id, pair_name)
    full = [
        {
            **dataclasses.asdict(op),
            "kind": str(getattr(op.kind, "value", op.kind)),
            "cleared": list(op.cleared),
        }
        for op in operations
    ]
    body = {
        "dag_id": dag_id,
        "run_id": run_id,
        "pair": pair_name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "operations": full,
    }
    write_atomic(path, json.dumps(body, indent=1, default=str).encode("utf-8"))
    items = plan_items(operations)
    by_kind: dict[str, int] = {}
    for item in items:
        by_kind[item["kind"]] = by_kind.get(item["kind"], 0) + 1
    log.info("Wrote the plan of %d operations for pair %s to %s", len(items), pair_name, path)
    return {
        "operations": len(items),
        "by_kind": dict(sorted(by_kind.items())),
        "file": str(path),
        "items": items,
    }


def prune_plans(root: Any, dag_id: str, *, retention_days: int, now: dt.datetime | None = None) -> int:
    """Remove plan folders of ``dag_id`` whose files are all older than ``retention_days``.

    :return: how many folders were removed.
    """
    folder = root / "plans" / dag_id
    if retention_days <= 0 or not folder.exists():
        return 0
    cutoff = (now or dt.datetime.now(dt.UTC)).timestamp() - retention_days * 86400
    removed = 0
    for run_folder in folder.iterdir():
        times = [_modified_at(child) for child in run_folder.iterdir()] if run_folder.is_dir() else []
        if times and all(value is not None and value < cutoff for value in times):
            run_folder.fs.rm(run_folder.path, recursive=True)
            removed += 1
    return removed


# --------------------------------------------------------------------------------------------
# Great Expectations Data Docs: one site per pair under <report folder>/data_docs/<pair>/, and an
# index page at <report folder>/data_docs/index.html that links them.

DATA_DOCS_FOLDER = "data_docs"
# GX 1.24 writes about 4 MB of images and fonts into each site. Its pages reference none of the
# images and fall back to other fonts without these, so neither folder is copied.
DATA_DOCS_SKIPPED = ("static/images/", "static/fonts/")


def with_data_docs(
    root: Any, dag_id: str, run_id: str, pair_name: str, validate: Callable[[str], Any]
) -> Any:
    """Call ``validate(docs_dir)`` with a local folder for GX Data Docs, then copy them to the report folder.

    GX writes Data Docs to a local folder only, so they are built in a temporary folder first and
    then copied to ``<report folder>/data_docs/<pair>/`` on the storage, without the bundled files
    in ``DATA_DOCS_SKIPPED``. A failed copy is logged and does not fail the caller, because the docs
    only illustrate the expectations in the report.

    :return: what ``validate`` returns.
    """
    with tempfile.TemporaryDirectory(prefix="gx-data-docs-") as local:
        result = validate(local)
        target = report_dir(root, dag_id, run_id) / DATA_DOCS_FOLDER / pair_name
        try:
            copied = _copy_tree(Path(local), target)
        except OSError as error:
            log.warning("Could not copy the Data Docs of pair %s to %s: %s", pair_name, target, error)
        else:
            log.info("Copied %d Data Docs files of pair %s to %s", copied, pair_name, target)
    return result


def _copy_tree(source: Path, target: Any) -> int:
    count = 0
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if path.is_file() and not relative.startswith(DATA_DOCS_SKIPPED):
            write_atomic(target / relative, path.read_bytes())
            count += 1
    return count


def write_data_docs_index(root: Any, dag_id: str, run_id: str, pair_names: Iterable[str]) -> str | None:
    """Write ``data_docs/index.html`` linking each pair's Data Docs site, when any pair built one.

    :return: the index path relative to the report folder, or None when no pair built Data Docs.
    """
    folder = report_dir(root, dag_id, run_id) / DATA_DOCS_FOLDER
    built = [name for name in pair_names if (folder / name / "index.html").exists()]
    if not built:
        return None
    template = _environment().get_template("data_docs_index.html.j2")
    page = template.render(dag_id=dag_id, run_id=run_id, pairs=built)
    write_atomic(folder / "index.html", page.encode("utf-8"))
    return f"{DATA_DOCS_FOLDER}/index.html"
