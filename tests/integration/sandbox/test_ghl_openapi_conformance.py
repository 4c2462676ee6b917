"""GHL sandbox responses validated against the official GHL OpenAPI files.

The spec files are read from ``shared/specs/ghl`` next to the repository (``apps/*.json`` and
``common/*.json``, whose ``$ref``s point at each other), and the tests skip when that folder is
absent. They are never copied into the repository.

The files are OpenAPI 3.0, so ``nullable: true`` is turned into a JSON Schema type union before
validating. Where the sandbox follows the real API rather than the spec, the deviation is patched
into the loaded schema, and ``DEVIATIONS`` lists each one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from sandbox import seedgen
from sandbox.testing import running_sandbox

pytestmark = pytest.mark.integration

SPEC_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "specs" / "ghl"
if not SPEC_DIR.is_dir():
    pytest.skip(f"GHL OpenAPI spec folder not found at {SPEC_DIR}", allow_module_level=True)

LOCATION_A = seedgen.DEMO_LOCATION_A_ID
LOCATION_B = seedgen.DEMO_LOCATION_B_ID
VERSION = "2021-07-28"

# (spec file, JSON pointer inside it, replacement schema, reason).
DEVIATIONS = (
    ("apps/contacts.json", "/components/schemas/CustomFieldSchema/properties/value", {},
     "custom field values are numbers, lists or objects for non-text fields, not only strings"),
    ("apps/locations.json", "/components/schemas/LocationTaskListSuccessfulResponseDto/properties/tasks/items",
     {"type": "object"},
     "location task search returns task objects; the spec's schema says each item is an array"),
)
# POST /contacts/search has no response schema in the spec. The real API returns the shared
# list shape with `total` in place of `count`, so search responses are checked against this.
SEARCH_RESPONSE_SCHEMA_POINTER = "/components/schemas/ContactsSearchSuccessfulResponseDto"
SEARCH_RESPONSE_EXTRA = {"required": ["contacts", "total"], "properties": {"total": {"type": "integer"}}}
# Error bodies of operations whose spec entry has no schema for that status are checked against
# the common error schemas that every other operation uses.
COMMON_ERROR_SCHEMAS = {400: "BadRequestDTO", 401: "UnauthorizedDTO", 422: "UnprocessableDTO"}

SEED = seedgen.generate_seed(contacts_per_location=(120, 20), tasks=(1, 3), notes=(1, 3),
                             appointments=(1, 3), random_seed=13)


@dataclasses.dataclass(frozen=True)
class Case:
    """One request whose response the spec describes."""

    label: str
    method: str
    path_template: str
    status: int


CASES = (
    Case("token refresh", "POST", "/oauth/token", 200),
    Case("token refresh reused", "POST", "/oauth/token", 400),
    Case("search", "POST", "/contacts/search", 200),
    Case("search without pageLimit", "POST", "/contacts/search", 422),
    Case("list contacts", "GET", "/contacts/", 200),
    Case("get contact", "GET", "/contacts/{contactId}", 200),
    Case("get contact as location B", "GET", "/contacts/{contactId}", 200),
    Case("get unknown contact", "GET", "/contacts/{contactId}", 400),
    Case("get contact without Version", "GET", "/contacts/{contactId}", 401),
    Case("get contact with invalid token", "GET", "/contacts/{contactId}", 401),
    Case("create contact", "POST", "/contacts/", 201),
    Case("create duplicate contact", "POST", "/contacts/", 400),
    Case("update contact", "PUT", "/contacts/{contactId}", 200),
    Case("upsert contact", "POST", "/contacts/upsert", 200),
    Case("add tags", "POST", "/contacts/{contactId}/tags", 201),
    Case("remove tags", "DELETE", "/contacts/{contactId}/tags", 200),
    Case("list tasks", "GET", "/contacts/{contactId}/tasks", 200),
    Case("create task", "POST", "/contacts/{contactId}/tasks", 201),
    Case("get task", "GET", "/contacts/{contactId}/tasks/{taskId}", 200),
    Case("update task", "PUT", "/contacts/{contactId}/tasks/{taskId}", 200),
    Case("complete task", "PUT", "/contacts/{contactId}/tasks/{taskId}/completed", 200),
    Case("delete task", "DELETE", "/contacts/{contactId}/tasks/{taskId}", 200),
    Case("list notes", "GET", "/contacts/{contactId}/notes", 200),
    Case("create note", "POST", "/contacts/{contactId}/notes", 201),
    Case("get note", "GET", "/contacts/{contactId}/notes/{id}", 200),
    Case("update note", "PUT", "/contacts/{contactId}/notes/{id}", 200),
    Case("delete note", "DELETE", "/contacts/{contactId}/notes/{id}", 200),
    Case("list appointments", "GET", "/contacts/{contactId}/appointments", 200),
    Case("search location tasks", "POST", "/locations/{locationId}/tasks/search", 200),
    Case("list custom fields", "GET", "/locations/{locationId}/customFields", 200),
    Case("delete contact", "DELETE", "/contacts/{contactId}", 200),
)


def _openapi_to_json_schema(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 ``nullable: true`` as a JSON Schema type that also allows null."""
    if isinstance(node, list):
        return [_openapi_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _openapi_to_json_schema(value) for key, value in node.items()}
    if converted.pop("nullable", False) and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
    return converted


