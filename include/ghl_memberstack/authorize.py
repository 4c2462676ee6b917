"""Exchange a GoHighLevel authorization code for the first token pair and seed the token store.

Run it through ``make authorize CODE=<code> CONN_ID=<connection id>``: after the app is installed on a
location, GoHighLevel redirects to the app's redirect URI with ``?code=...``. The connection must
already hold ``client_id`` and ``client_secret`` (and ``location_id``, or it is taken from the grant).
The command stores the pair in the token store and prints the connection as JSON, with
``refresh_token`` set to ``token-store`` and no secret value, ready for ``AIRFLOW_CONN_<ID>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import httpx

from ghl_memberstack.exceptions import GoHighLevelAuthError, GoHighLevelConfigError, GoHighLevelError
from ghl_memberstack.hooks._http import build_client, error_detail, resolve_base_url
from ghl_memberstack.hooks._oauth import DEFAULT_EXPIRES_IN_S, STORE_SEEDED_MARKER
from ghl_memberstack.hooks.gohighlevel import DEFAULT_API_VERSION, DEFAULT_BASE_URL
from ghl_memberstack.settings import Settings
from ghl_memberstack.token_store import ObjectStorageTokenStore, TokenPair, TokenStore, fingerprint, token_key

log = logging.getLogger(__name__)

CODE_ENV_VAR = "GHL_AUTHORIZATION_CODE"
SECRET_PLACEHOLDER = "<unchanged: the client secret of the Marketplace app>"


def authorize(
    conn_id: str,
    code: str,
    *,
    redirect_uri: str | None = None,
    store: TokenStore | None = None,
    transport: httpx.BaseTransport | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Redeem ``code``, store the token pair, and return the connection JSON without secrets.

    :raises GoHighLevelConfigError: the connection lacks client_id or client_secret.
    :raises GoHighLevelAuthError: GoHighLevel rejected the code or the client credentials.
    """
    from airflow.sdk import BaseHook

    settings = settings or Settings.from_env()
    conn = BaseHook.get_connection(conn_id)
    extras = conn.extra_dejson or {}
    client_id = _extra(extras, "client_id")
    client_secret = _extra(extras, "client_secret")
    if not client_id or not client_secret:
        raise GoHighLevelConfigError(
            f"GoHighLevel connection {conn_id!r} needs the extras client_id and client_secret of the "
            f"Marketplace app before an authorization code can be redeemed."
        )
    try:
        base_url = resolve_base_url(conn.host, conn.port, DEFAULT_BASE_URL)
    except ValueError as error:
        raise GoHighLevelConfigError(f"GoHighLevel connection {conn_id!r}: {error}") from None

    with build_client(base_url, settings=settings, transport=transport) as client:
        body = _redeem(client, conn_id, code, client_id, client_secret, redirect_uri)

    configured_location = _extra(extras, "location_id")
    granted_location = str(body.get("locationId") or configured_location or "")
    if not granted_location:
        raise GoHighLevelAuthError(
            f"GoHighLevel connection {conn_id!r}: the token reply names no location and the connection has "
            f"no location_id. Install the app on a sub-account (location), not on the agency."
        )
    if configured_location and configured_location != granted_location:
        log.warning(
            "The grant belongs to location %s, not to the connection's location_id %s; the printed "
            "connection uses the grant's location.",
            granted_location,
            configured_location,
        )
    pair = _seed_store(
        store or ObjectStorageTokenStore(settings=settings), client_id, granted_location, body, settings
    )
    log.info("Stored the token pair of location %s (generation %d).", granted_location, pair.generation)
    return {
        "conn_type": "gohighlevel",
        "host": "" if base_url == DEFAULT_BASE_URL else base_url,
        "extra": {
            "location_id": granted_location,
            "api_version": _extra(extras, "api_version") or DEFAULT_API_VERSION,
            "client_id": client_id,
            "client_secret": SECRET_PLACEHOLDER,
            "refresh_token": STORE_SEEDED_MARKER,
        },
    }


def _extra(extras: dict[str, Any], name: str) -> str | None:
    value = extras.get(name, extras.get(f"extra__gohighlevel__{name}"))
    text = "" if value is None else str(value).strip()
    return text or None


def _redeem(
    client: httpx.Client,
    conn_id: str,
    code: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str | None,
) -> dict[str, Any]:
    form = {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": "authorization_code",
        "code": code,
        "user_type": "Location",
    }
    if redirect_uri:
        form["redirect_uri"] = redirect_uri
    # Not retried: a code is single-use, so a resent request after a lost reply can only fail.
    response = client.post("/oauth/token", data=form)
    if response.status_code == 200:
        try:
            body = response.json()
            if body.get("access_token") and body.get("refresh_token"):
                return body
        except ValueError:
            pass
        raise GoHighLevelAuthError(
            f"GoHighLevel connection {conn_id!r}: POST /oauth/token returned HTTP 200 without a token pair."
        )
    detail = error_detail(response) or "no detail"
    raise GoHighLevelAuthError(
        f"GoHighLevel connection {conn_id!r}: POST /oauth/token returned HTTP {response.status_code} "
        f"({detail}). Authorization codes are single-use and expire within minutes: install the app on "
        f"the location again and run make authorize with the new code at once. HTTP 401 means the "
        f"connection's client_id or client_secret is wrong."
    )


def _seed_store(
    store: TokenStore, client_id: str, location_id: str, body: dict[str, Any], settings: Settings
) -> TokenPair:
    key = token_key(client_id, location_id)
    now = time.time()
    expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN_S)
    margin = min(settings.token_refresh_margin_max_s, settings.token_refresh_margin_share * expires_in)
    with store.lease(key):
        previous = store.load(key)
        pair = TokenPair(
            refresh_token=str(body["refresh_token"]),
            seed_fingerprint=fingerprint(str(body["refresh_token"])),
            generation=1 if previous is None else previous.generation + 1,
            location_id=location_id,
            access_token=str(body["access_token"]),
            expires_at=now + expires_in,
            refresh_at=now + expires_in - margin,
            obtained_at=now,
            user_type=str(body.get("userType") or "Location"),
            scope=str(body.get("scope") or ""),
        )
        store.save(key, pair, expected_generation=None if previous is None else previous.generation)
    return pair


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conn-id", required=True, help="id of the gohighlevel connection to authorise")
    parser.add_argument(
        "--code", default=os.environ.get(CODE_ENV_VAR), help=f"authorization code (default: ${CODE_ENV_VAR})"
    )
    parser.add_argument("--redirect-uri", default=None, help="redirect URI, if the app requires it")
    args = parser.parse_args(argv)
    if not args.code:
        parser.error(f"no authorization code: pass --code or set {CODE_ENV_VAR}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = authorize(args.conn_id, args.code, redirect_uri=args.redirect_uri)
    except AirflowNotFoundException:
        print(
            f"error: connection {args.conn_id!r} is not defined. Create it with client_id, client_secret "
            f"and location_id (for example as AIRFLOW_CONN_{args.conn_id.upper()}), then rerun.",
            file=sys.stderr,
        )
        return 1
    except GoHighLevelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    env_name = f"AIRFLOW_CONN_{args.conn_id.upper()}"
    print(
        f"The token store now holds the grant. Define the connection with the JSON below (for example as "
        f"{env_name}), replacing the client_secret placeholder with the real secret:",
        file=sys.stderr,
    )
    print(json.dumps(connection, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
