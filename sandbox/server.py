"""The ASGI application both emulators share: request pipeline, admin routes and persistence."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from sandbox.core import (
    BEFORE_PROCESSING_FAULTS,
    DEFAULT_CONFIG,
    ApiError,
    Call,
    Clock,
    ConfigError,
    FaultInjector,
    IdFactory,
    Reply,
    Route,
    Router,
    Stats,
    copy_json,
    drop_connection,
    json_reply,
    read_body,
    send_reply,
    validate_config,
)
from sandbox.seeding import SeedError, validate_seed

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/_sandbox/"
# Writes are saved to SANDBOX_STATE_DIR at most this often, because a save of the demo state
# blocks the event loop for tens of milliseconds.
PERSIST_DELAY_S = 2.0


class EmulatorServer:
    """Base ASGI app: runs every emulated request through gates, faults and the handler.

    Subclasses set `name`, register routes in `register_routes`, build their state in
    `load_state`, dump it in `dump_state`, and fill in the gate and error hooks.
    """

    name = "emulator"
    counter_groups: dict[str, tuple[str, ...]] = {}

    def __init__(self, seed_part: dict[str, Any] | None, *, config: dict[str, Any] | None = None,
                 state_dir: str | os.PathLike[str] | None = None) -> None:
        self.clock = Clock()
        self.config: dict[str, Any] = copy_json(DEFAULT_CONFIG)
        self.config.update(validate_config(config or {}))
        self.stats = Stats(self.counter_groups)
        self.fault_injector = FaultInjector(self.config["random_seed"])
        self.ids = IdFactory(self.config["random_seed"])
        self.router = Router()
        self.register_routes()
        self._seed_part = copy_json(seed_part or {})
        self._state_path = Path(state_dir) / f"{self.name}.json" if state_dir else None
        self._dirty = False
        self._flush_handle: asyncio.TimerHandle | None = None
        # Set on shutdown, so requests held by timeout faults end at once instead of delaying it.
        self._release_holds: asyncio.Event | None = None
        self.load_state(self._initial_state())

    # -- hooks for subclasses ------------------------------------------------------------------

    def register_routes(self) -> None:
        """Add the emulated routes to `self.router`."""
        raise NotImplementedError

    def load_state(self, part: dict[str, Any]) -> None:
        """Replace the whole state with the server's part of a seed; raise SeedError if invalid.

        The server takes ownership of `part` and may change it.
        """
        raise NotImplementedError

    def dump_state(self) -> dict[str, Any]:
        """Return the whole state as the server's part of a seed.

        The result shares objects with the live state, so encode it before the next request.
        """
        raise NotImplementedError

    def error_reply(self, status: int, message: str) -> Reply:
        """Build the API's error body for a status and message."""
        raise NotImplementedError

    def fault_reply(self, kind: str, call: Call) -> Reply:
        """Build the reply of an injected status fault ("429", "500", "502" or "503")."""
        raise NotImplementedError

    def gate_before_faults(self, route: Route, call: Call) -> Reply | None:
        """Check a request before fault injection; return an error reply to stop it."""
        return None

    def gate_after_faults(self, route: Route, call: Call) -> Reply | None:
        """Check a request after fault injection; return an error reply to stop it."""
        return None

    def decorate(self, route: Route | None, call: Call | None, reply: Reply) -> None:
        """Add headers that every reply of a route carries."""

    def allowed_faults(self, route: Route) -> tuple[str, ...]:
        """Return the fault kinds that may hit a route."""
        return BEFORE_PROCESSING_FAULTS + ("timeout_after",)

    def on_config_change(self, changed: dict[str, Any]) -> None:
        """React to config keys that were just set."""

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        body = await read_body(receive)
        if path.startswith(ADMIN_PREFIX):
            await send_reply(send, self._admin(scope, path, body))
            return
        await self._emulate(scope, body, send)

    async def _lifespan(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.flush_state()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- emulated routes -----------------------------------------------------------------------

    def invalid_json(self) -> ApiError:
        """Return the error raised for a body that is not JSON."""
        return ApiError(self.error_reply(400, "Request body is not valid JSON"))

    async def _emulate(self, scope: dict[str, Any], body: bytes, send: Callable[..., Any]) -> None:
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        raw_path_text = raw_path.decode("latin-1").split("?", 1)[0]
        if self.config["latency_ms"] > 0:
            await asyncio.sleep(self.config["latency_ms"] / 1000)
        matched = self.router.match(method, raw_path_text)
        if matched is None:
            reply = self.error_reply(404, f"Cannot {method} {scope['path']}")
            self.decorate(None, None, reply)
            self.stats.record(f"{method} <unmatched>", str(reply.status))
            await send_reply(send, reply)
            return
        route, params = matched
        call = Call(scope, params, body, self.invalid_json)
        status = await self._process(route, call, send)
        self.stats.record(route.key, status)
        if method != "GET":
            self.mark_dirty()

    async def _process(self, route: Route, call: Call, send: Callable[..., Any]) -> str:
        """Run one request and return its stats status: a code, or "reset" / "timeout"."""
        reply = self.gate_before_faults(route, call)
        kind = None
        if reply is None:
            kind = self.fault_injector.draw(self.config["faults"], self.allowed_faults(route))
            if kind is not None:
                self.stats.faults[kind] += 1
            if kind in ("reset", "timeout"):
                return await self._drop(kind, send)
            if kind is not None and kind != "timeout_after":
                reply = self.fault_reply(kind, call)
                if kind == "429" and self.config["fault_retry_after_s"] is not None:
                    reply.headers.append(("Retry-After", str(self.config["fault_retry_after_s"])))
            else:
                reply = self.gate_after_faults(route, call) or self._run_handler(route, call)
                if reply.status < 300 and kind is None:
                    reply = self._error_after_processing(route, call, reply)
        if kind == "timeout_after":
            return await self._drop("timeout_after", send)
        self.decorate(route, call, reply)
        await send_reply(send, reply)
        return str(reply.status)

    def _error_after_processing(self, route: Route, call: Call, reply: Reply) -> Reply:
        """Swap a success for HTTP 500 while the `error_after_processing` count of the route lasts.

        The change the handler made stays, as when a server fails after committing a write.
        """
        remaining = self.config["error_after_processing"].get(route.key, 0)
        if remaining <= 0:
            return reply
        self.config["error_after_processing"][route.key] = remaining - 1
        self.stats.faults["error_after_processing"] += 1
        return self.fault_reply("500", call)

    def _run_handler(self, route: Route, call: Call) -> Reply:
        try:
            return route.handler(call)
        except ApiError as error:
            return error.reply
        except Exception:
            log.exception("%s failed with an unexpected error", route.key)
            return self.error_reply(500, "Internal server error")

    async def _drop(self, kind: str, send: Callable[..., Any]) -> str:
        # "reset" drops at once. "timeout" and "timeout_after" hold the request first, so a
        # client with a shorter timeout gets its own timeout error.
        if kind != "reset":
            await self._hold(self.config["timeout_hold_s"])
        await drop_connection(send)
        return "reset" if kind == "reset" else "timeout"

    async def _hold(self, seconds: float) -> None:
        if self._release_holds is None:
            self._release_holds = asyncio.Event()
        try:
            await asyncio.wait_for(self._release_holds.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def release_holds(self) -> None:
        """End every request held by a timeout fault; call it from the server's event loop."""
        if self._release_holds is not None:
            self._release_holds.set()

    # -- admin routes --------------------------------------------------------------------------

    def _admin(self, scope: dict[str, Any], path: str, body: bytes) -> Reply:
        action = path[len(ADMIN_PREFIX):].rstrip("/")
        method = scope["method"]
        try:
            payload = json.loads(body) if body.strip() else None
        except ValueError:
            return json_reply(400, {"error": "request body is not valid JSON"})
        try:
            return self._admin_action(method, action, payload)
        except (ConfigError, SeedError, ValueError) as error:
            return json_reply(400, {"error": str(error)})

    def _admin_action(self, method: str, action: str, payload: Any) -> Reply:
        if action == "state" and method == "GET":
            return json_reply(200, {self.name: self.dump_state()})
        if action == "stats" and method == "GET":
            return json_reply(200, self.stats.snapshot())
        if action == "config" and method == "GET":
            return json_reply(200, self.config)
        if action == "config" and method == "PUT":
            changed = validate_config(payload if payload is not None else {})
            self.config.update(changed)
            self.on_config_change(changed)
            log.info("%s sandbox config changed: %s", self.name, ", ".join(sorted(changed)) or "nothing")
            return json_reply(200, self.config)
        if action == "reset" and method == "POST":
            self.reset(payload)
            return json_reply(200, {"reset": True, "seed": "given" if payload else "initial"})
        if action == "clock" and method == "GET":
            return json_reply(200, self.clock.describe())
        if action == "clock" and method == "POST":
            return json_reply(200, self._move_clock(payload))
        return json_reply(404, {"error": f"no admin route {method} {ADMIN_PREFIX}{action}"})

    def _move_clock(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict) or not set(payload) <= {"advance_s", "frozen"} or not payload:
            raise ValueError('clock body must be {"advance_s": seconds} and/or {"frozen": true|false}')
        if "frozen" in payload:
            if not isinstance(payload["frozen"], bool):
                raise ValueError("frozen must be true or false")
            self.clock.set_frozen(payload["frozen"])
        if "advance_s" in payload:
            seconds = payload["advance_s"]
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise ValueError(f"advance_s must be a number of seconds, got {seconds!r}")
            self.clock.advance(float(seconds))
        return self.clock.describe()

    def reset(self, seed: Any = None) -> None:
        """Go back to the initial seed, or to `seed` (in the full seed format); clear stats.

        Raises SeedError for an invalid seed and keeps the current state then.
        """
        if seed is not None:
            validate_seed(seed)
            part = seed.get(self.name) or {}
        else:
            part = self._seed_part
        self.ids.reseed(self.config["random_seed"])
        self.fault_injector.reseed(self.config["random_seed"])
        self.load_state(copy_json(part))
        if seed is not None:
            self._seed_part = copy_json(part)
        self.stats.clear()
        self.mark_dirty()
        log.info("%s sandbox reset to the %s seed", self.name, "given" if seed is not None else "initial")

    # -- persistence ---------------------------------------------------------------------------

    def _initial_state(self) -> dict[str, Any]:
        if self._state_path is None or not self._state_path.exists():
            return copy_json(self._seed_part)
        try:
            saved = json.loads(self._state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SeedError(f"cannot read saved state {self._state_path}: {error}") from None
        validate_seed(saved)
        log.info("%s sandbox resumes the state saved in %s", self.name, self._state_path)
        return saved.get(self.name) or {}

    def mark_dirty(self) -> None:
        """Schedule a save of the state when SANDBOX_STATE_DIR is set."""
        if self._state_path is None:
            return
        self._dirty = True
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush_state()
                return
            self._flush_handle = loop.call_later(PERSIST_DELAY_S, self.flush_state)

    def flush_state(self) -> None:
        """Write the state to SANDBOX_STATE_DIR now if it changed; the file is replaced atomically."""
        self._flush_handle = None
        if self._state_path is None or not self._dirty:
            return
        self._dirty = False
        data = json.dumps({self.name: self.dump_state()}, ensure_ascii=False, separators=(",", ":")).encode()
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.name}-", dir=self._state_path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp_name, self._state_path)
        except OSError:
            log.exception("could not save the %s sandbox state to %s", self.name, self._state_path)
            Path(tmp_name).unlink(missing_ok=True)