def _set_pointer(document: dict[str, Any], pointer: str, value: Any) -> None:
    parts = [part.replace("~1", "/").replace("~0", "~") for part in pointer.strip("/").split("/")]
    target = document
    for part in parts[:-1]:
        target = target[part]
    assert parts[-1] in target, f"deviation pointer {pointer} no longer matches the spec"
    target[parts[-1]] = value


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


@dataclasses.dataclass
class Spec:
    """The loaded spec documents and a registry that resolves their ``$ref``s."""

    documents: dict[str, dict[str, Any]]
    registry: Registry

    def uri(self, name: str) -> str:
        return (SPEC_DIR / name).resolve().as_uri()

    def response_schema(self, case: Case) -> dict[str, Any] | None:
        """Return a schema that refers to the spec's response schema for the case, or None.

        An error status that the operation lists without a schema, or does not list, falls back
        to the common error schema for that status.
        """
        for name, document in self.documents.items():
            operation = document.get("paths", {}).get(case.path_template, {}).get(case.method.lower())
            if operation is None:
                continue
            response = operation.get("responses", {}).get(str(case.status), {})
            if "schema" not in response.get("content", {}).get("application/json", {}):
                return self.common_error_schema(case.status)
            pointer = "/".join(("", "paths", _escape(case.path_template), case.method.lower(),
                                "responses", str(case.status), "content", "application~1json", "schema"))
            return {"$ref": f"{self.uri(name)}#{quote(pointer, safe='/~')}"}
        return None

    def common_error_schema(self, status: int) -> dict[str, Any] | None:
        if status not in COMMON_ERROR_SCHEMAS:
            return None
        return {"$ref": f"{self.uri('common/common-schemas.json')}#/components/schemas/"
                        f"{COMMON_ERROR_SCHEMAS[status]}"}

    def search_response_schema(self) -> dict[str, Any]:
        reference = f"{self.uri('apps/contacts.json')}#{SEARCH_RESPONSE_SCHEMA_POINTER}"
        return {"allOf": [{"$ref": reference}], **copy.deepcopy(SEARCH_RESPONSE_EXTRA)}

    def errors(self, schema: dict[str, Any], body: Any) -> list[str]:
        return self.errors_with(self.validator(schema), body)

    def validator(self, schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(schema, registry=self.registry)

    @staticmethod
    def errors_with(validator: jsonschema.Draft202012Validator, body: Any) -> list[str]:
        return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
                for error in validator.iter_errors(body)]


def load_spec() -> Spec:
    """Load every spec file, convert it to JSON Schema and apply the deviations."""
    documents = {}
    for path in sorted(SPEC_DIR.glob("*/*.json")):
        name = path.relative_to(SPEC_DIR).as_posix()
        documents[name] = _openapi_to_json_schema(json.loads(path.read_text(encoding="utf-8")))
    for name, pointer, replacement, _reason in DEVIATIONS:
        _set_pointer(documents[name], pointer, replacement)
    resources = [
        ((SPEC_DIR / name).resolve().as_uri(),
         Resource.from_contents(document, default_specification=DRAFT202012))
        for name, document in documents.items()
    ]
    return Spec(documents=documents, registry=Registry().with_resources(resources))


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec()


