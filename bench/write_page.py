"""Write the benchmark page (``docs/benchmarks.md``) from the figures the benchmark scripts wrote.

Each section names the command, the machine and the date of its figures. The goals table compares
every figure with its goal. For a missed goal, the page states what bounds the figure, computed
from the same figures.

    .venv/bin/python bench/write_page.py [--results artifacts/bench] [--page docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (the bench folder is on sys.path above)

FIRST_LOAD_RATIO_GOAL = 1.15
NO_CHANGE_GHL_GOAL = 2
SCALE_SECONDS_GOAL = 15.0
SCALE_GIB_GOAL = 3.0
SIDE_FIRST_LOAD_GOAL = 1.5
SIDE_INCREMENTAL_GOAL = 50.0


def load(results: Path, name: str) -> dict[str, Any] | None:
    """Read one benchmark's figures, or None when that benchmark has not run."""
    path = results / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def provenance(data: dict[str, Any]) -> str:
    """Return the lines that name a benchmark's command, machine and date."""
    return (
        f"Command: `{relative(data['command'])}`  \n"
        f"Machine: {common.machine_line(data['machine'])}  \n"
        f"Date: {data['started_at']}\n"
    )


def table(header: list[str], rows: list[list[Any]]) -> str:
    """Return a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def verdict(met: bool | None) -> str:
    """Return the word for a goal's outcome."""
    if met is None:
        return "not measured"
    return "met" if met else "**missed**"


RUN_NAMES = {"first_load": "first load", "no_change": "no change", "incremental": "1 % run"}


def relative(text: str) -> str:
    """Return ``text`` with the repository's absolute path removed from the paths in it."""
    return text.replace(f"{common.REPO_ROOT}/", "")


def rates(data: dict[str, Any]) -> tuple[float, float]:
    """Return the GHL and Memberstack requests per second that a benchmark's limits allowed."""
    scale = data["settings"]["rate_limit_scale"]
    return common.GHL_REQUESTS_PER_S * scale, common.MEMBERSTACK_REQUESTS_PER_S * scale


def steps_text(run: dict[str, Any]) -> str:
    """Return where a sync run's time went, step by step."""
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in run["steps_s"].items())


