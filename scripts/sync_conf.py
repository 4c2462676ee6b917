"""Print the ``--conf`` JSON of one sync run, built from DRY_RUN, FULL_REFRESH, FORCE and SYNC_PAIRS.

``make sync`` passes the output to ``airflow dags test ghl_memberstack_sync --conf``. Booleans
accept 1/0, true/false, yes/no and on/off (any case; empty means false). SYNC_PAIRS is a comma or
space separated list of pair names; empty means every pair.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
BOOLEAN_VARIABLES = {"DRY_RUN": "dry_run", "FULL_REFRESH": "full_refresh", "FORCE": "force"}


def parse_boolean(name: str, raw: str) -> bool:
    """Return the boolean an environment value stands for.

    :raises ValueError: the value is not one of the accepted spellings; the message names it.
    """
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 1, 0, true, false, yes, no, on, off; got {raw!r}")


def build_conf(environ: Mapping[str, str]) -> dict[str, Any]:
    """Build the run conf (the DAG's params) from the environment."""
    conf: dict[str, Any] = {
        param: parse_boolean(variable, environ.get(variable, "")) for variable, param in BOOLEAN_VARIABLES.items()
    }
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
