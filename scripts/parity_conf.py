"""Print the ``--conf`` JSON of one parity run, built from REPAIR, DRY_RUN, FORCE and SYNC_PAIRS.

``make parity`` passes the output to ``airflow dags test ghl_memberstack_parity --conf``. Booleans
accept the spellings of ``sync_conf.py``. An empty REPAIR leaves the ``repair`` Param at its default
(the setting ``GHL_MEMBERSTACK_PARITY_REPAIR``, on when unset).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from sync_conf import parse_boolean

BOOLEAN_VARIABLES = {"DRY_RUN": "dry_run", "FORCE": "force"}


def build_conf(environ: Mapping[str, str]) -> dict[str, Any]:
    """Build the run conf (the parity DAG's params) from the environment."""
    conf: dict[str, Any] = {
        param: parse_boolean(variable, environ.get(variable, ""))
        for variable, param in BOOLEAN_VARIABLES.items()
    }
    repair = environ.get("REPAIR", "")
    if repair.strip():
        conf["repair"] = parse_boolean("REPAIR", repair)
    conf["sync_pairs"] = [name for name in re.split(r"[,\s]+", environ.get("SYNC_PAIRS", "")) if name]
    return conf


def main() -> int:
    """Print the conf JSON; return 2 with a message on an invalid value."""
    try:
        conf = build_conf(os.environ)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(conf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
