"""Benchmarks 1 to 3: a first load, a run with no change and a run with 1 % of contacts changed.

The sandbox runs in a subprocess with its real rate limits (GHL 100 requests per 10 s per location,
Memberstack 25 per second) and 30 ms of latency per request. The seed has one location with
``--contacts`` contacts (default 1,000), each with 3 tasks, 3 notes and 2 appointments. The sync
steps (``prepare_pair``, ``load_pair``, ``summarize``) run in this process, as a warm worker runs
them, in this order:

1. the first load with the default mapping. Its figure of merit is the wall time divided by the
   bound ``GHL requests / 10 + Memberstack requests / 25`` seconds (goal 1.15 or less, with 0 HTTP
   429).
2. a run with no change (goal: at most 2 GHL requests and 0 Memberstack writes).
3. a run after 1 % of the contacts changed their first name through the GHL API.

A second first load, into a fresh sandbox, keeps tasks and notes in the member's json (a mapping
variant written by this script) and gives the requests per contact of that mapping. Only its request
counts are reported, so it runs with the limits scaled by ``--variant-scale`` to save time.

Each run also records where its time went: the extract, the desired state, the GX validation, the
diff, the load and the commit.

    .venv/bin/python bench/sync_runs.py [--contacts 1000] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (the bench folder is on sys.path above)

LATENCY_MS = 30
CHANGED_SHARE = 0.01
QUICK_CONTACTS = 60
QUICK_SCALE = 10.0


class StepTimer:
    """Accumulates the wall time of chosen pipeline functions while a run is timed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._originals: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attribute: str, label: str) -> None:
        """Replace ``owner.attribute`` with a wrapper that adds its duration to ``label``."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started

        self._originals.append((owner, attribute, original))
        setattr(owner, attribute, timed)

    def install(self) -> None:
        """Wrap the steps of ``prepare_pair`` and ``load_pair`` that may take time."""
        from ghl_memberstack import diff, extract, load, mapping, quality, snapshot

        self.wrap(extract.Extractor, "run", "extract")
        self.wrap(mapping, "build_desired", "desired")
        self.wrap(quality, "validate_batch", "validate")
        self.wrap(diff, "plan_operations", "diff")
        self.wrap(load.Loader, "run", "load")
        self.wrap(load, "apply_result", "apply_result")
        self.wrap(snapshot.SnapshotStore, "commit", "commit")

    def reset(self) -> None:
        """Forget the durations of earlier runs."""
        self.seconds.clear()

    def uninstall(self) -> None:
        """Put the original functions back."""
        for owner, attribute, original in reversed(self._originals):
            setattr(owner, attribute, original)
        self._originals.clear()


def run_sync_once(
    label: str, sandbox: Any, pairs_file: Path, root: Path, timer: StepTimer, *, full_refresh: bool = False
) -> dict[str, Any]:
    """Run every step of one sync of the bench pair and return its figures."""
    from ghl_memberstack import limits, sync

    options = sync.RunOptions(
        dag_id=common.DAG_ID, run_id=sync.new_run_id(f"bench_{label}"), full_refresh=full_refresh
    )
    # Each run is a new task process in Airflow, so it starts with empty limiter windows.
    limits.reset_limiters()
    timer.reset()
    ghl_before, ms_before = sandbox.stats("ghl"), sandbox.stats("memberstack")
    started = time.perf_counter()
    pairs = sync.resolve_pairs([common.PAIR_NAME], pairs_file=str(pairs_file))
    prepared = sync.prepare_pair(pairs[0], options, root=str(root))
    prepared_at = time.perf_counter()
    load_error = None
    try:
        sync.load_pair(prepared, options, root=str(root))
    except sync.SyncError as error:
        load_error = f"{type(error).__name__}: {error}"
    loaded_at = time.perf_counter()
    outcome = sync.summarize([common.PAIR_NAME], options, root=str(root))
    finished = time.perf_counter()

    ghl = common.request_summary(ghl_before, sandbox.stats("ghl"), memberstack=False)
    memberstack = common.request_summary(ms_before, sandbox.stats("memberstack"), memberstack=True)
    wall = finished - started
    bound = common.bound_seconds(ghl["requests"], memberstack["requests"]) / sandbox.rate_scale
    return {
        "label": label,
        "status": outcome["status"],
        "load_error": load_error,
        "operations": prepared.get("operations", 0),
        "wall_s": round(wall, 2),
        "prepare_s": round(prepared_at - started, 2),
        "load_s": round(loaded_at - prepared_at, 2),
        "summarize_s": round(finished - loaded_at, 2),
        "steps_s": {name: round(value, 2) for name, value in sorted(timer.seconds.items())},
        "ghl": ghl,
        "memberstack": memberstack,
        "bound_s": round(bound, 2),
        "ratio_to_bound": round(wall / bound, 3) if bound else None,
        "http_429": ghl["http_429"] + memberstack["http_429"],
    }


def wait_for_empty_windows(sandbox: Any) -> None:
    """Sleep until requests made so far leave the GHL window, as between scheduled runs."""
    time.sleep(10.5 / sandbox.rate_scale + 0.5)


class BenchSandbox:
    """A running sandbox with the rate scale it was started with."""

    def __init__(self, handle: Any, rate_scale: float) -> None:
        self.handle = handle
        self.rate_scale = rate_scale

    def stats(self, which: str) -> dict[str, Any]:
        """Return one server's request stats."""
        return self.handle.stats(which)


