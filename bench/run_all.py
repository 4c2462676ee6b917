"""``make bench``: run the five benchmarks one after the other, then write the benchmark page.

1-3. ``sync_runs.py``: first load, no-change run and 1 % run on the sandbox with its real limits;
4.   ``validate_diff_scale.py``: GX validation plus the diff at 10k, 100k and 1M contacts;
5.   ``side_by_side.py``: the same sync runs next to a straightforward script.

The full run takes about 50 minutes on 2 CPUs, mostly waiting on the emulated rate limits. Figures go
to ``artifacts/bench/*.json`` and the page to ``docs/benchmarks.md``. With ``--quick`` the seeds are
small and the limits scaled up, so the whole run takes a few minutes. Its figures then go to
``artifacts/bench/quick/`` and its page to ``artifacts/bench/quick/benchmarks.md``, so that a smoke
run never replaces the published page.

    .venv/bin/python bench/run_all.py [--quick] [--only sync_runs,validate_diff_scale,side_by_side]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (the bench folder is on sys.path above)
import write_page  # noqa: E402

BENCHMARKS = ("sync_runs", "validate_diff_scale", "side_by_side")


def run_benchmark(name: str, results: Path, quick: bool) -> int:
    """Run one benchmark script with its output on this terminal and return its exit code."""
    command = [sys.executable, str(common.REPO_ROOT / "bench" / f"{name}.py"), "--json", str(results / f"{name}.json")]
    if quick:
        command.append("--quick")
    if name == "side_by_side":
        command += ["--sync-runs-json", str(results / "sync_runs.json")]
    print(f"== {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    code = subprocess.run(command, cwd=common.REPO_ROOT, check=False).returncode
    print(f"== {name} finished in {time.monotonic() - started:.0f} s with exit code {code}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and write the page. Return 1 when a benchmark script failed.

    A missed goal is not a failure: the page reports it next to the figure.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and scaled limits, for a smoke run")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--page", type=Path, help="where to write the page (default docs/benchmarks.md)")
    args = parser.parse_args(argv)
    selected = BENCHMARKS if not args.only else tuple(name.strip() for name in args.only.split(","))
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    results = common.RESULTS_DIR / "quick" if args.quick else common.RESULTS_DIR
    page = args.page or (results / "benchmarks.md" if args.quick else common.REPO_ROOT / "docs" / "benchmarks.md")
    results.mkdir(parents=True, exist_ok=True)

    failed = [name for name in selected if run_benchmark(name, results, args.quick) != 0]
    write_page.write(results, page)
    print(f"== page written to {page}", flush=True)
    if failed:
        print(f"== benchmark scripts that failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
