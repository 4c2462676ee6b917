"""``make demo``: sync the demo seed into the sandbox twice, in a fresh Airflow home.

1. Creates ``artifacts/demo/airflow`` from scratch (database, airflow_settings.yaml).
2. Starts the sandbox with the demo seed and its rate limits scaled ×10.
3. Runs ``airflow dags test ghl_memberstack_sync`` over both demo pairs.
4. Changes location A through the sandbox's GHL API: updates a contact, adds a note, removes a tag
   that grants a plan, and deletes a contact.
5. Runs the sync again with ``full_refresh``, a complete read, so the note and the deletion are seen.
6. Prints one line per run and pair and where the reports are, checks that the second run applied
   exactly the scripted changes, and stops the sandbox.

Exits 0 when both runs succeed and the second one did what the changes imply.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DEMO_DIR = REPO_ROOT / "artifacts" / "demo"
AIRFLOW_HOME = DEMO_DIR / "airflow"
DAG_ID = "ghl_memberstack_sync"
SANDBOX_CONFIG = {"rate_limit_scale": 10}
# Memberstack sends no rate-limit headers, so the hook's own limit follows the sandbox's scale.
MEMBERSTACK_RATE_PER_S = 25 * SANDBOX_CONFIG["rate_limit_scale"]


def say(text: str) -> None:
    """Print one line of demo output at once."""
    print(text, flush=True)


def base_environment() -> dict[str, str]:
    """Return the environment of every Airflow command of the demo."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env.update(
        AIRFLOW_HOME=str(AIRFLOW_HOME),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO_ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__TEST_CONNECTION="Enabled",
        AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="10",
        AIRFLOW_VAR_GHL_MEMBERSTACK_SYNC_PAIRS="sync_pairs.demo.yaml",
        MEMBERSTACK_RATE_LIMIT_PER_S=str(MEMBERSTACK_RATE_PER_S),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    return env


def connection_environment(ghl_url: str, memberstack_url: str) -> dict[str, str]:
    """Return ``AIRFLOW_CONN_*`` variables for the demo pairs, pointing at the running sandbox."""
    from sandbox import seedgen

    connections = {
        "gohighlevel_demo_a": {
            "conn_type": "gohighlevel",
            "host": ghl_url,
            "password": seedgen.DEMO_LOCATION_A_PIT,
            "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
        },
        "gohighlevel_demo_b": {
            "conn_type": "gohighlevel",
            "host": ghl_url,
            "extra": {
                "location_id": seedgen.DEMO_LOCATION_B_ID,
                "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
                "client_secret": seedgen.DEMO_OAUTH_CLIENT_SECRET,
                "refresh_token": seedgen.DEMO_REFRESH_TOKEN_B,
            },
        },
        "memberstack_demo_a": {
            "conn_type": "memberstack",
            "host": memberstack_url,
            "password": seedgen.DEMO_MEMBERSTACK_KEY_A,
        },
        "memberstack_demo_b": {
            "conn_type": "memberstack",
            "host": memberstack_url,
            "password": seedgen.DEMO_MEMBERSTACK_KEY_B,
        },
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(body) for conn_id, body in connections.items()}


