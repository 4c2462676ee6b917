"""Measure how many small GET requests per second the sandbox serves over keep-alive connections.

Starts ``python -m sandbox`` as a subprocess on two free loopback ports with the demo seed and
turns rate limits and latency off through ``PUT /_sandbox/config``. Client processes then send
requests one after another, each over one keep-alive connection, for a fixed time. The script
prints the rate per server, the latency, the number of connections each client needed (1 means
keep-alive held) and the machine. It exits 1 when a server stays below the goal.

The clients share the machine with the server, so the figure is a lower bound of what the
server alone could do.

    python bench/sandbox_throughput.py [--seconds 5] [--clients 4] [--goal 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import multiprocessing
import os
import platform
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sandbox import seedgen  # noqa: E402  (needs the repo root on sys.path)

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
WARM_UP_S = 0.5


@dataclasses.dataclass(frozen=True)
class Target:
    """One server and the small GET request sent to it."""

    name: str
    base_url: str
    path: str
    headers: dict[str, str]


@dataclasses.dataclass
class ClientResult:
    """Counts and latencies measured by one client process."""

    requests: int
    errors: int
    connections: int
    latencies_ms: list[float]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def start_sandbox(ghl_port: int, memberstack_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start both servers in a subprocess that writes its output to ``log_path``."""
    env = {
        **os.environ,
        "SANDBOX_HOST": LOOPBACK,
        "GHL_SANDBOX_PORT": str(ghl_port),
        "MEMBERSTACK_SANDBOX_PORT": str(memberstack_port),
    }
    env.pop("SANDBOX_SEED", None)
    env.pop("SANDBOX_STATE_DIR", None)
    with open(log_path, "wb") as log_file:
        return subprocess.Popen([sys.executable, "-m", "sandbox"], cwd=REPO_ROOT, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)


def wait_until_ready(process: subprocess.Popen[bytes], base_urls: list[str], log_path: Path) -> None:
    """Poll ``GET /_sandbox/config`` on every server until all respond, or raise RuntimeError."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    pending = list(base_urls)
    while pending:
        if process.poll() is not None:
            raise RuntimeError(f"the sandbox exited with status {process.returncode} during startup:\n"
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sandbox did not respond within {STARTUP_TIMEOUT_S:.0f} s at {pending}")
        try:
            httpx.get(f"{pending[0]}/_sandbox/config", timeout=1.0, trust_env=False).raise_for_status()
            pending.pop(0)
        except httpx.HTTPError:
            time.sleep(0.2)


def configure_for_benchmark(base_url: str) -> dict[str, Any]:
    """Turn rate limits and latency off and return the resulting config."""
    response = httpx.put(f"{base_url}/_sandbox/config",
                         json={"rate_limits": False, "latency_ms": 0, "search_lag_ms": 0}, timeout=10.0,
                         trust_env=False)
    response.raise_for_status()
    return response.json()


def active_faults(config: dict[str, Any]) -> dict[str, float]:
    return {name: rate for name, rate in (config.get("faults") or {}).items() if rate}


def run_client(target: Target, start_at: float, seconds: float, results: multiprocessing.Queue) -> None:
    """Send requests over one keep-alive connection from ``start_at`` for ``seconds``.

    The stdlib ``http.client`` is used instead of httpx because it costs the shared CPUs less per
    request, which leaves more of them to the server being measured.
    """
    host, port = target.base_url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10.0)

    def send() -> int:
        connection.request("GET", target.path, headers=target.headers)
        response = connection.getresponse()
        response.read()
        if response.will_close:
            connection.close()
        return response.status

    while time.time() < start_at - WARM_UP_S:
        time.sleep(0.01)
    while time.time() < start_at:
        send()

    requests = 0
    errors = 0
    # The warm-up left one connection open; every reopening while measuring adds one.
    connections = 1
    latencies_ms: list[float] = []
    end_at = start_at + seconds
    while time.time() < end_at:
        if connection.sock is None:
            connections += 1
        sent_at = time.perf_counter()
        try:
            status = send()
        except (OSError, http.client.HTTPException):
            connection.close()
            errors += 1
            continue
        latencies_ms.append((time.perf_counter() - sent_at) * 1000)
        requests += 1
        if status != 200:
            errors += 1
    connection.close()
    results.put(ClientResult(requests, errors, connections, latencies_ms))


def probe(target: Target) -> int:
    """Send the target's request once and return the response size; raise RuntimeError unless 200."""
    response = httpx.get(f"{target.base_url}{target.path}", headers=target.headers, timeout=10.0,
                         trust_env=False)
    if response.status_code != 200:
        raise RuntimeError(f"{target.name}: GET {target.path} returned {response.status_code}: "
                           f"{response.text[:300]}")
    return len(response.content)