@contextlib.contextmanager
def started_sandbox(seed: dict[str, Any], rate_scale: float, latency_ms: float) -> Iterator[BenchSandbox]:
    """Start the sandbox in a subprocess and point the bench connections and the hooks at it."""
    from sandbox.testing import running_sandbox

    config = {"rate_limits": True, "rate_limit_scale": rate_scale, "latency_ms": latency_ms}
    with running_sandbox(seed=seed, config=config, subprocess=True) as handle:
        with patched_environment(
            {
                **common.connection_environment(handle.ghl_url, handle.memberstack_url),
                "MEMBERSTACK_RATE_LIMIT_PER_S": str(common.MEMBERSTACK_REQUESTS_PER_S * rate_scale),
            }
        ):
            yield BenchSandbox(handle, rate_scale)


@contextlib.contextmanager
def patched_environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block and restore the old values afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def per_contact(run: dict[str, Any], contacts: int) -> dict[str, float]:
    """Return a run's GHL and Memberstack requests per contact of the seed."""
    return {
        "ghl": round(run["ghl"]["requests"] / contacts, 2),
        "memberstack": round(run["memberstack"]["requests"] / contacts, 2),
    }


def default_mapping_runs(contacts: int, rate_scale: float, latency_ms: float, work: Path) -> dict[str, Any]:
    """Run the first load, the no-change run and the 1 % run with the default mapping."""
    seed = common.bench_seed(contacts)
    timer = StepTimer()
    timer.install()
    try:
        with started_sandbox(seed, rate_scale, latency_ms) as sandbox:
            root = work / "storage-default"
            pairs_file = common.write_pairs_file(work, common.DEFAULT_MAPPING)
            say(f"first load of {contacts} contacts ...")
            first = run_sync_once("first_load", sandbox, pairs_file, root, timer)
            say(summary_line(first))
            wait_for_empty_windows(sandbox)
            say("no-change run ...")
            unchanged = run_sync_once("no_change", sandbox, pairs_file, root, timer)
            say(summary_line(unchanged))
            changed = common.contacts_to_change(seed, CHANGED_SHARE)
            common.rename_contacts(sandbox.handle.ghl_url, changed)
            wait_for_empty_windows(sandbox)
            say(f"incremental run after {len(changed)} contacts changed ...")
            incremental = run_sync_once("incremental", sandbox, pairs_file, root, timer)
            incremental["changed_contacts"] = len(changed)
            say(summary_line(incremental))
    finally:
        timer.uninstall()
    first["requests_per_contact"] = per_contact(first, contacts)
    return {"first_load": first, "no_change": unchanged, "incremental": incremental}


