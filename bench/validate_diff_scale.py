"""Benchmark 4: GX validation plus the diff over parquet snapshots at 10k, 100k and 1M contacts.

For each size a generator subprocess writes, with the pipeline's own writers, what a full-refresh
run reads back: the committed snapshot (``SnapshotStore.commit``), the desired state of the plan
and the extracted contacts, all as parquet. Each contact has 3 tasks and 3 notes, and 1 % of the
members and 1 % of the tasks differ from the snapshot. A fresh measuring subprocess then imports the
pipeline, and times reading the parquet files (pyarrow-backed strings), ``quality.validate_batch``
and ``diff.plan_operations``. It reports its peak resident memory (``ru_maxrss``), which includes
the interpreter and the imports. Each size is measured ``--repeats`` times and the fastest run is
kept. The generation is not timed.

The goal for 1M contacts is less than 15 s and less than 3 GiB on the 2-core benchmark machine.
Separately, ``models.parse_page`` parses raw GHL contacts, tasks and notes from the seed generator to
give the per-record pydantic throughput.

    .venv/bin/python bench/validate_diff_scale.py [--sizes 10000,100000,1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402  (the bench folder is on sys.path above)

PAIR_NAME = "scale"
CHANGED_SHARE = 0.01
GOAL_CONTACTS = 1_000_000
GOAL_SECONDS = 15.0
GOAL_GIB = 3.0
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_REPEATS = 3
QUICK_SIZES = (2_000, 20_000)
PARSE_CONTACTS = 20_000
QUICK_PARSE_CONTACTS = 2_000


def contacts_frame(contact_ids: Any) -> Any:
    """Return an extracted contacts frame (the ``models`` columns and dtypes) for the given ids."""
    import numpy as np
    import pandas as pd

    from ghl_memberstack import models

    count = len(contact_ids)
    ids = pd.array(list(contact_ids), dtype="string")
    constant = {
        "location_id": "Loc1",
        "first_name": "Ada",
        "last_name": "Byron",
        "phone": "+15550100",
        "country": "GB",
        "tags": '["member","vip"]',
        "custom_fields": '{"cf1":"Gold"}',
        "date_added": "2024-03-01T09:15:00.000Z",
        "date_updated": "2024-03-05T10:00:00.000Z",
    }
    data: dict[str, Any] = {"id": ids, "email": pd.array([f"{cid}@example.org" for cid in ids], dtype="string")}
    for column, dtype in models.ENTITY_COLUMNS["contacts"].items():
        if column in data:
            continue
        if column.endswith("_ms"):
            data[column] = pd.array(np.arange(count), dtype="Int64")
        else:
            data[column] = pd.array([constant[column]] * count, dtype=dtype)
    return pd.DataFrame(data)[list(models.ENTITY_COLUMNS["contacts"])]


def generate(folder: Path, contacts: int) -> None:
    """Write the snapshot, the plan's desired state and the extracted contacts of one size."""
    import diff_scale

    from ghl_memberstack import extract
    from ghl_memberstack.snapshot import Manifest, SnapshotStore
    from ghl_memberstack.storage import as_storage_path

    desired = diff_scale.desired_state(contacts)
    applied = diff_scale.applied_state(desired)
    store = SnapshotStore(as_storage_path(folder / "storage"), PAIR_NAME)
    store.commit(applied, Manifest(watermark_ms=0))
    del applied
    changed = diff_scale.changed_copy(desired, CHANGED_SHARE)
    plan = as_storage_path(folder / "plan")
    extract.write_parquet(plan / "members.parquet", changed.members)
    for table, frame in changed.records.items():
        extract.write_parquet(plan / f"records.{table}.parquet", frame)
    extract.write_parquet(plan / "contacts.parquet", contacts_frame(changed.members.index))