class _Exchange:
    """Sends the scenario's requests and keeps each response under its case label."""

    def __init__(self, base_url: str) -> None:
        self.responses: dict[str, httpx.Response] = {}
        self.pit = httpx.Client(base_url=base_url, timeout=30, trust_env=False, headers={
            "Authorization": f"Bearer {seedgen.DEMO_LOCATION_A_PIT}", "Version": VERSION})
        self.anonymous = httpx.Client(base_url=base_url, timeout=30, trust_env=False)

    def send(self, label: str, method: str, url: str, *, client: httpx.Client | None = None,
             **options: Any) -> Any:
        response = (client or self.pit).request(method, url, **options)
        self.responses[label] = response
        try:
            return response.json()
        except ValueError:
            return None

    def close(self) -> None:
        self.pit.close()
        self.anonymous.close()


def _run_token_cases(exchange: _Exchange) -> str:
    """Refresh location B's grant and reuse the consumed refresh token. Return the new access token."""
    form = {"grant_type": "refresh_token", "client_id": seedgen.DEMO_OAUTH_CLIENT_ID,
            "client_secret": seedgen.DEMO_OAUTH_CLIENT_SECRET,
            "refresh_token": seedgen.DEMO_REFRESH_TOKEN_B, "user_type": "Location"}
    token = exchange.send("token refresh", "POST", "/oauth/token", client=exchange.anonymous, data=form)
    exchange.send("token refresh reused", "POST", "/oauth/token", client=exchange.anonymous, data=form)
    return token["access_token"]


def _run_contact_cases(exchange: _Exchange, access_token_b: str) -> None:
    seeded_id = SEED["ghl"]["locations"][0]["contacts"][0]["id"]
    b_contact_id = SEED["ghl"]["locations"][1]["contacts"][0]["id"]
    search_body = {"locationId": LOCATION_A, "pageLimit": 500}

    exchange.send("search", "POST", "/contacts/search", json=search_body)
    exchange.send("search without pageLimit", "POST", "/contacts/search", json={"locationId": LOCATION_A})
    exchange.send("list contacts", "GET", "/contacts/", params={"locationId": LOCATION_A, "limit": 20})
    exchange.send("get contact", "GET", f"/contacts/{seeded_id}")
    exchange.send("get contact as location B", "GET", f"/contacts/{b_contact_id}", client=exchange.anonymous,
                  headers={"Authorization": f"Bearer {access_token_b}", "Version": VERSION})
    exchange.send("get unknown contact", "GET", "/contacts/NoSuchContact0000000")
    exchange.send("get contact without Version", "GET", f"/contacts/{seeded_id}", client=exchange.anonymous,
                  headers={"Authorization": f"Bearer {seedgen.DEMO_LOCATION_A_PIT}"})
    exchange.send("get contact with invalid token", "GET", f"/contacts/{seeded_id}", client=exchange.anonymous,
                  headers={"Authorization": "Bearer not-a-token", "Version": VERSION})

    new_contact = {"locationId": LOCATION_A, "firstName": "Søren", "lastName": "Åberg",
                   "email": "soren.aberg@example.org", "phone": "+442079460123", "tags": ["spec"],
                   "customFields": [{"key": seedgen.MEMBERSHIP_TIER_FIELD_KEY, "field_value": "Silver"},
                                    {"key": seedgen.LOYALTY_POINTS_FIELD_KEY, "field_value": 120}]}
    created = exchange.send("create contact", "POST", "/contacts/", json=new_contact)
    contact_id = created["contact"]["id"]
    exchange.send("create duplicate contact", "POST", "/contacts/", json=new_contact)
    exchange.send("update contact", "PUT", f"/contacts/{contact_id}", json={"lastName": "Aberg"})
    exchange.send("upsert contact", "POST", "/contacts/upsert",
                  json={"locationId": LOCATION_A, "email": "soren.aberg@example.org", "city": "Leeds"})
    exchange.send("add tags", "POST", f"/contacts/{contact_id}/tags", json={"tags": ["vip", "Member"]})
    exchange.send("remove tags", "DELETE", f"/contacts/{contact_id}/tags", json={"tags": ["vip"]})
    _run_task_and_note_cases(exchange, contact_id, seeded_id)
    exchange.send("delete contact", "DELETE", f"/contacts/{contact_id}")


