"""Settings from the environment, provider metadata for the UI form, HTTP helpers and authorize."""

from __future__ import annotations

import json

import httpx
import pytest
from hook_fakes import CLIENT_ID, CLIENT_SECRET, LOCATION_ID, json_response, set_connection

from ghl_memberstack.authorize import SECRET_PLACEHOLDER, authorize
from ghl_memberstack.exceptions import GoHighLevelAuthError
from ghl_memberstack.hooks._http import error_detail, redact, retry_after_seconds
from ghl_memberstack.provider_info import get_provider_info
from ghl_memberstack.settings import SETTINGS, Settings
from ghl_memberstack.token_store import MemoryTokenStore, fingerprint, token_key


def test_settings_from_env():
    settings = Settings.from_env(
        {"GHL_MEMBERSTACK_RETRY_ATTEMPTS": "7", "MEMBERSTACK_RATE_LIMIT_PER_S": "12.5"}
    )

    assert settings.retry_attempts == 7
    assert settings.memberstack_rate_limit_per_s == 12.5
    assert settings.ghl_rate_limit_max == 100
    assert SETTINGS["GHL_DAILY_BUDGET_SHARE"] == 0.8


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"GHL_RATE_LIMIT_MAX": "many"}, "GHL_RATE_LIMIT_MAX must be a number", id="not-a-number"
        ),
        pytest.param(
            {"GHL_DAILY_BUDGET_SHARE": "1.5"}, "GHL_DAILY_BUDGET_SHARE must be in", id="share-above-1"
        ),
        pytest.param({"GHL_MEMBERSTACK_RETRY_ATTEMPTS": "0"}, "at least 1", id="zero-attempts"),
        pytest.param({"GHL_MEMBERSTACK_READ_TIMEOUT_S": "-1"}, "must not be negative", id="negative"),
    ],
)
def test_settings_invalid_env_named(environ, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(environ)


def test_provider_info_matches_airflow_schema():
    import importlib.resources

    import jsonschema

    schema = json.loads(
        importlib.resources.files("airflow").joinpath("provider_info.schema.json").read_text()
    )
    jsonschema.validate(get_provider_info(), schema)


def test_providers_manager_builds_both_forms():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    behaviours = manager.field_behaviours
    widgets = manager.connection_form_widgets

    assert behaviours["gohighlevel"]["relabeling"]["password"] == "Private Integration Token"
    assert behaviours["memberstack"]["relabeling"]["password"] == "Secret Key"
    assert widgets["extra__gohighlevel__location_id"].field["schema"]["title"] == "Location ID"
    assert widgets["extra__gohighlevel__client_secret"].is_sensitive is True
    assert widgets["extra__gohighlevel__refresh_token"].is_sensitive is True

    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hooks = ProvidersManagerTaskRuntime().hooks
    assert hooks["gohighlevel"].hook_class_name == "ghl_memberstack.hooks.gohighlevel.GoHighLevelHook"
    assert hooks["gohighlevel"].connection_testable is True
    assert hooks["memberstack"].hook_class_name == "ghl_memberstack.hooks.memberstack.MemberstackHook"


def test_redact_removes_personal_values():
    text = redact("Email jo.ray+x@example.org, phone +1 (555) 010-0123, token eyJhbGciOiJIUzI1NiJ9.abcdefgh")

    assert "example.org" not in text
    assert "555" not in text
    assert "eyJhbGci" not in text


def test_error_detail_from_shapes():
    assert (
        error_detail(json_response(422, {"message": ["a must be set", "b too long"]}))
        == "a must be set, b too long"
    )
    assert error_detail(json_response(400, {"error": {"code": "x", "message": "nested"}})) == "nested"
    assert error_detail(httpx.Response(502, text="<html>Bad Gateway</html>")) == "<html>Bad Gateway</html>"


def test_retry_after_formats():
    assert retry_after_seconds(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    assert (
        retry_after_seconds(httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
        == 0.0
    )
    assert retry_after_seconds(httpx.Response(429)) is None


def token_endpoint(reply: httpx.Response, forms: list[dict]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        forms.append(dict(httpx.QueryParams(request.content.decode())))
        return reply

    return httpx.MockTransport(handle)


@pytest.fixture
def app_connection(monkeypatch) -> str:
    set_connection(
        monkeypatch,
        "ghl_new",
        conn_type="gohighlevel",
        host="http://127.0.0.1:9",
        extra={"location_id": LOCATION_ID, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
    )
    return "ghl_new"


def test_authorize_seeds_store_and_prints_no_secret(app_connection):
    reply = json_response(
        200,
        {
            "access_token": "at-first",
            "refresh_token": "rt-first",
            "expires_in": 86399,
            "locationId": LOCATION_ID,
        },
    )
    forms: list[dict] = []
    store = MemoryTokenStore()

    connection = authorize(app_connection, "code-123", store=store, transport=token_endpoint(reply, forms))

    assert forms[0]["grant_type"] == "authorization_code"
    assert forms[0]["code"] == "code-123"
    pair = store.load(token_key(CLIENT_ID, LOCATION_ID))
    assert pair.refresh_token == "rt-first"
    assert pair.seed_fingerprint == fingerprint("rt-first")
    printed = json.dumps(connection)
    assert CLIENT_SECRET not in printed
    assert "rt-first" not in printed
    assert "at-first" not in printed
    assert connection["extra"]["refresh_token"] == "token-store"
    assert connection["extra"]["client_secret"] == SECRET_PLACEHOLDER
    assert connection["host"] == "http://127.0.0.1:9"


def test_authorize_rejected_code(app_connection):
    reply = json_response(
        400, {"error": "invalid_grant", "message": "Invalid grant: authorization code is invalid"}
    )
    store = MemoryTokenStore()

    with pytest.raises(GoHighLevelAuthError, match="single-use"):
        authorize(app_connection, "used-code", store=store, transport=token_endpoint(reply, []))

    assert store.writes == 0
