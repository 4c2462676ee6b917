"""Secret scan: a full sync with known secret values leaves none of them anywhere on our side.

The sandbox is seeded with credentials that appear nowhere else (a Private Integration Token, an
OAuth client secret and refresh token, two Memberstack keys). The real DAG runs with
``dag.test()`` over both pairs. The test then reads everything the run left behind: the task
output (file descriptors and log records), the task log files and the metadata database under
``AIRFLOW_HOME``, the run's XComs, the reports, the snapshot files and journals, and the token
store. None of those may contain a credential, a token the sandbox issued, the Fernet key or a
generated member password. The passwords are captured by wrapping the ``secrets`` module that
the loader uses, and the count of captured passwords must equal the count of member creates, so
the capture itself is checked. The token store's bytes must be Fernet tokens that decrypt to the
current tokens. Reports must not show contacts' emails, phones or full names.

A second test runs the sync steps with rejected credentials and scans the raised messages, their
tracebacks and the logs the same way. A hit names the kind of secret and where it was found, never
the secret.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import secrets
import traceback
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bench import reliability
from sandbox import seedgen
from sandbox.testing import SandboxHandle, running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "ghl_memberstack_sync"
START = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
# Values used nowhere else in the repository, so every occurrence is a leak of this run.
KNOWN_SECRETS = {
    "GHL private integration token": "pit-scan-4f1c9e2b7a6d40e8",
    "GHL OAuth client secret": "oauth-client-secret-scan-93be1f07c6",
    "GHL initial refresh token": "refresh-token-scan-5d20c8aa1b47",
    "Memberstack secret key of app A": "sk_sb_scan_app_a_7e3d91f2",
    "Memberstack secret key of app B": "sk_sb_scan_app_b_c02f44a9",
}
WRONG_SECRETS = {
    "rejected Private Integration Token": "pit-scan-rejected-0b8e51d3c2",
    "rejected Memberstack secret key": "sk_sb_scan_rejected_9f31aa07",
    "revoked refresh token": "refresh-token-scan-revoked-6e02d9",
}


class RecordingSecrets:
    """Stands in for the ``secrets`` module and keeps every text value it hands out."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(secrets, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            value = attribute(*args, **kwargs)
            if isinstance(value, str) and len(value) >= 8:
                self.values.append(value)
            return value

        return call


def scan_seed() -> dict[str, Any]:
    """The demo shape with 30 contacts per location and the known secret values as credentials."""
    seed = seedgen.generate_seed(contacts_per_location=(30, 30), random_seed=11)
    seed["ghl"]["oauth_clients"] = [
        {"client_id": seedgen.DEMO_OAUTH_CLIENT_ID, "client_secret": KNOWN_SECRETS["GHL OAuth client secret"]}
    ]
    location_a, location_b = seed["ghl"]["locations"]
    location_a["private_integration_tokens"] = [KNOWN_SECRETS["GHL private integration token"]]
    location_b["oauth_grants"] = [
        {
            "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
            "refresh_token": KNOWN_SECRETS["GHL initial refresh token"],
        }
    ]
    location_b["authorization_codes"] = []
    app_a, app_b = seed["memberstack"]["apps"]
    app_a["secret_key"] = KNOWN_SECRETS["Memberstack secret key of app A"]
    app_b["secret_key"] = KNOWN_SECRETS["Memberstack secret key of app B"]
    return seed


SEED = scan_seed()


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with running_sandbox(seed=SEED, config={"rate_limits": False, "rate_limit_scale": 100}) as handle:
        yield handle


def connections(sandbox: SandboxHandle, *, pit: str, refresh_token: str, key_a: str) -> dict[str, str]:
    bodies = {
        "gohighlevel_demo_a": {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "password": pit,
            "extra": {"location_id": seedgen.DEMO_LOCATION_A_ID},
        },
        "gohighlevel_demo_b": {
            "conn_type": "gohighlevel",
            "host": sandbox.ghl_url,
            "extra": {
                "location_id": seedgen.DEMO_LOCATION_B_ID,
                "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
                "client_secret": KNOWN_SECRETS["GHL OAuth client secret"],
                "refresh_token": refresh_token,
            },
        },
        "memberstack_demo_a": {
            "conn_type": "memberstack",
            "host": sandbox.memberstack_url,
            "password": key_a,
        },
        "memberstack_demo_b": {
            "conn_type": "memberstack",
            "host": sandbox.memberstack_url,
            "password": KNOWN_SECRETS["Memberstack secret key of app B"],
        },
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(body) for conn_id, body in bodies.items()}


