"""Give a new Airflow home its own Fernet key before anything is stored in it.

Airflow 3 writes ``fernet_key =`` empty into a generated airflow.cfg, but the OAuth token store and
connection passwords need one key shared by every process of the home. This writes a minimal
airflow.cfg holding a fresh key when the home has no airflow.cfg yet; Airflow takes every other
option from its defaults. An existing airflow.cfg or an ``AIRFLOW__CORE__FERNET_KEY`` in the
environment is left alone.

Usage: ``python scripts/write_fernet_key.py AIRFLOW_HOME``
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cryptography.fernet import Fernet


def write_fernet_key(home: Path) -> bool:
    """Write ``home/airflow.cfg`` with a new key; return False when nothing needed writing."""
    config = home / "airflow.cfg"
    if os.environ.get("AIRFLOW__CORE__FERNET_KEY") or config.exists():
        return False
    home.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    config.write_text(f"[core]\nfernet_key = {key}\n", encoding="utf-8")
    config.chmod(0o600)
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: write_fernet_key.py AIRFLOW_HOME")
    write_fernet_key(Path(sys.argv[1]))