def _run_task_and_note_cases(exchange: _Exchange, contact_id: str, seeded_id: str) -> None:
    tasks = f"/contacts/{contact_id}/tasks"
    exchange.send("list tasks", "GET", f"/contacts/{seeded_id}/tasks")
    task = exchange.send("create task", "POST", tasks, json={
        "title": "Send welcome pack", "dueDate": "2025-07-01T09:00:00.000Z", "completed": False})
    task_id = task["task"]["id"]
    exchange.send("get task", "GET", f"{tasks}/{task_id}")
    exchange.send("update task", "PUT", f"{tasks}/{task_id}", json={"body": "Include the timetable"})
    exchange.send("complete task", "PUT", f"{tasks}/{task_id}/completed", json={"completed": True})
    exchange.send("search location tasks", "POST", f"/locations/{LOCATION_A}/tasks/search",
                  json={"contactId": [seeded_id, contact_id], "limit": 100})
    exchange.send("delete task", "DELETE", f"{tasks}/{task_id}")

    notes = f"/contacts/{contact_id}/notes"
    exchange.send("list notes", "GET", f"/contacts/{seeded_id}/notes")
    note = exchange.send("create note", "POST", notes, json={"body": "<p>Likes <b>mornings</b></p>"})
    note_id = note["note"]["id"]
    exchange.send("get note", "GET", f"{notes}/{note_id}")
    exchange.send("update note", "PUT", f"{notes}/{note_id}", json={"body": "Likes evenings"})
    exchange.send("delete note", "DELETE", f"{notes}/{note_id}")

    exchange.send("list appointments", "GET", f"/contacts/{seeded_id}/appointments")
    exchange.send("list custom fields", "GET", f"/locations/{LOCATION_A}/customFields")


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with running_sandbox(seed=SEED) as sb:
        sb.set_config("ghl", rate_limits=False, latency_ms=0, search_lag_ms=0)
        yield sb.ghl_url


@pytest.fixture(scope="module")
def responses(sandbox_url: str) -> Iterator[dict[str, httpx.Response]]:
    exchange = _Exchange(sandbox_url)
    try:
        access_token_b = _run_token_cases(exchange)
        _run_contact_cases(exchange, access_token_b)
        yield exchange.responses
    finally:
        exchange.close()


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_response_matches_spec(case: Case, spec: Spec,
                               responses: dict[str, httpx.Response]) -> None:
    response = responses[case.label]
    if case.path_template == "/contacts/search" and case.status == 200:
        schema = spec.search_response_schema()
    else:
        schema = spec.response_schema(case)

    assert response.status_code == case.status, response.text
    assert schema is not None, f"the spec defines no JSON schema for {case.method} {case.path_template} {case.status}"
    assert spec.errors(schema, response.json()) == []


def test_every_seeded_contact_matches_spec(spec: Spec, sandbox_url: str) -> None:
    schema = spec.response_schema(Case("get contact", "GET", "/contacts/{contactId}", 200))
    assert schema is not None
    validator = spec.validator(schema)
    headers = {"Authorization": f"Bearer {seedgen.DEMO_LOCATION_A_PIT}", "Version": VERSION}
    failures = {}
    with httpx.Client(base_url=sandbox_url, headers=headers, timeout=30, trust_env=False) as client:
        for contact in SEED["ghl"]["locations"][0]["contacts"]:
            response = client.get(f"/contacts/{contact['id']}")
            if response.status_code != 200:
                failures[contact["id"]] = [f"status {response.status_code}: {response.text}"]
                continue
            errors = spec.errors_with(validator, response.json())
            if errors:
                failures[contact["id"]] = errors

    assert failures == {}
