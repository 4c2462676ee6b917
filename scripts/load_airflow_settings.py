"""Load an Astro-format airflow_settings.yaml into the metadata database of $AIRFLOW_HOME.

The Astro CLI loads this file for ``astro dev start``. This script does the same without the Astro
CLI, so ``make sync`` and ``make airflow`` get the sandbox connections, the ``memberstack_api`` pool
and the Variables on a home they create. Existing entries with the same id are replaced. Connections
and Variables from ``AIRFLOW_CONN_*`` and ``AIRFLOW_VAR_*`` environment variables still win at
run time, because Airflow reads the environment before the database.

Usage: ``python scripts/load_airflow_settings.py [airflow_settings.yaml]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("load_airflow_settings")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONNECTION_KEYS = {
    "conn_id",
    "conn_type",
    "conn_host",
    "conn_schema",
    "conn_login",
    "conn_password",
    "conn_port",
    "conn_extra",
    "conn_description",
}
POOL_KEYS = {"pool_name", "pool_slot", "pool_description"}
VARIABLE_KEYS = {"variable_name", "variable_value"}


class SettingsFileError(ValueError):
    """The settings file is not in the Astro airflow_settings.yaml format."""


def read_settings(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Read and check the file; return its connections, pools and variables lists.

    :raises SettingsFileError: naming the file, the entry and the problem.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SettingsFileError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise SettingsFileError(f"{path}: invalid YAML: {error}") from error
    section = document.get("airflow") if isinstance(document, dict) else None
    if not isinstance(section, dict):
        raise SettingsFileError(f"{path}: expected a top-level 'airflow' mapping")

    settings: dict[str, list[dict[str, Any]]] = {}
    for name, allowed, required in (
        ("connections", CONNECTION_KEYS, ("conn_id", "conn_type")),
        ("pools", POOL_KEYS, ("pool_name", "pool_slot")),
        ("variables", VARIABLE_KEYS, ("variable_name", "variable_value")),
    ):
        entries = section.get(name)
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise SettingsFileError(f"{path}: airflow.{name} must be a list")
        for index, entry in enumerate(entries):
            where = f"{path}: airflow.{name}[{index}]"
            if not isinstance(entry, dict):
                raise SettingsFileError(f"{where}: expected a mapping")
            unknown = sorted(set(entry) - allowed)
            if unknown:
                raise SettingsFileError(f"{where}: unknown keys {unknown}; allowed keys are {sorted(allowed)}")
            missing = [key for key in required if entry.get(key) in (None, "")]
            if missing:
                raise SettingsFileError(f"{where}: missing {missing}")
        settings[name] = entries
    return settings


def _extra_text(extra: Any) -> str | None:
    if extra in (None, ""):
        return None
    if isinstance(extra, str):
        return extra
    return json.dumps(extra)


def load(settings: dict[str, list[dict[str, Any]]]) -> None:
    """Write the connections, pools and variables into the metadata database."""
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        for entry in settings["connections"]:
            conn_id = str(entry["conn_id"])
            for existing in session.query(Connection).filter(Connection.conn_id == conn_id):
                session.delete(existing)
            session.flush()
            port = entry.get("conn_port")
            session.add(
                Connection(
                    conn_id=conn_id,
                    conn_type=str(entry["conn_type"]),
                    description=entry.get("conn_description"),
                    host=entry.get("conn_host"),
                    schema=entry.get("conn_schema"),
                    login=entry.get("conn_login"),
                    password=entry.get("conn_password"),
                    port=int(port) if port not in (None, "") else None,
                    extra=_extra_text(entry.get("conn_extra")),
                )
            )
            _warn_if_shadowed(f"AIRFLOW_CONN_{conn_id.upper()}", "connection", conn_id)
        for entry in settings["pools"]:
            Pool.create_or_update_pool(
                name=str(entry["pool_name"]),
                slots=int(entry["pool_slot"]),
                description=str(entry.get("pool_description") or ""),
                include_deferred=False,
                session=session,
            )
        for entry in settings["variables"]:
            key = str(entry["variable_name"])
            value = entry["variable_value"]
            text = value if isinstance(value, str) else json.dumps(value)
            Variable.set(key, text, session=session)
            _warn_if_shadowed(f"AIRFLOW_VAR_{key.upper()}", "Variable", key)
    log.info(
        "Loaded %d connections, %d pools and %d variables",
        len(settings["connections"]),
        len(settings["pools"]),
        len(settings["variables"]),
    )


def _warn_if_shadowed(env_name: str, kind: str, name: str) -> None:
    if env_name in os.environ:
        log.info("The %s %s is also set by %s, which takes precedence at run time", kind, name, env_name)


def main(argv: list[str] | None = None) -> int:
    """Load the settings file named on the command line; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", nargs="?", default=str(REPO_ROOT / "airflow_settings.yaml"), help="the settings file"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = read_settings(Path(args.path))
    except SettingsFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    load(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
