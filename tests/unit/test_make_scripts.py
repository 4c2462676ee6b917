"""The helper scripts of the make targets: the sync run conf and the airflow_settings.yaml loader."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_conf = load_script("sync_conf")
settings_loader = load_script("load_airflow_settings")


def test_conf_defaults_are_off() -> None:
    assert sync_conf.build_conf({}) == {"dry_run": False, "full_refresh": False, "force": False, "sync_pairs": []}


def test_conf_reads_each_variable() -> None:
    conf = sync_conf.build_conf({"DRY_RUN": "1", "FULL_REFRESH": "Yes", "FORCE": "off", "SYNC_PAIRS": "a, b c"})
    assert conf["dry_run"] is True
    assert conf["full_refresh"] is True
    assert conf["force"] is False
    assert conf["sync_pairs"] == ["a", "b", "c"]


def test_conf_rejects_unknown_boolean() -> None:
    with pytest.raises(ValueError, match="FORCE must be one of"):
        sync_conf.build_conf({"FORCE": "maybe"})


def test_settings_file_has_sandbox_entries_only() -> None:
    settings = settings_loader.read_settings(REPO_ROOT / "airflow_settings.yaml")
    connections = {entry["conn_id"]: entry for entry in settings["connections"]}
    assert set(connections) == {
        "gohighlevel_default",
        "memberstack_default",
        "gohighlevel_demo_a",
        "memberstack_demo_a",
        "gohighlevel_demo_b",
        "memberstack_demo_b",
    }
    for entry in connections.values():
        assert entry["conn_host"].startswith("http://127.0.0.1:")
    secrets = [e.get("conn_password") for e in connections.values() if e.get("conn_password")]
    assert all(value.startswith(("pit-sandbox-", "sk_sb_demo_")) for value in secrets)
    assert [(p["pool_name"], p["pool_slot"]) for p in settings["pools"]] == [("memberstack_api", 1)]
    variables = {v["variable_name"]: v["variable_value"] for v in settings["variables"]}
    assert variables == {"ghl_memberstack_sync_pairs": "sync_pairs.demo.yaml"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("connections: []", "top-level 'airflow' mapping", id="no-airflow-key"),
        pytest.param("airflow:\n  pools: {}", "airflow.pools must be a list", id="pools-type"),
        pytest.param("airflow:\n  connections:\n    - conn_type: http", "missing ['conn_id']", id="missing-id"),
        pytest.param("airflow:\n  variables:\n    - variable_name: a\n      value: 1", "unknown keys ['value']", id="unknown-key"),
    ],
)
def test_invalid_settings_file_is_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "airflow_settings.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(settings_loader.SettingsFileError) as error:
        settings_loader.read_settings(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)
