"""Benchmark 5: the pipeline next to a straightforward script, on the first load and a 1 % run.

Every contestant starts from a fresh sandbox with the seed and settings of ``sync_runs.py``:
1,000 contacts with 3 tasks, 3 notes and 2 appointments each, real limits and 30 ms latency. It
makes the first load. Then the same 1 % of contacts change their first name, and it syncs again:

- baseline: ``baseline_sync.py``, the official GHL SDK plus sequential, paced Memberstack calls,
  re-syncing everything on every run;
- pipeline end to end: ``airflow dags test ghl_memberstack_sync`` with the run conf of ``make sync``,
  in a fresh Airflow home (its ``airflow db migrate`` is not timed);
- pipeline step functions in one warm process: the figures of ``sync_runs.py``, read from
  ``--sync-runs-json`` (default ``artifacts/bench/sync_runs.json``) when they were measured with the
  same settings, else measured here.

Airflow's start-up cost is given separately: the wall time of ``airflow dags list`` (CLI start and
DAG parse) and the difference between the end-to-end and the warm runs.

    .venv/bin/python bench/side_by_side.py [--contacts 1000] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline_sync  # noqa: E402  (the bench folder is on sys.path above)
import common  # noqa: E402
import sync_runs  # noqa: E402

FIRST_LOAD_GOAL = 1.5
INCREMENTAL_GOAL = 50.0
SYNC_CONF = {"dry_run": False, "full_refresh": False, "force": False, "sync_pairs": []}
AIRFLOW_COMMAND_TIMEOUT_S = 3600
# Airflow's log lines start with an ISO 8601 UTC time such as 2026-01-01T10:00:00.123456Z.
LOG_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")


def run_baseline(contacts: int, rate_scale: float, latency_ms: float) -> dict[str, Any]:
    """Run the baseline script twice on a fresh sandbox: the first load, then after 1 % changed."""
    from sandbox import seedgen

    seed = common.bench_seed(contacts)
    runs = {}
    with sync_runs.started_sandbox(seed, rate_scale, latency_ms) as sandbox:
        handle = sandbox.handle

        def one_run(label: str) -> dict[str, Any]:
            before = {which: sandbox.stats(which) for which in ("ghl", "memberstack")}
            stats = baseline_sync.run(
                handle.ghl_url,
                handle.memberstack_url,
                seedgen.DEMO_LOCATION_A_ID,
                seedgen.DEMO_LOCATION_A_PIT,
                seedgen.DEMO_MEMBERSTACK_KEY_A,
                rate_scale=rate_scale,
            )
            return _run_figures(label, sandbox, before, stats.seconds, extra=dataclasses.asdict(stats))

        sync_runs.say("baseline: first load ...")
        runs["first_load"] = one_run("first_load")
        sync_runs.say(_line("baseline", runs["first_load"]))
        changed = common.contacts_to_change(seed, sync_runs.CHANGED_SHARE)
        common.rename_contacts(handle.ghl_url, changed)
        sync_runs.wait_for_empty_windows(sandbox)
        sync_runs.say(f"baseline: run after {len(changed)} contacts changed ...")
        runs["incremental"] = one_run("incremental")
        sync_runs.say(_line("baseline", runs["incremental"]))
    return runs


def _run_figures(
    label: str, sandbox: Any, before: dict[str, Any], seconds: float, *, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    ghl = common.request_summary(before["ghl"], sandbox.stats("ghl"), memberstack=False)
    memberstack = common.request_summary(before["memberstack"], sandbox.stats("memberstack"), memberstack=True)
    figures = {
        "label": label,
        "wall_s": round(seconds, 2),
        "ghl": ghl,
        "memberstack": memberstack,
        "http_429": ghl["http_429"] + memberstack["http_429"],
    }
    if extra:
        figures["counts"] = {key: value for key, value in extra.items() if key != "seconds"}
    return figures


def _line(who: str, run: dict[str, Any]) -> str:
    return (
        f"  {who} {run['label']}: {run['wall_s']:.1f} s; GHL {run['ghl']['requests']} requests, Memberstack "
        f"{run['memberstack']['requests']} ({run['memberstack']['writes']} writes); HTTP 429: {run['http_429']}"
    )


def airflow_environment(work: Path, handle: Any, rate_scale: float) -> dict[str, str]:
    """Return the environment of the Airflow commands: a fresh home, the bench pair and the sandbox."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    env.update(common.connection_environment(handle.ghl_url, handle.memberstack_url))
    env.update(
        AIRFLOW_HOME=str(work / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(common.REPO_ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(common.REPO_ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_VAR_GHL_MEMBERSTACK_SYNC_PAIRS=str(common.write_pairs_file(work, common.DEFAULT_MAPPING)),
        AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE=str(work / "storage"),
        MEMBERSTACK_RATE_LIMIT_PER_S=str(common.MEMBERSTACK_REQUESTS_PER_S * rate_scale),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def run_command(command: list[str], env: dict[str, str], log_path: Path) -> float:
    """Run a command with its output in ``log_path`` and return its wall time, or raise RuntimeError."""
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        completed = subprocess.run(
            command,
            env=env,
            cwd=common.REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout=AIRFLOW_COMMAND_TIMEOUT_S,
            check=False,
        )
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command[:4])} failed with exit code {completed.returncode}:\n{tail}")
    return elapsed


def seconds_to_first_task(log_path: Path, started_epoch: float) -> float | None:
    """Return the seconds from a command's start to the first "Task started" line of its log.

    That is Airflow's start-up before the first task runs: the CLI, the DAG parse and, under
    ``airflow dags test``, its in-process API server. None when the log has no such line.
    """
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = LOG_TIMESTAMP.match(line)
        if match and "Task started" in line:
            moment = dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=dt.UTC)
            return round(moment.timestamp() - started_epoch, 2)
    return None


def run_end_to_end(contacts: int, rate_scale: float, latency_ms: float, work: Path) -> dict[str, Any]:
    """Run the DAG with ``airflow dags test`` for the first load and the 1 % run on a fresh sandbox.

    The commands' output goes to ``artifacts/bench/logs/``.
    """
    seed = common.bench_seed(contacts)
    logs = common.RESULTS_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    airflow = str(Path(sys.executable).parent / "airflow")
    dags_test = [airflow, "dags", "test", common.DAG_ID, "--conf", json.dumps(SYNC_CONF)]
    figures: dict[str, Any] = {}
    with sync_runs.started_sandbox(seed, rate_scale, latency_ms) as sandbox:
        env = airflow_environment(work, sandbox.handle, rate_scale)
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True)
        figures["db_migrate_s_untimed"] = round(
            run_command([airflow, "db", "migrate"], env, logs / "db-migrate.log"), 1
        )
        settings = [sys.executable, str(common.REPO_ROOT / "scripts" / "load_airflow_settings.py")]
        run_command([*settings, str(common.REPO_ROOT / "airflow_settings.yaml")], env, logs / "load-airflow-settings.log")
        figures["dags_list_s"] = round(run_command([airflow, "dags", "list"], env, logs / "dags-list.log"), 2)

        for label in ("first_load", "incremental"):
            if label == "incremental":
                changed = common.contacts_to_change(seed, sync_runs.CHANGED_SHARE)
                common.rename_contacts(sandbox.handle.ghl_url, changed)
                sync_runs.wait_for_empty_windows(sandbox)
            sync_runs.say(f"pipeline end to end: {label} (airflow dags test) ...")
            before = {which: sandbox.stats(which) for which in ("ghl", "memberstack")}
            log_path = logs / f"dags-test-{label}.log"
            started_epoch = time.time()
            seconds = run_command(dags_test, env, log_path)
            figures[label] = _run_figures(label, sandbox, before, seconds)
            figures[label]["seconds_to_first_task"] = seconds_to_first_task(log_path, started_epoch)
            sync_runs.say(_line("pipeline end to end", figures[label]))
    figures["command"] = f"airflow dags test {common.DAG_ID} --conf '{json.dumps(SYNC_CONF)}'"
    return figures