class Page:
    """The page's sections, built from the figures of the three benchmark scripts."""

    def __init__(self, results: Path) -> None:
        self.sync = load(results, "sync_runs")
        self.scale = load(results, "validate_diff_scale")
        self.side = load(results, "side_by_side")
        self.goals: list[list[Any]] = []
        self.bounds: list[str] = []
        self._evaluate()

    def _evaluate(self) -> None:
        """Compare each figure with its goal, and explain the bound of each missed goal."""
        if self.sync is not None:
            self._sync_goals(self.sync["runs"]["first_load"], self.sync["runs"]["no_change"])
        if self.scale is not None:
            self._scale_goals(self.scale["sizes"])
        if self.side is not None:
            self._side_goals(self.side)

    def goal(self, name: str, target: str, figure: str, met: bool | None) -> None:
        """Add one row to the goals table."""
        self.goals.append([name, target, figure, verdict(met)])

    def render(self) -> str:
        """Return the whole page."""
        sections = [self.sync_sections(), self.scale_section(), self.side_section()]
        return "\n".join([self.intro(), self.goals_section(), *sections, self.bounds_section()])

    def intro(self) -> str:
        return (
            "# Benchmarks\n\n"
            "Figures of `make bench` (`bench/run_all.py`), which runs the five benchmarks below against "
            "the bundled sandbox on 127.0.0.1 and writes this page. The sandbox emulates both APIs with "
            "their real rate limits: GHL 100 requests per 10 s per location, Memberstack 25 requests per "
            "second. The bound of a sync is `GHL requests / 10 + Memberstack requests / 25` seconds, the "
            "time these limits need when extraction and loading do not overlap.\n\n"
            "The benchmark machine has 2 CPUs that other jobs shared while it ran, so times vary by tens "
            "of percent between runs. Figures that are compared were measured in one run. Request counts "
            "do not vary. `make bench BENCH_ARGS=--quick` runs everything on small seeds with scaled "
            "limits in a few minutes, and writes its page to `artifacts/bench/quick/`.\n"
        )

    def goals_section(self) -> str:
        return "## Goals\n\n" + table(["benchmark", "goal", "figure", "outcome"], self.goals)

    # -- benchmarks 1 to 3 -------------------------------------------------------------------

    def sync_sections(self) -> str:
        if self.sync is None:
            return "## 1-3. Sync runs\n\nNot measured: run `bench/sync_runs.py`.\n"
        runs = self.sync["runs"]
        settings = self.sync["settings"]
        first, unchanged, incremental = runs["first_load"], runs["no_change"], runs["incremental"]
        variant = runs.get("first_load_json")
        ghl_rate, ms_rate = rates(self.sync)
        text = [
            "## 1-3. First load, no-change run and 1 % run\n\n",
            provenance(self.sync),
            f"\nSeed: {settings['contacts']} contacts with 3 tasks, 3 notes and 2 appointments each (the "
            f"seed generator's messy cases included), sandbox latency {settings['latency_ms']:g} ms, "
            f"limits x{settings['rate_limit_scale']:g}. The steps run in one warm process, one run after "
            "the other on the same sandbox and storage.\n\n",
            table(
                ["run", "wall time", "GHL requests", "Memberstack requests", "Memberstack writes", "HTTP 429",
                 "bound", "wall / bound"],
                [self._run_row(run) for run in (first, unchanged, incremental)],
            ),
            f"\nFirst load, where the time went: {steps_text(first)}. The extract took "
            f"{first['steps_s'].get('extract', 0):.1f} s for {first['ghl']['requests']} GHL requests "
            f"(bound {first['ghl']['requests'] / ghl_rate:.1f} s) and the load {first['steps_s'].get('load', 0):.1f} s "
            f"for {first['memberstack']['requests']} Memberstack requests (bound "
            f"{first['memberstack']['requests'] / ms_rate:.1f} s).\n",
            f"\nThe 1 % run changed the first name of {incremental.get('changed_contacts')} contacts through "
            f"the GHL API. Where its time went: {steps_text(incremental)}.\n",
            "\nRequests per contact on the first load:\n\n",
            table(["mapping", "GHL", "Memberstack"], self._per_contact_rows(first, variant)),
        ]
        if variant is not None:
            text.append(
                f"\nThe json variant keeps tasks and notes in the member's `json` (mapping file written by "
                f"`bench/sync_runs.py`). Its load ran with the limits x{variant['rate_scale']:g}, since only "
                "its request counts are reported.\n"
            )
        text.append(self._route_table(first))
        return "".join(text)

    def _run_row(self, run: dict[str, Any]) -> list[Any]:
        return [
            RUN_NAMES.get(run["label"], run["label"]),
            f"{run['wall_s']:.1f} s",
            run["ghl"]["requests"],
            run["memberstack"]["requests"],
            run["memberstack"]["writes"],
            run["http_429"],
            f"{run['bound_s']:.1f} s",
            f"{run['ratio_to_bound']:.3f}" if run["ratio_to_bound"] is not None else "-",
        ]

    def _per_contact_rows(self, first: dict[str, Any], variant: dict[str, Any] | None) -> list[list[Any]]:
        rows = [["default (Data Tables)", first["requests_per_contact"]["ghl"], first["requests_per_contact"]["memberstack"]]]
        if variant is not None:
            per_contact = variant["requests_per_contact"]
            rows.append(["tasks and notes in json", per_contact["ghl"], per_contact["memberstack"]])
        return rows

    def _route_table(self, run: dict[str, Any]) -> str:
        rows = [["GHL", route, count] for route, count in run["ghl"]["by_route"].items()]
        rows += [["Memberstack", route, count] for route, count in run["memberstack"]["by_route"].items()]
        return "\nFirst load requests by route:\n\n" + table(["API", "route", "requests"], rows)

    def _sync_goals(self, first: dict[str, Any], unchanged: dict[str, Any]) -> None:
        ratio = first["ratio_to_bound"]
        self.goal("1 first load", f"wall / bound <= {FIRST_LOAD_RATIO_GOAL}", f"{ratio:.3f}", ratio <= FIRST_LOAD_RATIO_GOAL)
        self.goal("1 first load", "HTTP 429 = 0", str(first["http_429"]), first["http_429"] == 0)
        ghl = unchanged["ghl"]["requests"]
        self.goal("2 no change", f"GHL requests <= {NO_CHANGE_GHL_GOAL}", str(ghl), ghl <= NO_CHANGE_GHL_GOAL)
        writes = unchanged["memberstack"]["writes"]
        self.goal("2 no change", "Memberstack writes = 0", str(writes), writes == 0)
        if ratio > FIRST_LOAD_RATIO_GOAL:
            ghl_rate, ms_rate = rates(self.sync)
            self.bounds.append(
                f"First load, wall / bound {ratio:.3f}: the extract took {first['steps_s'].get('extract', 0):.1f} s "
                f"against a GHL bound of {first['ghl']['requests'] / ghl_rate:.1f} s, the load "
                f"{first['steps_s'].get('load', 0):.1f} s against a Memberstack bound of "
                f"{first['memberstack']['requests'] / ms_rate:.1f} s; all steps: {steps_text(first)}."
            )

    # -- benchmark 4 -------------------------------------------------------------------------

    def scale_section(self) -> str:
        if self.scale is None:
            return "## 4. Validation and diff at scale\n\nNot measured: run `bench/validate_diff_scale.py`.\n"
        sizes = self.scale["sizes"]
        rows = [
            [
                f"{size['contacts']:,}",
                f"{size['records']:,}",
                f"{size['read_s']:.2f} s ({size['read_cpu_s']:.2f})",
                f"{size['validate_s']:.2f} s ({size['validate_cpu_s']:.2f})",
                f"{size['diff_s']:.2f} s ({size['diff_cpu_s']:.2f})",
                f"{size['total_s']:.2f} s ({size['total_cpu_s']:.2f})",
                f"{size['peak_rss_gib']:.2f} GiB",
                f"{sum(size['data_gib'].values()):.2f} GiB",
                ", ".join(f"{total:.2f}" for total in size.get("totals_s", [size["total_s"]])),
            ]
            for size in sizes
        ]
        repeats = self.scale["settings"].get("repeats", 1)
        growth_rows = [
            [f"{step['from']:,} to {step['to']:,}", f"x{step['contacts_factor']:g}", f"x{step['time_factor']}", f"x{step['rss_factor']}"]
            for step in self.scale["growth"]
        ]
        parse_rows = [
            [entity, f"{figures['records']:,}", f"{figures['per_s']:,}"]
            for entity, figures in self.scale["parse_throughput"].items()
        ]
        return "".join(
            [
                "## 4. Validation and diff at scale\n\n",
                provenance(self.scale),
                "\nEach size has 3 tasks and 3 notes per contact, and 1 % of the members and of the tasks "
                "differ from the committed snapshot, as in a full-refresh run. A fresh process "
                "reads the snapshot, the desired state and the extracted contacts from parquet (pandas "
                f"`{sizes[0].get('string_dtype', 'string')}` strings), runs `quality.validate_batch` and "
                "`diff.plan_operations`. Generating the data is not timed. Times are wall time with CPU "
                "time (user plus system) in brackets. Peak RSS is the process's `ru_maxrss` and includes "
                f"{sizes[0]['rss_after_imports_gib']:.2f} GiB of interpreter and imports. Data is the "
                f"frames' `memory_usage(deep=True)`. Each size was measured {repeats} "
                f"{'time' if repeats == 1 else 'times'}, each time in a new process. "
                "The table shows the fastest run, because other jobs on the machine only add time, and "
                "lists the total of every run. Peak RSS is the highest of all runs.\n\n",
                table(["contacts", "records", "read", "validate", "diff", "total", "peak RSS", "data", "all totals (s)"], rows),
                "\nGrowth between sizes:\n\n",
                table(["sizes", "contacts", "time", "peak RSS"], growth_rows),
                "\nPer-record pydantic parsing (`models.parse_page` on raw seed records, pages of 500):\n\n",
                table(["entity", "records", "records per second"], parse_rows),
            ]
        )

    def _scale_goals(self, sizes: list[dict[str, Any]]) -> None:
        largest = next((size for size in sizes if size["contacts"] == 1_000_000), None)
        seconds = largest["total_s"] if largest else None
        gib = largest["peak_rss_gib"] if largest else None
        self.goal("4 1M contacts", f"time < {SCALE_SECONDS_GOAL:g} s", f"{seconds:.2f} s" if largest else "-",
                  seconds < SCALE_SECONDS_GOAL if largest else None)
        self.goal("4 1M contacts", f"peak RSS < {SCALE_GIB_GOAL:g} GiB", f"{gib:.2f} GiB" if largest else "-",
                  gib < SCALE_GIB_GOAL if largest else None)
        if largest is None:
            return
        if seconds >= SCALE_SECONDS_GOAL:
            self.bounds.append(
                f"1M contacts, {seconds:.2f} s ({largest['total_cpu_s']:.2f} s CPU): reading "
                f"{largest['read_s']:.2f} s is pyarrow decoding about {2 * largest['records'] + 3 * largest['contacts']:,} "
                f"parquet rows (snapshot, desired state, contacts). Validation {largest['validate_s']:.2f} s "
                "is mostly hashing ids. The integer codes that keep ids away from GX factorize every "
                "record id. GX 1.24 fingerprints each batch under 1 GB with `hash_pandas_object` twice, "
                "once to build it and once to validate it. "
                f"The diff {largest['diff_s']:.2f} s is pyarrow hash lookups over the id columns plus "
                f"about {largest['operations']:,} operations built one by one in Python."
            )
        if gib >= SCALE_GIB_GOAL:
            data = largest["data_gib"]
            working = gib - sum(data.values()) - largest["rss_after_imports_gib"]
            self.bounds.append(
                f"1M contacts, peak RSS {gib:.2f} GiB: the frames alone take {sum(data.values()):.2f} GiB "
                f"(applied snapshot {data['applied']:.2f}, desired state {data['desired']:.2f}, contacts "
                f"{data['contacts']:.2f}), and the interpreter with pandas, pyarrow and GX adds "
                f"{largest['rss_after_imports_gib']:.2f} GiB. The other {working:.2f} GiB are the working "
                "arrays of the read, the validation and the diff. A full-refresh diff holds both states at "
                "once, so the goal needs smaller states (fewer or dictionary-encoded text columns) or a "
                "diff that streams one table at a time, not a local fix."
            )

    # -- benchmark 5 -------------------------------------------------------------------------

    def side_section(self) -> str:
        if self.side is None:
            return "## 5. Side by side\n\nNot measured: run `bench/side_by_side.py`.\n"
        side = self.side
        baseline, e2e, warm = side["baseline"], side["end_to_end"], side["warm"]
        rows = []
        for label in ("first_load", "incremental"):
            for name, runs in (("baseline script", baseline), ("pipeline, airflow dags test", e2e), ("pipeline, warm steps", warm)):
                run = runs[label]
                rows.append([RUN_NAMES[label], name, f"{run['wall_s']:.1f} s", run["ghl"]["requests"],
                             run["memberstack"]["requests"], run["memberstack"]["writes"], run["http_429"]])
        ratio_rows = [
            [kind.replace("_", " "), f"x{values['first_load']}", f"x{values['incremental']}"]
            for kind, values in side["ratios"].items()
        ]
        overhead = side["airflow_overhead_s"]
        return "".join(
            [
                "## 5. Side by side with a straightforward script\n\n",
                provenance(side),
                f"\nSame seed and sandbox settings as benchmarks 1 to 3, a fresh sandbox per contestant. The "
                "baseline (`bench/baseline_sync.py`) uses the official `gohighlevel-api-client` and "
                "sequential httpx calls paced at 25 per second, and on HTTP 429 it sleeps the interval and "
                "retries. It loops over the contacts: GHL reads of one contact, then its Memberstack writes. "
                "It re-syncs everything on every run, but it compares before it writes, so its 1 % run "
                f"writes little. The end-to-end runs are `{e2e['command']}` in a fresh Airflow home. The "
                f"warm runs are those of benchmarks 1 to 3 ({relative(warm['source'])}).\n\n",
                table(["run", "contestant", "wall time", "GHL requests", "Memberstack requests",
                       "Memberstack writes", "HTTP 429"], rows),
                "\nTime ratios, baseline time divided by pipeline time:\n\n",
                table(["pipeline", "first load", "1 % run"], ratio_rows),
                f"\nAirflow start-up: `airflow dags list` (CLI start and DAG parse) took {e2e['dags_list_s']:.1f} s. "
                f"`airflow dags test` logged its first \"Task started\" {self._first_task(e2e, 'first_load')} "
                f"after it started on the first load and {self._first_task(e2e, 'incremental')} after it started "
                "on the 1 % run. "
                f"`airflow dags test` took {overhead['first_load']:.1f} s longer than the warm steps on the "
                f"first load and {overhead['incremental']:.1f} s longer on the 1 % run. The difference covers "
                "the CLI start, the DAG parse, the in-process API server of `dags test`, the task state "
                "writes and each task's imports (GX among them). `airflow db migrate` of the fresh home took "
                f"{e2e['db_migrate_s_untimed']:.1f} s and is not counted.\n",
            ]
        )

    @staticmethod
    def _first_task(e2e: dict[str, Any], label: str) -> str:
        seconds = e2e[label].get("seconds_to_first_task")
        return "-" if seconds is None else f"{seconds:.1f} s"

    def _side_goals(self, side: dict[str, Any]) -> None:
        for kind, values in side["ratios"].items():
            first, incremental = values["first_load"], values["incremental"]
            label = "end to end" if kind == "end_to_end" else "warm steps"
            self.goal(f"5 first load, {label}", f"ratio >= {SIDE_FIRST_LOAD_GOAL:g}", f"x{first}",
                      first >= SIDE_FIRST_LOAD_GOAL if first is not None else None)
            self.goal(f"5 1 % run, {label}", f"ratio >= {SIDE_INCREMENTAL_GOAL:g}", f"x{incremental}",
                      incremental >= SIDE_INCREMENTAL_GOAL if incremental is not None else None)
        self._side_first_load_bound(side)
        self._side_incremental_bound(side)

    def _side_first_load_bound(self, side: dict[str, Any]) -> None:
        if min(values["first_load"] for values in side["ratios"].values()) >= SIDE_FIRST_LOAD_GOAL:
            return
        baseline, warm = side["baseline"]["first_load"], side["warm"]["first_load"]
        ghl_rate, ms_rate = rates(side)
        ghl, ms = warm["ghl"]["requests"], warm["memberstack"]["requests"]
        baseline_ghl = baseline["ghl"]["requests"]
        pacing = baseline["memberstack"]["requests"] / ms_rate
        reads = baseline["wall_s"] - pacing
        overlapped = max(ghl / ghl_rate, ms / ms_rate)
        self.bounds.append(
            f"Side by side, first load: the baseline took {baseline['wall_s']:.1f} s. Pacing its "
            f"{baseline['memberstack']['requests']} Memberstack requests takes {pacing:.1f} s. The other "
            f"{reads:.1f} s go to its {baseline_ghl} sequential GHL reads (about {1000 * reads / baseline_ghl:.0f} ms "
            f"each) and its own work. Its loop sends {baseline_ghl / baseline['wall_s']:.1f} GHL requests per "
            f"second, so the GHL limit of {ghl_rate:g} per second hardly slows it ({baseline['ghl']['http_429']} "
            f"HTTP 429). The pipeline sends fewer requests of both kinds ({ghl} and {ms}), but it extracts "
            f"before it loads, so the limits alone need {ghl / ghl_rate:.1f} s + {ms / ms_rate:.1f} s. "
            "Overlapping extraction and loading would bring it close to "
            f"{overlapped:.1f} s, by estimate a ratio of about x{baseline['wall_s'] / overlapped:.2f}. The DAG "
            "runs them as two tasks, so that is a change of design, not a local fix."
        )

    def _side_incremental_bound(self, side: dict[str, Any]) -> None:
        ratio = side["ratios"]["end_to_end"]["incremental"]
        if ratio is None or ratio >= SIDE_INCREMENTAL_GOAL:
            return
        e2e, warm = side["end_to_end"]["incremental"], side["warm"]["incremental"]
        self.bounds.append(
            f"Side by side, 1 % run end to end (x{ratio}): `airflow dags test` took {e2e['wall_s']:.1f} s, of "
            f"which the sync steps need {warm['wall_s']:.1f} s (the warm run). The remaining "
            f"{e2e['wall_s'] - warm['wall_s']:.1f} s is Airflow's start-up and task overhead. A running "
            "scheduler does not pay the CLI start or the in-process API server of `dags test`, but each "
            "task still runs in a new process that imports the pipeline and GX."
        )

    def bounds_section(self) -> str:
        if not self.bounds:
            return "## What bounds missed goals\n\nEvery measured goal was met.\n"
        return "## What bounds missed goals\n\n" + "\n".join(f"- {text}" for text in self.bounds) + "\n"


def write(results: Path, page_path: Path) -> None:
    """Write the page from the figures under ``results``."""
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text(Page(results).render(), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Write the page from stored figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR, help="folder of the figures (JSON)")
    parser.add_argument("--page", type=Path, default=common.REPO_ROOT / "docs" / "benchmarks.md", help="page to write")
    args = parser.parse_args(argv)
    write(args.results, args.page)
    print(f"page written to {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
