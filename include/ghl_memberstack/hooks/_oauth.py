"""Single-flight refresh of a rotating GoHighLevel OAuth grant through a ``TokenStore``.

GoHighLevel refresh tokens are single-use: each refresh returns a new refresh token and invalidates
the old one. So only one refresher at a time may post a refresh token, and the new pair must be
stored before it is used. The refresher holds the grant's lease, re-reads the store (another
process may have refreshed meanwhile), refreshes, writes the new pair with the next generation,
reads it back, and only then hands out the access token. A failed refresh never writes the store.

Refresh failures are classified: ``invalid_grant`` raises ``GoHighLevelAuthError`` at once,
"Location is not active" raises ``GoHighLevelLocationInactiveError``, and a 429, 5xx or transport
error is retried with backoff after re-reading the store. If an earlier attempt may have reached
GoHighLevel and a later one gets ``invalid_grant``, the first reply was lost after GoHighLevel
rotated the token, so the error reports the grant as dead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx
import tenacity

from ghl_memberstack.exceptions import (
    GoHighLevelAuthError,
    GoHighLevelConfigError,
    GoHighLevelLocationInactiveError,
    GoHighLevelRequestError,
    TokenStoreError,
)
from ghl_memberstack.hooks._http import NOT_SENT_ERRORS, error_detail, full_jitter_delay, retry_after_seconds
from ghl_memberstack.settings import Settings
from ghl_memberstack.token_store import TokenPair, TokenStore, fingerprint

TOKEN_ROUTE = "POST /oauth/token"
# A connection whose refresh_token extra is this value was seeded by `make authorize`. The store
# contains the pair, and the connection never reseeds it.
STORE_SEEDED_MARKER = "token-store"
DEFAULT_EXPIRES_IN_S = 86399
REAUTHORISE_HINT = (
    "Re-authorise: open the app's install link for this location, then run "
    "`make authorize CODE=<code from the redirect> CONN_ID={conn_id}`."
)

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(key: str) -> threading.Lock:
    """Return the lock that lets one thread per process and grant go to the store at a time."""
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.Lock())


class _TransientRefreshError(Exception):
    """A refresh attempt failed in a way that a later attempt may fix."""

    def __init__(self, status: int | None, reason: str, *, maybe_processed: bool, retry_after: float | None):
        super().__init__(reason)
        self.status = status
        self.maybe_processed = maybe_processed
        self.retry_after = retry_after


class OAuthTokenManager:
    """Hands out access tokens of one grant, refreshing through the store when they are due."""

    def __init__(
        self,
        *,
        conn_id: str,
        client: httpx.Client,
        client_id: str,
        client_secret: str,
        seed_refresh_token: str,
        location_id: str,
        store: TokenStore,
        key: str,
        settings: Settings,
        log: logging.Logger,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn_id = conn_id
        self.location_id = location_id
        self.key = key
        self.store = store
        self._client = client
        self._client_id = client_id
        self._client_secret = client_secret
        self._seed = None if seed_refresh_token == STORE_SEEDED_MARKER else seed_refresh_token
        self._settings = settings
        self._log = log
        self._sleep = sleep
        self._clock = clock
        self._cached: TokenPair | None = None
        self.refresh_count = 0

    def access_token(self) -> str:
        """Return an access token that is not due for refresh, refreshing through the store if needed."""
        cached = self._cached
        if cached is not None and cached.is_fresh(self._clock()):
            return cached.access_token  # type: ignore[return-value]
        with _process_lock(self.key):
            stored = self.store.load(self.key)
            if stored is not None and not self._needs_reseed(stored) and stored.is_fresh(self._clock()):
                self._cached = stored
                return stored.access_token  # type: ignore[return-value]
            return self._refresh_under_lease(rejected=None)

    def refresh_after_rejection(self, rejected_token: str) -> str:
        """Return a new access token after the API rejected ``rejected_token`` with HTTP 401.

        If another refresher already stored a different token, that one is returned without a refresh.
        """
        with _process_lock(self.key):
            self._cached = None
            return self._refresh_under_lease(rejected=rejected_token)

    def stored_pair(self) -> TokenPair | None:
        """Return the stored pair without refreshing or seeding (for the connection Test button)."""
        return self.store.load(self.key)

    def _needs_reseed(self, stored: TokenPair) -> bool:
        return self._seed is not None and stored.seed_fingerprint != fingerprint(self._seed)

    def _refresh_under_lease(self, *, rejected: str | None) -> str:
        maybe_processed = False
        with self.store.lease(self.key) as lease:
            retrying = tenacity.Retrying(
                stop=tenacity.stop_after_attempt(self._settings.token_refresh_attempts),
                wait=self._wait_seconds,
                retry=tenacity.retry_if_exception_type(_TransientRefreshError),
                before_sleep=self._log_retry,
                sleep=self._sleep,
                reraise=True,
            )
            try:
                for attempt in retrying:
                    with attempt:
                        lease.renew()
                        try:
                            return self._refresh_once(
                                rejected=rejected, earlier_maybe_processed=maybe_processed
                            )
                        except _TransientRefreshError as error:
                            maybe_processed = maybe_processed or error.maybe_processed
                            raise
            except _TransientRefreshError as error:
                raise self._exhausted_error(error, maybe_processed) from None
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _refresh_once(self, *, rejected: str | None, earlier_maybe_processed: bool) -> str:
        """Re-read the store, reuse a pair another refresher stored, else refresh and store."""
        stored = self._reseeded(self.store.load(self.key))
        now = self._clock()
        if stored.is_fresh(now) and stored.access_token != rejected:
            self._cached = stored
            return stored.access_token  # type: ignore[return-value]
        response = self._post_refresh(stored.refresh_token)
        if response.status_code == 200:
            return self._store_refreshed(stored, response)
        raise self._refresh_failure(response, earlier_maybe_processed=earlier_maybe_processed)

    def _reseeded(self, stored: TokenPair | None) -> TokenPair:
        """Return the stored pair, first seeding or reseeding it from the connection's refresh token."""
        if stored is not None and not self._needs_reseed(stored):
            return stored
        if self._seed is None:
            raise GoHighLevelAuthError(
                f"GoHighLevel connection {self.conn_id!r}: the token store holds no token pair for "
                f"location {self.location_id!r}, and the connection's refresh_token extra says "
                f"{STORE_SEEDED_MARKER!r}. {REAUTHORISE_HINT.format(conn_id=self.conn_id)}"
            )
        seeded = TokenPair(
            refresh_token=self._seed,
            seed_fingerprint=fingerprint(self._seed),
            generation=1 if stored is None else stored.generation + 1,
            location_id=self.location_id,
        )
        self.store.save(self.key, seeded, expected_generation=None if stored is None else stored.generation)
        self._log.info(
            "%s the token store for location %s from the refresh token of connection %r (generation %d).",
            "Seeded" if stored is None else "Reseeded",
            self.location_id,
            self.conn_id,
            seeded.generation,
        )
        return seeded

    def _post_refresh(self, refresh_token: str) -> httpx.Response:
        form = {
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "user_type": "Location",
        }
        self.refresh_count += 1
        try:
            response = self._client.post("/oauth/token", data=form, headers={"Accept": "application/json"})
            response.read()
        except httpx.TransportError as error:
            if isinstance(error, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
                raise GoHighLevelConfigError(
                    f"GoHighLevel connection {self.conn_id!r}: {TOKEN_ROUTE} cannot be sent "
                    f"({type(error).__name__}). Check the connection's host."
                ) from None
            raise _TransientRefreshError(
                None,
                type(error).__name__,
                maybe_processed=not isinstance(error, NOT_SENT_ERRORS),
                retry_after=None,
            ) from None
        return response

    def _store_refreshed(self, previous: TokenPair, response: httpx.Response) -> str:
        refreshed, granted_location = self._pair_from_reply(previous, response)

        # Store before use: the old refresh token is now dead, so this write is the only copy.
        self._save_with_retry(refreshed, expected_generation=previous.generation)
        self._cached = refreshed
        self._log.info(
            "Refreshed the OAuth token of location %s (generation %d, expires in %.0f s).",
            self.location_id,
            refreshed.generation,
            refreshed.expires_at - refreshed.obtained_at,
        )

        if granted_location and granted_location != self.location_id:
            raise GoHighLevelConfigError(
                f"GoHighLevel connection {self.conn_id!r}: the OAuth grant belongs to location "
                f"{granted_location!r}, but the connection's location_id is {self.location_id!r}. Fix "
                f"location_id, or re-authorise the app on the intended location."
            )
        return refreshed.access_token or ""

    def _pair_from_reply(self, previous: TokenPair, response: httpx.Response) -> tuple[TokenPair, str | None]:
        """Return the new pair of a successful refresh reply, and the location the reply names."""
        try:
            body = response.json()
            access_token = str(body["access_token"])
            refresh_token = str(body["refresh_token"])
        except (ValueError, KeyError, TypeError):
            raise GoHighLevelAuthError(
                f"GoHighLevel connection {self.conn_id!r}: {TOKEN_ROUTE} returned HTTP 200 without "
                f"access_token and refresh_token. The old refresh token is probably used up. "
                f"{REAUTHORISE_HINT.format(conn_id=self.conn_id)}"
            ) from None

        now = self._clock()
        expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN_S)
        settings = self._settings
        margin = min(settings.token_refresh_margin_max_s, settings.token_refresh_margin_share * expires_in)
        refreshed = TokenPair(
            refresh_token=refresh_token,
            seed_fingerprint=previous.seed_fingerprint,
            generation=previous.generation + 1,
            location_id=self.location_id,
            access_token=access_token,
            expires_at=now + expires_in,
            refresh_at=now + expires_in - margin,
            obtained_at=now,
            user_type=str(body.get("userType") or previous.user_type),
            scope=str(body.get("scope") or ""),
        )
        return refreshed, body.get("locationId")

    def _save_with_retry(self, pair: TokenPair, *, expected_generation: int) -> None:
        """Write a refreshed pair, retrying storage I/O errors, because losing it kills the grant."""
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self.store.save(self.key, pair, expected_generation=expected_generation)
                return
            except OSError as error:
                if attempt == attempts:
                    raise TokenStoreError(
                        f"GoHighLevel connection {self.conn_id!r}: the refreshed token pair of location "
                        f"{self.location_id!r} could not be written to the token store "
                        f"({type(error).__name__}: {error}). The previous refresh token is already "
                        f"used, so fix the storage, then {REAUTHORISE_HINT[0].lower()}"
                        f"{REAUTHORISE_HINT[1:].format(conn_id=self.conn_id)}"
                    ) from None
                self._log.warning(
                    "Writing the refreshed token pair of location %s failed (%s); retry %d of %d.",
                    self.location_id,
                    type(error).__name__,
                    attempt,
                    attempts - 1,
                )
                self._sleep(full_jitter_delay(attempt, self._settings))

    def _refresh_failure(self, response: httpx.Response, *, earlier_maybe_processed: bool) -> Exception:
        status = response.status_code
        detail = error_detail(response)
        if status == 429 or status >= 500:
            return _TransientRefreshError(
                status,
                f"HTTP {status}",
                maybe_processed=status >= 500,
                retry_after=retry_after_seconds(response),
            )
        lowered = (detail + " " + response.text[:500]).lower()
        if "location is not active" in lowered:
            return GoHighLevelLocationInactiveError(
                f"GoHighLevel connection {self.conn_id!r}: {TOKEN_ROUTE} returned HTTP {status} "
                f"'Location is not active' for location {self.location_id!r}. The sub-account is "
                f"suspended; the sync skips it until it is re-activated. The stored token is unchanged.",
                location_id=self.location_id,
            )
        if "invalid_grant" in lowered or "invalid grant" in lowered:
            if earlier_maybe_processed:
                return GoHighLevelAuthError(
                    f"GoHighLevel connection {self.conn_id!r}: an earlier {TOKEN_ROUTE} for location "
                    f"{self.location_id!r} got no usable reply, but GoHighLevel had processed it and "
                    f"rotated the refresh token, so the retry got invalid_grant and the grant is dead. "
                    f"{REAUTHORISE_HINT.format(conn_id=self.conn_id)}"
                )
            return GoHighLevelAuthError(
                f"GoHighLevel connection {self.conn_id!r}: {TOKEN_ROUTE} returned HTTP {status} "
                f"invalid_grant for location {self.location_id!r}: the stored refresh token was revoked, "
                f"expired or already used. {REAUTHORISE_HINT.format(conn_id=self.conn_id)}"
            )
        return GoHighLevelAuthError(
            f"GoHighLevel connection {self.conn_id!r}: {TOKEN_ROUTE} returned HTTP {status} "
            f"({detail or 'no detail'}) for location {self.location_id!r}. Check client_id and client_secret; the stored token is "
            f"unchanged."
        )

    def _exhausted_error(
        self, error: _TransientRefreshError, maybe_processed: bool
    ) -> GoHighLevelRequestError:
        message = (
            f"GoHighLevel connection {self.conn_id!r}: {TOKEN_ROUTE} for location {self.location_id!r} "
            f"failed {self._settings.token_refresh_attempts} times, last with {error}. The stored pair is "
            f"unchanged; rerun later."
        )
        if maybe_processed:
            message += (
                " If one of those attempts reached GoHighLevel, its reply was lost and the refresh token "
                "may already be rotated; the next refresh then fails with invalid_grant. "
                + REAUTHORISE_HINT.format(conn_id=self.conn_id)
            )
        return GoHighLevelRequestError(message, status=error.status, outcome_unknown=maybe_processed)

    def _wait_seconds(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, _TransientRefreshError) and error.retry_after is not None:
            return min(error.retry_after, self._settings.retry_after_max_s)
        return full_jitter_delay(retry_state.attempt_number, self._settings)

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        self._log.warning(
            "GoHighLevel connection %r: %s for location %s failed with %s; re-reading the token store "
            "and retrying (%d of %d) in %.2f s.",
            self.conn_id,
            TOKEN_ROUTE,
            self.location_id,
            error,
            retry_state.attempt_number,
            self._settings.token_refresh_attempts - 1,
            retry_state.next_action.sleep if retry_state.next_action else 0.0,
        )
