"""Helpers shared by the sync benchmarks: the machine, the sandbox seed, connections and request counts.

The benchmarks run the pipeline against ``python -m sandbox`` on 127.0.0.1. One sync pair, ``bench``,
syncs sandbox location A into sandbox app A through the connections ``bench_ghl`` and
``bench_memberstack``, which are defined through ``AIRFLOW_CONN_*`` environment variables.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS_DIR = REPO_ROOT / "artifacts" / "bench"
DEFAULT_MAPPING = REPO_ROOT / "include" / "mapping.yaml"
PAIR_NAME = "bench"
GHL_CONN_ID = "bench_ghl"
MEMBERSTACK_CONN_ID = "bench_memberstack"
DAG_ID = "ghl_memberstack_sync"

# The limits the bound of a sync is computed from: GHL allows 100 requests per 10 s per location,
# Memberstack 25 requests per second.
GHL_REQUESTS_PER_S = 10.0
MEMBERSTACK_REQUESTS_PER_S = 25.0

_PLAIN_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# Stats routes that only read Memberstack although their method is POST.
MEMBERSTACK_READ_POSTS = frozenset({"POST /v2/data-tables/{table}/records/query"})


def machine() -> dict[str, Any]:
    """Describe the machine: usable CPUs (as ``nproc`` counts them), CPU model, RAM and Python."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "ram_gib": round(_ram_bytes() / 2**30, 1),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def machine_line(info: Mapping[str, Any]) -> str:
    """Return the machine description as one line of text."""
    return (
        f"{info['nproc']} CPUs (nproc), {info['cpu_model']}, {info['ram_gib']} GiB RAM, "
        f"Python {info['python']}, load average {info['load_average_1m']} at the start"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def now_iso() -> str:
    """Return the current UTC time, to the second, in ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def bench_seed(contacts: int, *, tasks: int = 3, notes: int = 3, appointments: int = 2) -> dict[str, Any]:
    """Generate a seed with one location (demo location A) of ``contacts`` contacts and one app."""
    from sandbox import seedgen

    return seedgen.generate_seed(
        (contacts,), tasks=tasks, notes=notes, appointments=appointments, random_seed=7
    )


def contacts_to_change(seed: Mapping[str, Any], share: float) -> list[str]:
    """Pick ``share`` of the seed's contacts to change: every n-th by id among unique, plain emails.

    Both the pipeline's and the baseline's incremental runs change these contacts, so they see the
    same changes.
    """
    contacts = seed["ghl"]["locations"][0]["contacts"]
    emails = Counter((contact.get("email") or "").strip().lower() for contact in contacts)
    eligible = sorted(
        contact["id"]
        for contact in contacts
        if _PLAIN_EMAIL.match((contact.get("email") or "").strip().lower())
        and emails[(contact.get("email") or "").strip().lower()] == 1
    )
    step = max(1, round(1 / share))
    return eligible[::step][: max(1, round(len(contacts) * share))]


def rename_contacts(ghl_url: str, contact_ids: list[str]) -> None:
    """Give each contact a new first name through the GHL API (the seed's Private Integration Token)."""
    from sandbox import seedgen

    headers = {"Authorization": f"Bearer {seedgen.DEMO_LOCATION_A_PIT}", "Version": "2021-07-28"}
    with httpx.Client(base_url=ghl_url, headers=headers, timeout=30.0, trust_env=False) as client:
        for number, contact_id in enumerate(contact_ids):
            response = client.put(f"/contacts/{contact_id}", json={"firstName": f"Renamed{number}"})
            response.raise_for_status()


def prepare_process() -> None:
    """Give this process an Airflow home of its own and a Fernet key, and drop inherited connections."""
    for name in [name for name in os.environ if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
        del os.environ[name]
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-airflow-home-")
    os.environ.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    if not os.environ.get("AIRFLOW__CORE__FERNET_KEY"):
        from cryptography.fernet import Fernet

        os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()


def quiet_logs() -> None:
    """Keep the pipeline's and the sandbox's info logs off the benchmark's output, but not their warnings."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("ghl_memberstack", "sandbox", "airflow.task.hooks"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connection_environment(ghl_url: str, memberstack_url: str) -> dict[str, str]:
    """Return ``AIRFLOW_CONN_*`` variables of the bench pair, aimed at a running sandbox."""
    from sandbox import seedgen

    connections = {
        GHL_CONN_ID: {
            "conn_type": "gohighlevel",
            "host": ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
        },
        MEMBERSTACK_CONN_ID: {
            "conn_type": "memberstack",
            "host": memberstack_url,
            "password": seedgen.DEMO_MEMBERSTACK_KEY_A,
        },
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(body) for conn_id, body in connections.items()}


def write_pairs_file(folder: Path, mapping_path: Path) -> Path:
    """Write a pairs file with the single pair ``bench`` under ``mapping_path`` and return its path."""
    path = folder / "sync_pairs.bench.yaml"
    path.write_text(
        "pairs:\n"
        f"  - name: {PAIR_NAME}\n"
        f"    gohighlevel_conn_id: {GHL_CONN_ID}\n"
        f"    memberstack_conn_id: {MEMBERSTACK_CONN_ID}\n"
        f"    mapping: {mapping_path}\n",
        encoding="utf-8",
    )
    return path


def write_json_mapping(folder: Path) -> Path:
    """Write a copy of the default mapping that keeps tasks and notes in the member's json."""
    text = DEFAULT_MAPPING.read_text(encoding="utf-8")
    for entity in ("tasks", "notes"):
        old = f"  {entity}: data_table"
        if old not in text:
            raise RuntimeError(f"{DEFAULT_MAPPING} has no line {old.strip()!r} to switch to json")
        text = text.replace(old, f"  {entity}: json")
    path = folder / "mapping.json-records.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def route_counts(stats: Mapping[str, Any]) -> Counter[tuple[str, str]]:
    """Flatten a sandbox stats reply into counts per (route, status)."""
    counts: Counter[tuple[str, str]] = Counter()
    for route, statuses in (stats.get("by_route") or {}).items():
        for status, count in statuses.items():
            counts[(route, status)] += int(count)
    return counts


def request_summary(before: Mapping[str, Any], after: Mapping[str, Any], *, memberstack: bool) -> dict[str, Any]:
    """Summarize the requests one server received between two stats replies.

    ``writes`` counts requests that can change data: every method but GET, except record queries.
    """
    delta = route_counts(after) - route_counts(before)
    total = sum(delta.values())
    throttled = sum(count for (_, status), count in delta.items() if status == "429")
    writes = 0
    by_route: Counter[str] = Counter()
    for (route, _), count in delta.items():
        by_route[route] += count
        if memberstack and not route.startswith("GET ") and route not in MEMBERSTACK_READ_POSTS:
            writes += count
    summary: dict[str, Any] = {"requests": total, "http_429": throttled, "by_route": dict(sorted(by_route.items()))}
    if memberstack:
        summary["writes"] = writes
    return summary


def bound_seconds(ghl_requests: int, memberstack_requests: int) -> float:
    """Return the time the rate limits need for these requests when nothing overlaps, in seconds."""
    return ghl_requests / GHL_REQUESTS_PER_S + memberstack_requests / MEMBERSTACK_REQUESTS_PER_S


def write_result(name: str, data: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write one benchmark's figures as JSON under ``artifacts/bench`` (or to ``path``)."""
    target = path or RESULTS_DIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return target


def command_line() -> str:
    """Return the command that started this process, with paths relative to the repository."""
    prefix = f"{REPO_ROOT}/"
    words = [".venv/bin/python", str(Path(sys.argv[0]).resolve()), *sys.argv[1:]]
    return " ".join(word.removeprefix(prefix) for word in words)