@pytest.fixture
def environment(sandbox: SandboxHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from ghl_memberstack.limits import reset_limiters

    storage = tmp_path / "storage"
    for name, value in reliability.sync_environment(storage).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW_VAR_GHL_MEMBERSTACK_SYNC_PAIRS", "sync_pairs.demo.yaml")
    sandbox.reset(SEED)
    reset_limiters()
    return storage


# --- collecting what the run left behind ----------------------------------------------------------


def parquet_text(data: bytes) -> str:
    """Return every cell and the metadata of a parquet file as text (the bytes may be compressed)."""
    table = pq.read_table(io.BytesIO(data))
    parts = [str(table.schema.metadata or {})]
    for column in table.columns:
        parts.extend(str(value) for value in column.to_pylist())
    return "\n".join(parts)


def file_texts(folder: Path) -> dict[str, str]:
    """Return each file under ``folder`` as text, parquet files decoded."""
    texts = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        text = data.decode("utf-8", errors="replace")
        if path.suffix == ".parquet":
            text += "\n" + parquet_text(data)
        texts[str(path.relative_to(folder))] = text
    return texts


def xcom_texts(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == run_id).all()
        return {
            f"xcom {row.task_id}[{row.map_index}].{row.key}": json.dumps(row.value, default=str)
            for row in rows
        }


def hits(secret_values: dict[str, str], places: dict[str, str]) -> dict[str, list[str]]:
    """Map each kind of secret found to the places that contain it (never the value itself)."""
    found: dict[str, list[str]] = {}
    for kind, value in secret_values.items():
        where = [place for place, text in places.items() if value and value in text]
        if where:
            found[kind] = where[:5]
    return found


def issued_tokens(sandbox: SandboxHandle) -> dict[str, str]:
    """Return the refresh and access tokens the sandbox issued to the OAuth grant."""
    location = next(
        loc for loc in sandbox.state()["ghl"]["locations"] if loc["id"] == seedgen.DEMO_LOCATION_B_ID
    )
    tokens = {}
    for grant in location["oauth_grants"]:
        tokens["current refresh token"] = grant["refresh_token"]
        for number, entry in enumerate(grant.get("access_tokens") or []):
            tokens[f"access token {number}"] = entry["token"]
    return tokens


def personal_values(seed: dict[str, Any]) -> dict[str, str]:
    """Return contacts' emails, phones and full names that a report must not show."""
    from ghl_memberstack.mapping import normalize_phone

    values: dict[str, str] = {}
    for location in seed["ghl"]["locations"]:
        for contact in location["contacts"]:
            email = (contact.get("email") or "").strip()
            if "@" in email:
                values[f"email of {contact['id']}"] = email.lower()
            phone = (contact.get("phone") or "").strip()
            digits = re.sub(r"\D", "", phone)
            if len(digits) >= 7:
                values[f"phone of {contact['id']}"] = phone
                values[f"E.164 phone of {contact['id']}"] = normalize_phone(phone, "US")[0]
            name = " ".join(part for part in (contact.get("firstName"), contact.get("lastName")) if part)
            if len(name) >= 8 and " " in name:
                values[f"name of {contact['id']}"] = name
    return values


# --- the scans ------------------------------------------------------------------------------------


def test_full_sync_leaves_no_secret(
    airflow_db: Path,
    sandbox: SandboxHandle,
    environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from ghl_memberstack import load

    for name, value in connections(
        sandbox,
        pit=KNOWN_SECRETS["GHL private integration token"],
        refresh_token=KNOWN_SECRETS["GHL initial refresh token"],
        key_a=KNOWN_SECRETS["Memberstack secret key of app A"],
    ).items():
        monkeypatch.setenv(name, value)
    recorder = RecordingSecrets()
    monkeypatch.setattr(load, "secrets", recorder)
    caplog.set_level("DEBUG")
    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags[DAG_ID]
    for task in dag.tasks:
        task.retries = 0

    dag_run = dag.test(logical_date=START, run_conf={})

    assert str(dag_run.state) == "success"
    storage = environment
    creates = sum(
        statuses.get("201", 0)
        for route, statuses in sandbox.stats("memberstack")["by_route"].items()
        if route == "POST /members"
    )
    passwords = recorder.values
    assert creates > 0
    assert len(passwords) == creates
    assert len(set(passwords)) == len(passwords)
    assert min(len(password) for password in passwords) >= 24

    output = capfd.readouterr()
    places = {
        "task output on stdout": output.out,
        "task output on stderr": output.err,
        "log records": caplog.text,
    }
    places |= {f"storage {name}": text for name, text in file_texts(storage).items()}
    places |= {f"airflow home {name}": text for name, text in file_texts(airflow_db).items()}
    places |= xcom_texts(DAG_ID, dag_run.run_id)
    assert any(name.startswith("storage reports/") for name in places)
    assert any(name.startswith("storage state/") for name in places)
    assert any(name.startswith("xcom ") for name in places)
    secret_values = {**KNOWN_SECRETS, **issued_tokens(sandbox)}
    secret_values["Airflow Fernet key"] = os.environ["AIRFLOW__CORE__FERNET_KEY"]
    secret_values |= {f"member password {n}": value for n, value in enumerate(passwords)}

    assert hits(secret_values, places) == {}

    # The token store contains Fernet tokens that decrypt to the current token pair.
    from cryptography.fernet import Fernet

    stored = [p for p in (storage / "oauth_tokens").glob("*.fernet")]
    assert len(stored) == 1
    raw = stored[0].read_bytes()
    assert raw.startswith(b"gAAAAA")
    plain = Fernet(os.environ["AIRFLOW__CORE__FERNET_KEY"].encode()).decrypt(raw).decode()
    assert issued_tokens(sandbox)["current refresh token"] in plain

    # Reports show ids, reasons and counts, never contacts' emails, phones or names.
    reports = {name: text for name, text in places.items() if name.startswith("storage reports/")}
    assert hits(personal_values(SEED), reports) == {}
    report = json.loads(next(text for name, text in reports.items() if name.endswith("report.json")))
    assert report["status"] == "ok"
    assert sum(len(pair["quarantine"]) for pair in report["pairs"].values()) > 0


def exception_texts(error: BaseException) -> str:
    """Return the message, repr and formatted traceback of an error and its causes."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current))
        parts.append(repr(current))
        parts.append(repr(getattr(current, "__dict__", {})))
        current = current.__cause__ or current.__context__
    parts.append("".join(traceback.format_exception(error)))
    return "\n".join(parts)


def test_rejected_credentials_leave_no_secret(
    sandbox: SandboxHandle,
    environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ghl_memberstack import sync

    for name, value in connections(
        sandbox,
        pit=WRONG_SECRETS["rejected Private Integration Token"],
        refresh_token=WRONG_SECRETS["revoked refresh token"],
        key_a=WRONG_SECRETS["rejected Memberstack secret key"],
    ).items():
        monkeypatch.setenv(name, value)
    caplog.set_level("DEBUG")
    options = sync.RunOptions(dag_id=DAG_ID, run_id="secret_scan__rejected", run_type="manual")
    pairs = {pair.name: pair for pair in sync.resolve_pairs()}
    errors: dict[str, BaseException] = {}

    for name in ("demo_a", "demo_b"):
        with pytest.raises(Exception) as raised:
            sync.prepare_pair(pairs[name], options)
        errors[f"prepare {name}"] = raised.value
    # A PIT that works with a Memberstack key that does not: the load step raises.
    monkeypatch.setenv(
        "AIRFLOW_CONN_GOHIGHLEVEL_DEMO_A",
        connections(sandbox, pit=KNOWN_SECRETS["GHL private integration token"], refresh_token="", key_a="")[
            "AIRFLOW_CONN_GOHIGHLEVEL_DEMO_A"
        ],
    )
    prepared = sync.prepare_pair(pairs["demo_a"], options)
    with pytest.raises(Exception) as raised:
        sync.load_pair(prepared, options)
    errors["load demo_a"] = raised.value
    sync.summarize(["demo_a", "demo_b"], options)

    assert type(errors["prepare demo_a"]).__name__ == "GoHighLevelAuthError"
    assert type(errors["prepare demo_b"]).__name__ == "GoHighLevelAuthError"
    assert type(errors["load demo_a"]).__name__ == "MemberstackConfigError"
    output = capfd.readouterr()
    places = {f"raised by {step}": exception_texts(error) for step, error in errors.items()}
    places |= {"output on stdout": output.out, "output on stderr": output.err, "log records": caplog.text}
    places |= {f"storage {name}": text for name, text in file_texts(environment).items()}
    secret_values = {
        **WRONG_SECRETS,
        **KNOWN_SECRETS,
        "Airflow Fernet key": os.environ["AIRFLOW__CORE__FERNET_KEY"],
    }

    assert hits(secret_values, places) == {}
    assert any(name.startswith("storage reports/") for name in places)
