"""Run both emulators in one event loop, in the foreground or in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from sandbox.ghl import GhlServer
from sandbox.memberstack import MemberstackServer
from sandbox.seeding import default_seed

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 30.0


class _Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to the runner, so two servers share one loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket; port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # asyncio's default loop sets TCP_NODELAY only on sockets made with IPPROTO_TCP; without it each
    # reply (headers and body written separately) waits about 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Sandbox:
    """Both emulators with their listening sockets, ready to serve."""

    def __init__(self, *, seed: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                 state_dir: str | os.PathLike[str] | None = None, host: str = "127.0.0.1",
                 ghl_port: int = 0, memberstack_port: int = 0) -> None:
        seed = default_seed() if seed is None else seed
        self.ghl = GhlServer(seed.get("ghl"), config=config, state_dir=state_dir)
        self.memberstack = MemberstackServer(seed.get("memberstack"), config=config, state_dir=state_dir)
        self._sockets = [bind_socket(host, ghl_port), bind_socket(host, memberstack_port)]
        self.ghl_url = _url(self._sockets[0])
        self.memberstack_url = _url(self._sockets[1])
        self._servers = [self._uvicorn(self.ghl), self._uvicorn(self.memberstack)]
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def _uvicorn(app: Any) -> _Server:
        config = uvicorn.Config(app, lifespan="on", access_log=False, log_config=None,
                                log_level="warning", timeout_graceful_shutdown=2)
        return _Server(config)

    @property
    def started(self) -> bool:
        """True once both servers accept connections."""
        return all(server.started for server in self._servers)

    async def serve(self) -> None:
        """Serve both emulators until `request_stop` is called."""
        self._loop = asyncio.get_running_loop()
        await asyncio.gather(
            self._servers[0].serve(sockets=[self._sockets[0]]),
            self._servers[1].serve(sockets=[self._sockets[1]]),
        )

    def request_stop(self) -> None:
        """Ask both servers to finish; safe to call from any thread."""
        for server in self._servers:
            server.should_exit = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for app in (self.ghl, self.memberstack):
                try:
                    loop.call_soon_threadsafe(app.release_holds)
                except RuntimeError:
                    # The loop closed between the check and the call; nothing is held any more.
                    pass

    def start_in_thread(self) -> None:
        """Serve in a daemon thread and return once both servers accept connections.

        Raises RuntimeError when the servers do not start within the startup timeout.
        """
        started = threading.Event()

        def run() -> None:
            try:
                asyncio.run(self._serve_and_signal(started))
            except BaseException as error:  # reported to the starting thread below
                self._thread_error = error
                started.set()

        self._thread = threading.Thread(target=run, name="sandbox-servers", daemon=True)
        self._thread.start()
        if not started.wait(STARTUP_TIMEOUT_S) or self._thread_error is not None:
            self.stop()
            raise RuntimeError(f"sandbox servers did not start: {self._thread_error!r}")

    async def _serve_and_signal(self, started: threading.Event) -> None:
        serving = asyncio.ensure_future(self.serve())
        while not self.started and not serving.done():
            await asyncio.sleep(0.01)
        started.set()
        await serving

    def stop(self) -> None:
        """Stop the servers started by `start_in_thread` and wait for the thread."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.warning("sandbox server thread did not stop within 10 s")
            self._thread = None
        for sock in self._sockets:
            sock.close()
