"""Timeouts, retry delays, rate limits and token-store timings of both hooks, read from the environment.

Every value has an environment variable and a default, listed in ``SETTINGS``. Tests and benchmarks
pass a ``Settings`` object to the hooks (or set the variables) so that retries wait zero seconds and
limits match the sandbox.

==========================================  ========  ===============================================
Environment variable                        Default   Meaning
==========================================  ========  ===============================================
GHL_MEMBERSTACK_CONNECT_TIMEOUT_S           10        seconds to open a TCP/TLS connection
GHL_MEMBERSTACK_READ_TIMEOUT_S              30        seconds to wait for response bytes (also write
                                                      and pool timeouts)
GHL_MEMBERSTACK_RETRY_ATTEMPTS              5         attempts per request, the first one included
GHL_MEMBERSTACK_RETRY_BASE_DELAY_S          1         backoff base: attempt n waits up to base * 2**n
GHL_MEMBERSTACK_RETRY_MAX_DELAY_S           30        maximum backoff delay before jitter
GHL_MEMBERSTACK_RETRY_AFTER_MAX_S           300       maximum honoured ``Retry-After`` value
GHL_RATE_LIMIT_MAX                          100       GHL requests per interval and location, used
                                                      until a response carries ``X-RateLimit-Max``
GHL_RATE_LIMIT_INTERVAL_S                   10        GHL burst interval in seconds, used until a
                                                      response carries the interval header
GHL_DAILY_LIMIT                             200000    GHL requests per day and location, used until a
                                                      response carries ``X-RateLimit-Limit-Daily``
GHL_DAILY_BUDGET_SHARE                      0.8       share of the daily limit this project may use;
                                                      the rest stays for other clients
GHL_MAX_WORKERS                             8         threads of ``GoHighLevelHook.map_concurrently``
MEMBERSTACK_RATE_LIMIT_PER_S                25        Memberstack requests per second and process
MEMBERSTACK_MAX_WORKERS                     8         threads of ``MemberstackHook.map_concurrently``
GHL_TOKEN_LEASE_TTL_S                       60        seconds a token-store lease lives unless released
GHL_TOKEN_LEASE_WAIT_S                      120       seconds to wait for another refresher's lease
GHL_TOKEN_LEASE_POLL_S                      0.05      seconds between lease checks while waiting
GHL_TOKEN_REFRESH_MARGIN_MAX_S              60        refresh this many seconds before expiry, at most
GHL_TOKEN_REFRESH_MARGIN_SHARE              0.2       ... or this share of ``expires_in`` if smaller
GHL_TOKEN_REFRESH_ATTEMPTS                  4         refresh attempts on a 5xx or transport error
==========================================  ========  ===============================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Settings:
    """Tunable values of the hooks, the limiters and the token store (see the module table)."""

    connect_timeout_s: float = dataclasses.field(
        default=10.0, metadata={"env": "GHL_MEMBERSTACK_CONNECT_TIMEOUT_S"}
    )
    read_timeout_s: float = dataclasses.field(
        default=30.0, metadata={"env": "GHL_MEMBERSTACK_READ_TIMEOUT_S"}
    )
    retry_attempts: int = dataclasses.field(default=5, metadata={"env": "GHL_MEMBERSTACK_RETRY_ATTEMPTS"})
    retry_base_delay_s: float = dataclasses.field(
        default=1.0, metadata={"env": "GHL_MEMBERSTACK_RETRY_BASE_DELAY_S"}
    )
    retry_max_delay_s: float = dataclasses.field(
        default=30.0, metadata={"env": "GHL_MEMBERSTACK_RETRY_MAX_DELAY_S"}
    )
    retry_after_max_s: float = dataclasses.field(
        default=300.0, metadata={"env": "GHL_MEMBERSTACK_RETRY_AFTER_MAX_S"}
    )
    ghl_rate_limit_max: int = dataclasses.field(default=100, metadata={"env": "GHL_RATE_LIMIT_MAX"})
    ghl_rate_limit_interval_s: float = dataclasses.field(
        default=10.0, metadata={"env": "GHL_RATE_LIMIT_INTERVAL_S"}
    )
    ghl_daily_limit: int = dataclasses.field(default=200_000, metadata={"env": "GHL_DAILY_LIMIT"})
    ghl_daily_budget_share: float = dataclasses.field(default=0.8, metadata={"env": "GHL_DAILY_BUDGET_SHARE"})
    ghl_max_workers: int = dataclasses.field(default=8, metadata={"env": "GHL_MAX_WORKERS"})
    memberstack_rate_limit_per_s: float = dataclasses.field(
        default=25.0, metadata={"env": "MEMBERSTACK_RATE_LIMIT_PER_S"}
    )
    memberstack_max_workers: int = dataclasses.field(default=8, metadata={"env": "MEMBERSTACK_MAX_WORKERS"})
    token_lease_ttl_s: float = dataclasses.field(default=60.0, metadata={"env": "GHL_TOKEN_LEASE_TTL_S"})
    token_lease_wait_s: float = dataclasses.field(default=120.0, metadata={"env": "GHL_TOKEN_LEASE_WAIT_S"})
    token_lease_poll_s: float = dataclasses.field(default=0.05, metadata={"env": "GHL_TOKEN_LEASE_POLL_S"})
    token_refresh_margin_max_s: float = dataclasses.field(
        default=60.0, metadata={"env": "GHL_TOKEN_REFRESH_MARGIN_MAX_S"}
    )
    token_refresh_margin_share: float = dataclasses.field(
        default=0.2, metadata={"env": "GHL_TOKEN_REFRESH_MARGIN_SHARE"}
    )
    token_refresh_attempts: int = dataclasses.field(default=4, metadata={"env": "GHL_TOKEN_REFRESH_ATTEMPTS"})

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value < 0:
                raise ValueError(f"{field.metadata['env']} must not be negative, got {value!r}.")
        if not 0 < self.ghl_daily_budget_share <= 1:
            raise ValueError(
                f"GHL_DAILY_BUDGET_SHARE must be in (0, 1], got {self.ghl_daily_budget_share!r}."
            )
        for name in ("retry_attempts", "token_refresh_attempts", "ghl_rate_limit_max", "ghl_max_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_env_name(name)} must be at least 1, got {getattr(self, name)!r}.")
        if self.memberstack_rate_limit_per_s <= 0 or self.ghl_rate_limit_interval_s <= 0:
            raise ValueError("MEMBERSTACK_RATE_LIMIT_PER_S and GHL_RATE_LIMIT_INTERVAL_S must be positive.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from environment variables, then apply keyword overrides.

        :raises ValueError: a variable is not a number; the message names the variable.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(field.metadata["env"], "").strip()
            if raw:
                values[field.name] = _parse_number(field.metadata["env"], raw, field.type)
        values.update(overrides)
        return cls(**values)


def _env_name(field_name: str) -> str:
    return next(f.metadata["env"] for f in dataclasses.fields(Settings) if f.name == field_name)


def _parse_number(env_name: str, raw: str, type_name: Any) -> int | float:
    try:
        return int(raw) if type_name in (int, "int") else float(raw)
    except ValueError:
        raise ValueError(f"{env_name} must be a number, got {raw!r}.") from None


# Environment variable name -> default, for docs and the README.
SETTINGS: dict[str, Any] = {f.metadata["env"]: f.default for f in dataclasses.fields(Settings)}
