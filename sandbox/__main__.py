"""`python -m sandbox`: serve both emulators in the foreground until SIGINT or SIGTERM.

Settings come from environment variables; the README's "Sandbox" section lists them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from sandbox.core import ConfigError, validate_config
from sandbox.runner import Sandbox
from sandbox.seeding import SeedError, load_seed_file
from sandbox.testing import READY_PREFIX

log = logging.getLogger("sandbox")


def _port(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} must be between 0 and 65535, got {port}")
    return port


def _initial_config() -> dict[str, Any]:
    text = os.environ.get("SANDBOX_CONFIG", "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"SANDBOX_CONFIG is not valid JSON: {error}") from None
    return validate_config(config)


def _build() -> Sandbox:
    seed_path = os.environ.get("SANDBOX_SEED", "").strip()
    seed = load_seed_file(seed_path) if seed_path else None
    return Sandbox(
        seed=seed,
        config=_initial_config(),
        state_dir=os.environ.get("SANDBOX_STATE_DIR", "").strip() or None,
        host=os.environ.get("SANDBOX_HOST", "127.0.0.1"),
        ghl_port=_port("GHL_SANDBOX_PORT", 8701),
        memberstack_port=_port("MEMBERSTACK_SANDBOX_PORT", 8702),
    )


async def _serve(sandbox: Sandbox) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, sandbox.request_stop)
    serving = asyncio.ensure_future(sandbox.serve())
    while not sandbox.started and not serving.done():
        await asyncio.sleep(0.01)
    if sandbox.started:
        log.info("GHL sandbox on %s, Memberstack sandbox on %s", sandbox.ghl_url, sandbox.memberstack_url)
        ready = {"ghl_url": sandbox.ghl_url, "memberstack_url": sandbox.memberstack_url}
        print(READY_PREFIX + json.dumps(ready), flush=True)
    await serving
    log.info("sandbox stopped")


def main() -> int:
    """Start both servers and serve until stopped; return the exit code."""
    logging.basicConfig(level=os.environ.get("SANDBOX_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        sandbox = _build()
    except (SeedError, ConfigError, ValueError, OSError) as error:
        log.error("sandbox cannot start: %s", error)
        return 2
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(sandbox))
    else:
        uvloop.run(_serve(sandbox))
    return 0


if __name__ == "__main__":
    sys.exit(main())