def run_command(command: list[str], env: dict[str, str], log_name: str) -> int:
    """Run a command with its output in ``artifacts/demo/<log_name>``; return its exit code."""
    log_path = DEMO_DIR / log_name
    with open(log_path, "wb") as log_file:
        completed = subprocess.run(command, env=env, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        say(f"  {' '.join(command[:3])} failed with exit code {completed.returncode}; log: {log_path}")
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        for line in tail:
            say(f"    | {line}")
    return completed.returncode


def prepare_home(env: dict[str, str]) -> None:
    """Create the demo's Airflow home and load airflow_settings.yaml into it."""
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    AIRFLOW_HOME.mkdir(parents=True)
    say(f"Creating a fresh Airflow home in {AIRFLOW_HOME}")
    fernet = [sys.executable, str(REPO_ROOT / "scripts" / "write_fernet_key.py"), str(AIRFLOW_HOME)]
    if run_command(fernet, env, "fernet-key.log") != 0:
        raise SystemExit(1)
    if run_command([sys.executable, "-m", "airflow", "db", "migrate"], env, "db-migrate.log") != 0:
        raise SystemExit(1)
    settings = [sys.executable, str(REPO_ROOT / "scripts" / "load_airflow_settings.py")]
    if run_command(settings, env, "load-settings.log") != 0:
        raise SystemExit(1)


def reports_root() -> Path:
    return AIRFLOW_HOME / "ghl_memberstack" / "reports" / DAG_ID


def report_folders() -> set[Path]:
    folder = reports_root()
    return set(folder.iterdir()) if folder.exists() else set()


def run_sync(number: int, conf: dict[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
    """Run the DAG once with ``airflow dags test``; return its report, or None when the run failed."""
    before = report_folders()
    label = "full refresh" if conf.get("full_refresh") else "incremental or first"
    say(f"Run {number} ({label}): airflow dags test {DAG_ID} --conf '{json.dumps(conf)}'")
    started = time.monotonic()
    code = run_command(
        [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
        env,
        f"run{number}.log",
    )
    new = sorted(report_folders() - before)
    report = json.loads((new[-1] / "report.json").read_text(encoding="utf-8")) if new else None
    say(f"  finished in {time.monotonic() - started:.0f} s with exit code {code}")
    if report is not None:
        for name, entry in report["pairs"].items():
            say("  " + run_line(number, name, entry))
        say(f"  report: {new[-1] / 'report.html'}")
    return report if code == 0 else None


def run_line(number: int, name: str, entry: dict[str, Any]) -> str:
    """Return a one-line summary of what a run did for one pair."""
    counts = entry["counts"]
    contacts = counts["contacts"]
    plans = entry.get("plans") or {}
    records = {
        key: {entity: counts[entity][key] for entity in ("tasks", "notes", "appointments")}
        for key in ("created", "updated", "deleted")
    }

    def per_entity(values: dict[str, int]) -> str:
        return "/".join(str(values[entity]) for entity in ("tasks", "notes", "appointments"))

    return (
        f"run {number} {name}: {entry['status']}; contacts {contacts['extracted']} read, "
        f"{contacts['quarantined']} quarantined; members {contacts['created']} created, "
        f"{contacts['updated']} updated, {contacts['deactivated']} deactivated, {contacts['deleted']} deleted, "
        f"{contacts['unchanged']} unchanged; records (tasks/notes/appointments) created "
        f"{per_entity(records['created'])}, updated {per_entity(records['updated'])}, deleted "
        f"{per_entity(records['deleted'])}; plans {plans.get('added', 0)} added, {plans.get('removed', 0)} removed; "
        f"requests GHL {entry['requests']['ghl']}, "
        f"Memberstack {entry['requests']['memberstack']}"
    )


def scripted_changes() -> dict[str, str]:
    """Change four contacts of location A through the sandbox's GHL API; return what changed where."""
    from ghl_memberstack.hooks.gohighlevel import GoHighLevelHook
    from ghl_memberstack.mapping import load_mapping, tag_set
    from ghl_memberstack.snapshot import SnapshotStore
    from ghl_memberstack.storage import as_storage_path

    mapping = load_mapping(REPO_ROOT / "include" / "mapping.yaml")
    managed_tags = set(mapping.tag_plans)
    members = SnapshotStore(as_storage_path(AIRFLOW_HOME / "ghl_memberstack"), "demo_a").applied().members
    linked = sorted(str(cid) for cid in members.index[members["member_id"].notna()])
    hook = GoHighLevelHook(gohighlevel_conn_id="gohighlevel_demo_a")

    tagged = None
    for contact_id in linked:
        contact = hook.get_contact(contact_id) or {}
        raw_tags = [tag for tag in contact.get("tags") or [] if tag_set([tag]) & managed_tags]
        if raw_tags:
            tagged = (contact_id, raw_tags[0])
            break
    if tagged is None:
        raise SystemExit("No contact of location A has a tag that grants a plan; the demo seed changed?")
    others = [cid for cid in linked if cid != tagged[0]]
    updated, noted, deleted = others[0], others[1], others[2]

    hook.update_contact(updated, firstName="Ada (updated by the demo)")
    hook.create_note(noted, "Called about the renewal. <b>Prefers email.</b>")
    hook.remove_tags(tagged[0], [tagged[1]])
    hook.delete_contact(deleted)
    changes = {
        "updated": updated,
        "new note": noted,
        f"removed tag {tagged[1]!r}": tagged[0],
        "deleted": deleted,
    }
    for change, contact_id in changes.items():
        say(f"  GHL change on location A: {change}: contact {contact_id}")
    return changes


def check_second_run(report: dict[str, Any]) -> list[str]:
    """Return how the second run differs from exactly the scripted changes (empty when it matches)."""
    expected = {
        ("demo_a", "contacts", "updated"): 2,
        ("demo_a", "contacts", "deactivated"): 1,
        ("demo_a", "notes", "created"): 1,
    }
    problems = []
    for name, entry in report["pairs"].items():
        if entry["status"] != "ok":
            problems.append(f"{name} has status {entry['status']}")
        for entity, values in entry["counts"].items():
            for key in ("created", "updated", "deactivated", "deleted", "failed"):
                want = expected.get((name, entity, key), 0)
                if values[key] != want:
                    problems.append(f"{name} {entity} {key} is {values[key]}, expected {want}")
    return problems


def main() -> int:
    """Run the demo; return the exit code."""
    from sandbox.testing import running_sandbox

    env = base_environment()
    prepare_home(env)
    say(f"Starting the sandbox with the demo seed and limits scaled x{SANDBOX_CONFIG['rate_limit_scale']}")
    with running_sandbox(config=SANDBOX_CONFIG, subprocess=True) as sandbox:
        say(f"  GHL on {sandbox.ghl_url}, Memberstack on {sandbox.memberstack_url}")
        env.update(connection_environment(sandbox.ghl_url, sandbox.memberstack_url))
        os.environ.update(env)

        first = run_sync(1, {}, env)
        if first is None:
            return 1
        say("Changing location A through the sandbox's GHL API")
        scripted_changes()
        second = run_sync(2, {"full_refresh": True}, env)
        if second is None:
            return 1
        say("Stopping the sandbox")

    problems = check_second_run(second)
    if problems:
        say("The second run did not apply exactly the scripted changes:")
        for problem in problems:
            say(f"  {problem}")
        return 1
    say("The second run applied exactly the scripted changes.")
    say(f"Reports: {reports_root()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