def warm_runs(settings: dict[str, Any], work: Path, stored_path: Path) -> dict[str, Any]:
    """Return the warm step-function runs of ``sync_runs.py`` for these settings, measuring them if needed."""
    stored = json.loads(stored_path.read_text(encoding="utf-8")) if stored_path.is_file() else None
    if stored is not None and all(stored["settings"].get(key) == value for key, value in settings.items()):
        sync_runs.say(f"pipeline step functions: using {stored_path}")
        return {"source": str(stored_path), "command": stored["command"], **stored["runs"]}
    sync_runs.say(f"pipeline step functions: {stored_path} has no figures of these settings, measuring ...")
    runs = sync_runs.default_mapping_runs(
        settings["contacts"], settings["rate_limit_scale"], settings["latency_ms"], work
    )
    return {"source": "measured by side_by_side.py", "command": common.command_line(), **runs}


def ratios(baseline: dict[str, Any], ours: dict[str, Any]) -> dict[str, float | None]:
    """Return the baseline's time divided by the pipeline's, for the first load and the 1 % run."""
    return {
        label: round(baseline[label]["wall_s"] / ours[label]["wall_s"], 2) if ours[label]["wall_s"] else None
        for label in ("first_load", "incremental")
    }


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line, with the same sizes and limits as ``sync_runs.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, help="contacts in the seed (default 1000, 60 with --quick)")
    parser.add_argument("--rate-limit-scale", type=float, help="limit scale (default 1; 10 with --quick)")
    parser.add_argument("--latency-ms", type=float, default=sync_runs.LATENCY_MS, help="sandbox latency in ms")
    parser.add_argument("--quick", action="store_true", help="small seed and scaled limits, for a smoke test")
    parser.add_argument("--json", type=Path, help="write the figures here (default artifacts/bench/side_by_side.json)")
    parser.add_argument(
        "--sync-runs-json",
        type=Path,
        default=common.RESULTS_DIR / "sync_runs.json",
        help="figures of sync_runs.py to reuse for the warm runs (default artifacts/bench/sync_runs.json)",
    )
    args = parser.parse_args(argv)
    if args.contacts is None:
        args.contacts = sync_runs.QUICK_CONTACTS if args.quick else 1000
    if args.rate_limit_scale is None:
        args.rate_limit_scale = sync_runs.QUICK_SCALE if args.quick else 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the three contestants, print the ratios and write the figures."""
    args = parse_arguments(argv)
    common.prepare_process()
    common.quiet_logs()
    machine = common.machine()
    sync_runs.say(f"machine: {common.machine_line(machine)}")
    started_at = common.now_iso()

    settings = {
        "contacts": args.contacts,
        "latency_ms": args.latency_ms,
        "rate_limit_scale": args.rate_limit_scale,
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory(prefix="bench-side-") as scratch:
        work = Path(scratch)
        (work / "e2e").mkdir()
        (work / "warm").mkdir()
        storage = {"AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE": str(work / "storage-unused")}
        with sync_runs.patched_environment(storage):
            baseline = run_baseline(args.contacts, args.rate_limit_scale, args.latency_ms)
            end_to_end = run_end_to_end(args.contacts, args.rate_limit_scale, args.latency_ms, work / "e2e")
            warm = warm_runs(settings, work / "warm", args.sync_runs_json)

    overhead = {
        label: round(end_to_end[label]["wall_s"] - warm[label]["wall_s"], 2) for label in ("first_load", "incremental")
    }
    result = {
        "benchmark": "side_by_side",
        "command": common.command_line(),
        "started_at": started_at,
        "machine": machine,
        "settings": settings,
        "baseline": baseline,
        "end_to_end": end_to_end,
        "warm": warm,
        "airflow_overhead_s": overhead,
        "ratios": {"end_to_end": ratios(baseline, end_to_end), "warm": ratios(baseline, warm)},
        "goals": {"first_load": FIRST_LOAD_GOAL, "incremental": INCREMENTAL_GOAL},
    }

    for kind, values in result["ratios"].items():
        sync_runs.say(f"time ratio baseline / pipeline ({kind}): first load {values['first_load']}x, "
                      f"1 % run {values['incremental']}x")
    sync_runs.say(f"Airflow start-up: airflow dags list {end_to_end['dags_list_s']} s; end to end minus warm "
                  f"{overhead['first_load']} s (first load), {overhead['incremental']} s (1 % run)")
    path = common.write_result("side_by_side", result, args.json)
    sync_runs.say(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