def measure(folder: Path) -> dict[str, Any]:
    """Read the parquet files, validate and diff them, and return the times and the peak memory.

    Each step reports its wall time and its CPU time (user plus system, all threads). On a shared
    machine the CPU time changes less from run to run than the wall time.
    """
    clock = StepClock()
    import great_expectations  # noqa: F401  (imported here so that its import time is reported apart)

    import diff_scale
    from ghl_memberstack import diff, extract, quality
    from ghl_memberstack.snapshot import SnapshotStore
    from ghl_memberstack.state import DesiredState
    from ghl_memberstack.storage import as_storage_path

    clock.lap("import")
    rss_after_imports = _peak_rss_gib()

    store = SnapshotStore(as_storage_path(folder / "storage"), PAIR_NAME)
    applied = store.applied()
    plan = as_storage_path(folder / "plan")
    members = extract.read_parquet(plan / "members.parquet")
    records = {
        table: extract.read_parquet(plan / f"records.{table}.parquet")
        for table in ("ghl_tasks", "ghl_notes", "ghl_appointments")
    }
    contacts = extract.read_parquet(plan / "contacts.parquet")
    desired = DesiredState(members=members, records=records, complete=True)
    clock.lap("read")

    result = quality.validate_batch(contacts, desired, complete=True, snapshot_size=len(applied.members))
    clock.lap("validate")
    operations = diff.plan_operations(
        desired, applied, diff_scale.MAPPING, observed_contact_ids=contacts["id"].astype(str).tolist()
    )
    clock.lap("diff")
    frames = {
        "applied": [applied.members, *applied.records.values()],
        "desired": [desired.members, *desired.records.values()],
        "contacts": [contacts],
    }
    figures = {
        "data_gib": {
            name: round(sum(frame.memory_usage(deep=True).sum() for frame in group) / 2**30, 3)
            for name, group in frames.items()
        },
        "contacts": len(contacts),
        "records": sum(len(frame) for frame in records.values()),
        "string_dtype": f"{members['email'].dtype} ({members['email'].dtype.storage})",
        "operations": len(operations),
        "expectations_passed": result.success,
        "peak_rss_gib": round(_peak_rss_gib(), 3),
        "rss_after_imports_gib": round(rss_after_imports, 3),
    }
    for step in ("import", "read", "validate", "diff"):
        figures[f"{step}_s"] = round(clock.wall[step], 2)
        figures[f"{step}_cpu_s"] = round(clock.cpu[step], 2)
    figures["total_s"] = round(sum(clock.wall[step] for step in ("read", "validate", "diff")), 2)
    figures["total_cpu_s"] = round(sum(clock.cpu[step] for step in ("read", "validate", "diff")), 2)
    return figures


class StepClock:
    """Wall and CPU seconds of consecutive steps of this process."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def lap(self, step: str) -> None:
        """Record the time since the previous lap under ``step``."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[step] = wall - self._wall
        self.cpu[step] = cpu - self._cpu
        self._wall, self._cpu = wall, cpu