def json_mapping_run(contacts: int, rate_scale: float, latency_ms: float, work: Path) -> dict[str, Any]:
    """Run a first load with tasks and notes in the member's json, for its request counts."""
    seed = common.bench_seed(contacts)
    timer = StepTimer()
    timer.install()
    try:
        with started_sandbox(seed, rate_scale, latency_ms) as sandbox:
            mapping_path = common.write_json_mapping(work)
            pairs_file = common.write_pairs_file(work, mapping_path)
            say(f"first load of {contacts} contacts with tasks and notes in the member's json "
                f"(limits x{rate_scale:g}) ...")
            run = run_sync_once("first_load_json", sandbox, pairs_file, work / "storage-json", timer)
            say(summary_line(run))
    finally:
        timer.uninstall()
    run["requests_per_contact"] = per_contact(run, contacts)
    run["rate_scale"] = rate_scale
    return run


def summary_line(run: dict[str, Any]) -> str:
    """Return one line with a run's time, requests and ratio to the bound."""
    steps = ", ".join(f"{name} {value:.1f} s" for name, value in run["steps_s"].items())
    return (
        f"  {run['label']}: {run['status']} in {run['wall_s']:.1f} s (prepare {run['prepare_s']:.1f} s, load "
        f"{run['load_s']:.1f} s; {steps}); GHL {run['ghl']['requests']} requests, Memberstack "
        f"{run['memberstack']['requests']} ({run['memberstack']['writes']} writes); HTTP 429: "
        f"{run['http_429']}; bound {run['bound_s']:.1f} s, ratio {run['ratio_to_bound']}"
    )


def say(text: str) -> None:
    """Print one line of progress at once."""
    print(text, flush=True)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line, where ``--quick`` shrinks the seed and scales the limits up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, help="contacts in the seed (default 1000, 60 with --quick)")
    parser.add_argument(
        "--rate-limit-scale",
        type=float,
        help="multiply both APIs' limits by this (default 1, the real limits; 10 with --quick)",
    )
    parser.add_argument(
        "--variant-scale", type=float, default=10.0, help="limit scale of the json-mapping load (default 10)"
    )
    parser.add_argument("--latency-ms", type=float, default=LATENCY_MS, help="sandbox latency per request in ms")
    parser.add_argument("--quick", action="store_true", help="small seed and scaled limits, for a smoke test")
    parser.add_argument("--skip-json-variant", action="store_true", help="skip the json-mapping first load")
    parser.add_argument("--json", type=Path, help="write the figures here (default artifacts/bench/sync_runs.json)")
    args = parser.parse_args(argv)
    if args.contacts is None:
        args.contacts = QUICK_CONTACTS if args.quick else 1000
    if args.rate_limit_scale is None:
        args.rate_limit_scale = QUICK_SCALE if args.quick else 1.0
    if args.contacts < 100 and not args.quick:
        parser.error("--contacts must be at least 100, so that 1 % of them is at least one contact")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write their figures. Return 1 when a run failed."""
    args = parse_arguments(argv)
    common.prepare_process()
    common.quiet_logs()
    machine = common.machine()
    say(f"machine: {common.machine_line(machine)}")
    started_at = common.now_iso()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as scratch:
        work = Path(scratch)
        with patched_environment({"AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE": str(work / "storage-unused")}):
            runs = default_mapping_runs(args.contacts, args.rate_limit_scale, args.latency_ms, work)
            if not args.skip_json_variant:
                variant_scale = max(args.variant_scale, args.rate_limit_scale)
                runs["first_load_json"] = json_mapping_run(args.contacts, variant_scale, args.latency_ms, work)
    result = {
        "benchmark": "sync_runs",
        "command": common.command_line(),
        "started_at": started_at,
        "machine": machine,
        "settings": {
            "contacts": args.contacts,
            "tasks_notes_appointments_per_contact": [3, 3, 2],
            "latency_ms": args.latency_ms,
            "rate_limit_scale": args.rate_limit_scale,
            "changed_share": CHANGED_SHARE,
            "quick": args.quick,
        },
        "runs": runs,
    }
    path = common.write_result("sync_runs", result, args.json)
    say(f"figures written to {path}")
    failed = [name for name, run in runs.items() if run["status"] != "ok"]
    if failed:
        say(f"FAILED runs: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
