"""Start the sandbox from tests: `with running_sandbox() as sb: ...`.

The servers listen on free loopback ports, either in a background thread of the test process
(the default) or in a `python -m sandbox` subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess as subprocess_module
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx

from sandbox.seeding import validate_seed

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_PREFIX = "SANDBOX_READY "
SUBPROCESS_STARTUP_TIMEOUT_S = 120.0

Which = Literal["ghl", "memberstack"]


class SandboxHandle:
    """URLs of a running sandbox and helpers around its admin routes."""

    def __init__(self, ghl_url: str, memberstack_url: str) -> None:
        self.ghl_url = ghl_url
        self.memberstack_url = memberstack_url
        # trust_env=False keeps proxy variables from routing loopback calls elsewhere.
        self._client = httpx.Client(timeout=60.0, trust_env=False)

    def _url(self, which: Which) -> str:
        if which == "ghl":
            return self.ghl_url
        if which == "memberstack":
            return self.memberstack_url
        raise ValueError(f"which must be 'ghl' or 'memberstack', got {which!r}")

    def _admin(self, method: str, which: Which, action: str, body: Any = None) -> Any:
        response = self._client.request(method, f"{self._url(which)}/_sandbox/{action}",
                                        content=None if body is None else json.dumps(body),
                                        headers={"content-type": "application/json"})
        if response.status_code != 200:
            raise RuntimeError(f"sandbox admin {method} {action} on {which} failed with "
                               f"{response.status_code}: {response.text}")
        return response.json()

    def state(self) -> dict[str, Any]:
        """Return the whole state of both servers in the seed format."""
        return {**self._admin("GET", "ghl", "state"), **self._admin("GET", "memberstack", "state")}

    def stats(self, which: Which) -> dict[str, Any]:
        """Return one server's request stats."""
        return self._admin("GET", which, "stats")

    def config(self, which: Which) -> dict[str, Any]:
        """Return one server's config."""
        return self._admin("GET", which, "config")

    def set_config(self, which: Which, **keys: Any) -> dict[str, Any]:
        """Merge config keys into one server's config and return the whole config."""
        return self._admin("PUT", which, "config", keys)

    def reset(self, seed: dict[str, Any] | None = None) -> None:
        """Reset both servers to their initial seed, or to `seed`, and clear their stats."""
        for which in ("ghl", "memberstack"):
            self._admin("POST", which, "reset", seed)

    def advance_clock(self, seconds: float) -> None:
        """Move the clock of both servers forward."""
        for which in ("ghl", "memberstack"):
            self._admin("POST", which, "clock", {"advance_s": seconds})

    def freeze_clock(self, frozen: bool = True) -> None:
        """Stop (or restart) real time on both servers' clocks; `advance_clock` still moves them."""
        for which in ("ghl", "memberstack"):
            self._admin("POST", which, "clock", {"frozen": frozen})

    def close(self) -> None:
        """Close the admin HTTP client."""
        self._client.close()


@contextlib.contextmanager
def running_sandbox(seed: dict[str, Any] | None = None, config: dict[str, Any] | None = None, *,
                    subprocess: bool = False,
                    state_dir: str | os.PathLike[str] | None = None) -> Iterator[SandboxHandle]:
    """Run both emulators on free loopback ports for the duration of the block.

    `seed` is a seed in the seed format (None means the demo seed) and `config` contains initial
    config keys for both servers. With `subprocess=True` the servers run in `python -m sandbox`.
    Raises SeedError for an invalid seed and ConfigError for an invalid config.
    """
    if seed is not None:
        validate_seed(seed)
    if subprocess:
        with _subprocess_sandbox(seed, config, state_dir) as handle:
            yield handle
        return
    from sandbox.runner import Sandbox

    sandbox = Sandbox(seed=seed, config=config, state_dir=state_dir)
    sandbox.start_in_thread()
    handle = SandboxHandle(sandbox.ghl_url, sandbox.memberstack_url)
    try:
        yield handle
    finally:
        handle.close()
        sandbox.stop()


@contextlib.contextmanager
def _subprocess_sandbox(seed: dict[str, Any] | None, config: dict[str, Any] | None,
                        state_dir: str | os.PathLike[str] | None) -> Iterator[SandboxHandle]:
    with tempfile.TemporaryDirectory(prefix="sandbox-") as work_dir:
        env = dict(os.environ, SANDBOX_HOST="127.0.0.1", GHL_SANDBOX_PORT="0",
                   MEMBERSTACK_SANDBOX_PORT="0", PYTHONUNBUFFERED="1")
        env.pop("SANDBOX_SEED", None)
        env.pop("SANDBOX_STATE_DIR", None)
        if seed is not None:
            seed_path = Path(work_dir) / "seed.json"
            seed_path.write_text(json.dumps(seed), encoding="utf-8")
            env["SANDBOX_SEED"] = str(seed_path)
        env["SANDBOX_CONFIG"] = json.dumps(config or {})
        if state_dir is not None:
            env["SANDBOX_STATE_DIR"] = str(state_dir)
        log_path = Path(work_dir) / "sandbox.log"
        with open(log_path, "wb") as log_file:
            process = subprocess_module.Popen(
                [sys.executable, "-m", "sandbox"], cwd=REPO_ROOT, env=env,
                stdout=subprocess_module.PIPE, stderr=log_file,
            )
            handle = None
            try:
                urls = _wait_until_ready(process, log_path)
                handle = SandboxHandle(urls["ghl_url"], urls["memberstack_url"])
                yield handle
            finally:
                if handle is not None:
                    handle.close()
                _stop_process(process)


def _wait_until_ready(process: subprocess_module.Popen[bytes], log_path: Path) -> dict[str, str]:
    assert process.stdout is not None
    deadline = time.monotonic() + SUBPROCESS_STARTUP_TIMEOUT_S
    buffered = b""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        readable, _, _ = select.select([process.stdout], [], [], 0.2)
        if not readable:
            continue
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            break
        buffered += chunk
        for line in buffered.decode(errors="replace").splitlines():
            if line.startswith(READY_PREFIX):
                return json.loads(line[len(READY_PREFIX):])
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
    raise RuntimeError(f"python -m sandbox did not start (exit code {process.poll()}); log:\n{tail}")


def _stop_process(process: subprocess_module.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess_module.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()
