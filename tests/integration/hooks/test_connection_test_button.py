"""The connection Test button, through the REST API of a real ``airflow api-server``.

The API server runs on 127.0.0.1 with its own Airflow home and SQLite database, the simple auth
manager in all-admins mode (no login) and ``[core] test_connection`` enabled. It resolves the hook
classes through this project's provider entry point, as the UI does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from sandbox import seedgen
from sandbox.testing import running_sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
STARTUP_TIMEOUT_S = 180
WRONG_MEMBERSTACK_KEY = "sk_sb_wrong_key_for_button"
WRONG_PIT = "pit-wrong-token-for-button"
SECRETS_SENT = (
    seedgen.DEMO_LOCATION_A_PIT,
    seedgen.DEMO_MEMBERSTACK_KEY_A,
    seedgen.DEMO_OAUTH_CLIENT_SECRET,
    seedgen.DEMO_REFRESH_TOKEN_B,
    WRONG_MEMBERSTACK_KEY,
    WRONG_PIT,
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def sandbox():
    with running_sandbox(seed=seedgen.generate_seed((10, 10), members_per_app=0)) as handle:
        yield handle


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("api-server-home")
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW_CONN_")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW_VAR_GHL_MEMBERSTACK_STORAGE": str(home / "storage"),
    }

    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-2000:]

    port = _free_port()
    log_path = home / "api-server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base_url, process, log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

    server_log = log_path.read_text(errors="replace")
    leaked = [secret for secret in SECRETS_SENT if secret in server_log]
    assert leaked == [], f"the API server log contains {len(leaked)} secret(s) that the tests sent"


def _wait_until_up(base_url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"airflow api-server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{base_url}/api/v2/version", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(
        f"airflow api-server did not answer within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}"
    )


def press_test(api_server: str, connection_id: str, conn_type: str, **fields) -> dict:
    body = {"connection_id": connection_id, "conn_type": conn_type, **fields}
    if "extra" in body:
        body["extra"] = json.dumps(body["extra"])
    response = httpx.post(f"{api_server}/api/v2/connections/test", json=body, timeout=60, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


def test_pit_connection_passes(api_server, sandbox):
    result = press_test(
        api_server,
        "ghl_button_pit",
        "gohighlevel",
        host=sandbox.ghl_url,
        password=seedgen.DEMO_LOCATION_A_PIT,
        extra={"location_id": seedgen.DEMO_LOCATION_A_ID},
    )

    assert result["status"] is True, result["message"]
    assert seedgen.DEMO_LOCATION_A_ID in result["message"]


def test_memberstack_connection_passes(api_server, sandbox):
    result = press_test(
        api_server,
        "ms_button",
        "memberstack",
        host=sandbox.memberstack_url,
        password=seedgen.DEMO_MEMBERSTACK_KEY_A,
    )

    assert result["status"] is True, result["message"]


def test_wrong_keys_fail_clearly(api_server, sandbox):
    memberstack = press_test(
        api_server,
        "ms_button_bad",
        "memberstack",
        host=sandbox.memberstack_url,
        password=WRONG_MEMBERSTACK_KEY,
    )
    ghl = press_test(
        api_server,
        "ghl_button_bad",
        "gohighlevel",
        host=sandbox.ghl_url,
        password=WRONG_PIT,
        extra={"location_id": seedgen.DEMO_LOCATION_A_ID},
    )

    assert memberstack["status"] is False
    assert "secret key was rejected" in memberstack["message"]
    assert WRONG_MEMBERSTACK_KEY not in memberstack["message"]
    assert ghl["status"] is False
    assert "Private Integration Token was rejected" in ghl["message"]
    assert WRONG_PIT not in ghl["message"]


def test_oauth_connection_never_refreshes(api_server, sandbox):
    granted_before = sandbox.stats("ghl").get("refresh", {}).get("granted", 0)

    result = press_test(
        api_server,
        "ghl_button_oauth",
        "gohighlevel",
        host=sandbox.ghl_url,
        extra={
            "location_id": seedgen.DEMO_LOCATION_B_ID,
            "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
            "client_secret": seedgen.DEMO_OAUTH_CLIENT_SECRET,
            "refresh_token": seedgen.DEMO_REFRESH_TOKEN_B,
        },
    )

    assert result["status"] is True, result["message"]
    assert "The API was not called" in result["message"]
    assert sandbox.stats("ghl").get("refresh", {}).get("granted", 0) == granted_before