def _peak_rss_gib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_child(mode: str, folder: Path, contacts: int) -> dict[str, Any]:
    """Run ``generate`` or ``measure`` in a fresh Python process and return what it printed."""
    completed = subprocess.run(
        [sys.executable, __file__, f"--child-{mode}", str(folder), "--contacts", str(contacts)],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the {mode} subprocess for {contacts} contacts failed:\n{completed.stderr[-3000:]}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def measure_size(contacts: int, repeats: int) -> dict[str, Any]:
    """Generate one size once, measure it ``repeats`` times in fresh processes, and keep the fastest.

    Other jobs on the machine only ever add time, so the fastest run is the closest to the cost of
    the work itself. The result also lists every run's total, and the highest peak RSS of all runs.
    """
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        folder = Path(scratch)
        generated = time.perf_counter()
        run_child("generate", folder, contacts)
        generation_s = time.perf_counter() - generated
        runs = [run_child("measure", folder, contacts) for _ in range(repeats)]
    fastest = dict(min(runs, key=lambda run: run["total_s"]))
    fastest["totals_s"] = [run["total_s"] for run in runs]
    fastest["totals_cpu_s"] = [run["total_cpu_s"] for run in runs]
    fastest["peak_rss_gib"] = max(run["peak_rss_gib"] for run in runs)
    fastest["generation_s_untimed"] = round(generation_s, 1)
    return fastest


def parse_throughput(contacts: int) -> dict[str, Any]:
    """Time ``models.parse_page`` on raw seed records and return records per second per entity."""
    from ghl_memberstack import models

    location = common.bench_seed(contacts, tasks=3, notes=3, appointments=0)["ghl"]["locations"][0]
    figures = {}
    for entity in ("contacts", "tasks", "notes"):
        raw = location[entity]
        started = time.perf_counter()
        for start in range(0, len(raw), 500):
            models.parse_page(entity, raw[start : start + 500])
        elapsed = time.perf_counter() - started
        figures[entity] = {"records": len(raw), "seconds": round(elapsed, 3), "per_s": round(len(raw) / elapsed)}
    return figures


def growth(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return, for each step between sizes, how time and memory grew against the contact count."""
    steps = []
    for smaller, larger in zip(sizes, sizes[1:], strict=False):
        factor = larger["contacts"] / smaller["contacts"]
        steps.append(
            {
                "from": smaller["contacts"],
                "to": larger["contacts"],
                "contacts_factor": round(factor, 1),
                "time_factor": round(larger["total_s"] / smaller["total_s"], 1) if smaller["total_s"] else None,
                "rss_factor": round(larger["peak_rss_gib"] / smaller["peak_rss_gib"], 1),
            }
        )
    return steps


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line. The ``--child-*`` options are for the script's own subprocesses."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", help="comma-separated contact counts (default 10000,100000,1000000)")
    parser.add_argument("--quick", action="store_true", help="2,000 and 20,000 contacts, for a smoke test")
    parser.add_argument(
        "--repeats", type=int, help=f"measuring runs per size; the fastest is kept (default {DEFAULT_REPEATS}, 1 with --quick)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here (default artifacts/bench/validate_diff_scale.json)")
    parser.add_argument("--contacts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-measure", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure every size in fresh processes, print the figures and write them."""
    args = parse_arguments(argv)
    if args.child_generate:
        common.quiet_logs()
        generate(args.child_generate, args.contacts)
        return 0
    if args.child_measure:
        common.quiet_logs()
        print(json.dumps(measure(args.child_measure)))
        return 0

    common.quiet_logs()
    if args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
    else:
        sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    machine = common.machine()
    print(f"machine: {common.machine_line(machine)}", flush=True)
    started_at = common.now_iso()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else DEFAULT_REPEATS)
    measured = []
    for contacts in sizes:
        figures = measure_size(contacts, repeats)
        measured.append(figures)
        print(
            f"{contacts:>9,} contacts, {figures['records']:>9,} records: read {figures['read_s']:.2f} s, "
            f"validate {figures['validate_s']:.2f} s, diff {figures['diff_s']:.2f} s, total "
            f"{figures['total_s']:.2f} s (CPU {figures['total_cpu_s']:.2f} s; all runs {figures['totals_s']}); "
            f"{figures['operations']:,} operations; peak RSS "
            f"{figures['peak_rss_gib']:.2f} GiB ({figures['rss_after_imports_gib']:.2f} GiB after imports)",
            flush=True,
        )
    parse = parse_throughput(QUICK_PARSE_CONTACTS if args.quick else PARSE_CONTACTS)
    for entity, figures in parse.items():
        print(f"pydantic parse of {entity}: {figures['per_s']:,} records/s ({figures['records']:,} records)")

    largest = next((size for size in measured if size["contacts"] == GOAL_CONTACTS), None)
    goal_met = None
    if largest is not None:
        goal_met = largest["total_s"] < GOAL_SECONDS and largest["peak_rss_gib"] < GOAL_GIB
    result = {
        "benchmark": "validate_diff_scale",
        "command": common.command_line(),
        "started_at": started_at,
        "machine": machine,
        "settings": {
            "sizes": sizes,
            "repeats": repeats,
            "tasks_per_contact": 3,
            "notes_per_contact": 3,
            "changed_share": CHANGED_SHARE,
        },
        "sizes": measured,
        "growth": growth(measured),
        "parse_throughput": parse,
        "goal_1m": {"seconds": GOAL_SECONDS, "gib": GOAL_GIB, "met": goal_met},
    }
    if goal_met is not None:
        print(f"goal for 1M contacts (< {GOAL_SECONDS:g} s and < {GOAL_GIB:g} GiB): {'met' if goal_met else 'missed'}")
    path = common.write_result("validate_diff_scale", result, args.json)
    print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
