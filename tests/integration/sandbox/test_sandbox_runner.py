"""Starting the sandbox: `python -m sandbox`, the subprocess mode of `running_sandbox`, persistence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.seeding import EXAMPLE_SEED_PATH
from sandbox.testing import REPO_ROOT, running_sandbox

pytestmark = pytest.mark.integration

PIT_A = "pit-sandbox-demo-location-a"
LOCATION_A = "DemoLocationPit00001"


def example_seed() -> dict[str, Any]:
    return json.loads(EXAMPLE_SEED_PATH.read_text(encoding="utf-8"))


def test_subprocess_mode_applies_config() -> None:
    with running_sandbox(seed=example_seed(), config={"rate_limit_scale": 10}, subprocess=True) as sb:
        response = httpx.get(f"{sb.ghl_url}/contacts/ExA0000000000000001a", trust_env=False,
                             headers={"Authorization": f"Bearer {PIT_A}", "Version": "2021-07-28"})
        config = sb.config("memberstack")
    assert response.status_code == 200
    assert response.headers["x-ratelimit-max"] == "1000"
    assert config["rate_limit_scale"] == 10


def test_state_dir_survives_restart(tmp_path: Path) -> None:
    with running_sandbox(seed=example_seed(), state_dir=tmp_path) as sb:
        created = httpx.post(f"{sb.ghl_url}/contacts/", trust_env=False, json={
            "locationId": LOCATION_A, "firstName": "Kept", "email": "kept@example.org"},
            headers={"Authorization": f"Bearer {PIT_A}", "Version": "2021-07-28"})
        member = httpx.post(f"{sb.memberstack_url}/members", trust_env=False, headers={"X-API-KEY": "sk_sb_demo_app_a"},
                            json={"email": "kept@example.org", "password": "a-long-password"})
    assert created.status_code == 201
    assert member.status_code == 201
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ghl.json", "memberstack.json"]
    with running_sandbox(seed=example_seed(), state_dir=tmp_path) as sb:
        state = sb.state()
    contact_ids = [c["id"] for c in state["ghl"]["locations"][0]["contacts"]]
    member_ids = [m["id"] for m in state["memberstack"]["apps"][0]["members"]]
    assert created.json()["contact"]["id"] in contact_ids
    assert member.json()["data"]["id"] in member_ids


def _run_main(env_overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GHL_SANDBOX_PORT="0", MEMBERSTACK_SANDBOX_PORT="0", **env_overrides)
    env.pop("SANDBOX_STATE_DIR", None)
    return subprocess.run([sys.executable, "-m", "sandbox"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_main_rejects_invalid_seed(tmp_path: Path) -> None:
    seed = example_seed()
    seed["memberstack"]["apps"][0]["secret_key"] = "pk_wrong"
    seed_path = tmp_path / "seed.json"
    seed_path.write_text(json.dumps(seed), encoding="utf-8")
    result = _run_main({"SANDBOX_SEED": str(seed_path)})
    assert result.returncode == 2
    assert "memberstack.apps[0].secret_key" in result.stderr


def test_main_rejects_invalid_config() -> None:
    result = _run_main({"SANDBOX_SEED": str(EXAMPLE_SEED_PATH), "SANDBOX_CONFIG": '{"rate_limit_scale": -2}'})
    assert result.returncode == 2
    assert "rate_limit_scale" in result.stderr
