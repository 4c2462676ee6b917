"""Provider metadata that registers the ``gohighlevel`` and ``memberstack`` connection types.

Airflow reads ``get_provider_info`` through the ``apache_airflow_provider`` entry point of this
distribution (see pyproject.toml). The connection form of the Airflow 3 UI is built from the
declarative ``conn-fields`` (extra fields, stored under their plain names in the connection's extra)
and ``ui-field-behaviour`` (hidden fields, labels, placeholders) below, without importing the hooks.
This module must stay importable without Airflow, because Airflow imports it while it starts.
"""

from __future__ import annotations

from typing import Any

from ghl_memberstack import __version__

_OPTIONAL_STRING = {"type": ["string", "null"]}
_SECRET_STRING = {"type": ["string", "null"], "format": "password"}


def _gohighlevel_connection_type() -> dict[str, Any]:
    return {
        "connection-type": "gohighlevel",
        "hook-class-name": "ghl_memberstack.hooks.gohighlevel.GoHighLevelHook",
        "hook-name": "GoHighLevel",
        "conn-fields": {
            "location_id": {
                "label": "Location ID",
                "description": "Required. The id of the sub-account (location) to sync.",
                "schema": _OPTIONAL_STRING,
            },
            "api_version": {
                "label": "API Version",
                "description": "Value of the Version header sent with every call.",
                "schema": {"type": ["string", "null"], "default": "2021-07-28"},
            },
            "client_id": {
                "label": "OAuth Client ID",
                "description": "OAuth mode only: the client id of the Marketplace app.",
                "schema": _OPTIONAL_STRING,
            },
            "client_secret": {
                "label": "OAuth Client Secret",
                "description": "OAuth mode only: the client secret of the Marketplace app.",
                "schema": _SECRET_STRING,
            },
            "refresh_token": {
                "label": "OAuth Initial Refresh Token",
                "description": (
                    "Setting it selects OAuth mode. The refresh token from the first token exchange seeds "
                    "the token store, or 'token-store' when make authorize seeded it. A new value reseeds."
                ),
                "schema": _SECRET_STRING,
            },
        },
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "port", "login", "extra"],
            "relabeling": {
                "host": "API Base URL",
                "password": "Private Integration Token",
            },
            "placeholders": {
                "host": "https://services.leadconnectorhq.com",
                "password": "PIT mode only; leave empty in OAuth mode",
                "location_id": "the location id",
                "api_version": "2021-07-28",
                "client_id": "OAuth mode only",
                "client_secret": "OAuth mode only",
                "refresh_token": "OAuth mode only",
            },
        },
    }


def _memberstack_connection_type() -> dict[str, Any]:
    return {
        "connection-type": "memberstack",
        "hook-class-name": "ghl_memberstack.hooks.memberstack.MemberstackHook",
        "hook-name": "Memberstack",
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "port", "login", "extra"],
            "relabeling": {"host": "Admin API Base URL", "password": "Secret Key"},
            "placeholders": {
                "host": "https://admin.memberstack.com",
                "password": "sk_sb_... (test mode) or sk_... (live)",
            },
        },
    }


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata that Airflow's providers manager validates and loads."""
    return {
        "package-name": "ghl-memberstack-sync",
        "name": "GoHighLevel and Memberstack",
        "description": "Hooks and connection types for the GoHighLevel API v2 and the Memberstack Admin API.",
        "versions": [__version__],
        "hooks": [
            {
                "integration-name": "GoHighLevel",
                "python-modules": ["ghl_memberstack.hooks.gohighlevel"],
            },
            {
                "integration-name": "Memberstack",
                "python-modules": ["ghl_memberstack.hooks.memberstack"],
            },
        ],
        "connection-types": [_gohighlevel_connection_type(), _memberstack_connection_type()],
    }