def measure(target: Target, clients: int, seconds: float) -> list[ClientResult]:
    """Run ``clients`` client processes against the target at once and collect their results."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    start_at = time.time() + 1.0 + WARM_UP_S
    processes = [multiprocessing.Process(target=run_client, args=(target, start_at, seconds, results))
                 for _ in range(clients)]
    for process in processes:
        process.start()
    collected = []
    for _ in processes:
        try:
            collected.append(results.get(timeout=seconds + 30))
        except queue.Empty:
            break
    for process in processes:
        process.join(timeout=5)
    if len(collected) < clients:
        raise RuntimeError(f"only {len(collected)} of {clients} client processes reported a result")
    return collected


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    """Return the CPU count that ``nproc`` prints: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def report(target: Target, results: list[ClientResult], seconds: float) -> float:
    """Print one target's figures and return its rate in requests per second."""
    requests = sum(result.requests for result in results)
    errors = sum(result.errors for result in results)
    latencies = sorted(latency for result in results for latency in result.latencies_ms)
    rate = requests / seconds
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99) - 1] if len(latencies) >= 100 else float("nan")
    connections = [result.connections for result in results]
    print(f"{'':12} {rate:8.0f} requests/s  ({requests} in {seconds:.1f} s, {errors} errors)")
    print(f"{'':12} latency p50 {p50:.2f} ms, p99 {p99:.2f} ms; connections per client {connections}")
    return rate


def build_targets(ghl_url: str, memberstack_url: str) -> list[Target]:
    # The demo seed is deterministic, so its first contact exists in the server's copy too.
    contact_id = seedgen.generate_demo_seed()["ghl"]["locations"][0]["contacts"][0]["id"]
    return [
        Target("ghl", ghl_url, f"/contacts/{contact_id}",
               {"Authorization": f"Bearer {seedgen.DEMO_LOCATION_A_PIT}", "Version": "2021-07-28"}),
        Target("memberstack", memberstack_url, "/members/nobody%40example.com",
               {"X-API-KEY": seedgen.DEMO_MEMBERSTACK_KEY_A}),
    ]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per server, in seconds")
    parser.add_argument("--clients", type=int, default=4,
                        help="client processes, each with one keep-alive connection (default 4)")
    parser.add_argument("--goal", type=float, default=1000.0,
                        help="requests per second each server must reach (default 1000)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.clients < 1:
        parser.error("--seconds must be positive and --clients at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    ghl_port = free_port()
    memberstack_port = free_port()
    ghl_url = f"http://{LOOPBACK}:{ghl_port}"
    memberstack_url = f"http://{LOOPBACK}:{memberstack_port}"
    print(f"machine: {usable_cpus()} CPUs (nproc), {cpu_model()}, Python {platform.python_version()}")
    print(f"setup: {args.clients} client processes per server, {args.seconds:.1f} s each, goal "
          f"{args.goal:.0f} requests/s; the clients run on the same CPUs as the sandbox")

    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as scratch:
        log_path = Path(scratch) / "sandbox.log"
        process = start_sandbox(ghl_port, memberstack_port, log_path)
        try:
            wait_until_ready(process, [ghl_url, memberstack_url], log_path)
            rates = {}
            for target in build_targets(ghl_url, memberstack_url):
                faults = active_faults(configure_for_benchmark(target.base_url))
                if faults:
                    print(f"warning: {target.name} has faults enabled: {faults}")
                size = probe(target)
                print(f"{target.name:12} GET {target.path} -> 200, {size} bytes")
                rates[target.name] = report(target, measure(target, args.clients, args.seconds), args.seconds)
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    below_goal = [name for name, rate in rates.items() if rate < args.goal]
    if below_goal:
        print(f"FAILED: below {args.goal:.0f} requests/s: {', '.join(below_goal)}")
        return 1
    print(f"OK: every server reached {args.goal:.0f} requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
