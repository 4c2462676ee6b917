"""The Memberstack Admin API emulator: members, free plans and Data Tables, 25 requests/s per client."""

from __future__ import annotations

from typing import Any

from sandbox.core import ApiError, Call, Reply, Route, format_iso, json_reply, scaled_limit, text_reply
from sandbox.limits import SlidingWindow
from sandbox.memberstack_query import QueryError, find_many, find_unique
from sandbox.memberstack_store import (
    EMAIL_PATTERN,
    METADATA_MAX_CHARS,
    MIN_PASSWORD_LENGTH,
    TABLE_KEY_PATTERN,
    App,
    FieldError,
    Table,
    metadata_size,
)
from sandbox.seeding import SeedError
from sandbox.server import EmulatorServer

GENERIC = "generic-message"
INVALID_KEY = "validation/invalid-secret-key"
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
RATE_WINDOW_S = 1.0
CREATE_MEMBER_KEYS = {"email", "password", "plans", "customFields", "metaData", "json", "loginRedirect"}
UPDATE_MEMBER_KEYS = {"email", "verified", "customFields", "metaData", "json", "loginRedirect", "profileImage"}
NO_MEMBER = "There is no member with this identifier."


def ms_error(status: int, message: str, code: str = GENERIC) -> ApiError:
    """Build a Memberstack error: `{"code", "message"}`."""
    return ApiError(json_reply(status, {"code": code, "message": message}))


class MemberstackServer(EmulatorServer):
    """ASGI app emulating the Memberstack Admin API for the apps of a seed."""

    name = "memberstack"

    # -- state ---------------------------------------------------------------------------------

    def load_state(self, part: dict[str, Any]) -> None:
        now_ms = self.clock.now_ms()
        apps: dict[str, App] = {}
        for raw in part.get("apps", []):
            if raw["secret_key"] in apps:
                raise SeedError("two Memberstack apps share one secret key")
            apps[raw["secret_key"]] = App(raw, self.ids, now_ms)
        self.apps = apps
        self.windows: dict[str, SlidingWindow] = {}

    def dump_state(self) -> dict[str, Any]:
        return {"apps": [app.dump() for app in self.apps.values()]}

    # -- pipeline hooks ------------------------------------------------------------------------

    def error_reply(self, status: int, message: str) -> Reply:
        return json_reply(status, {"code": GENERIC, "message": message})

    def invalid_json(self) -> ApiError:
        return ms_error(400, "The request body is not valid JSON.", "validation/invalid-json")

    def fault_reply(self, kind: str, call: Call) -> Reply:
        if kind == "429":
            return json_reply(429, {"code": GENERIC, "message": "Too many requests"})
        if kind == "500":
            return json_reply(500, {"code": GENERIC, "message": "Internal server error"})
        # Gateways send 502 and 503 pages as HTML, not as the API's JSON.
        phrase = "Bad Gateway" if kind == "502" else "Service Unavailable"
        return text_reply(int(kind), f"<html><body><h1>{kind} {phrase}</h1></body></html>",
                          "text/html; charset=utf-8")

    def on_config_change(self, changed: dict[str, Any]) -> None:
        if "random_seed" in changed:
            self.fault_injector.reseed(changed["random_seed"])

    def gate_before_faults(self, route: Route, call: Call) -> Reply | None:
        """Apply the per-client-address limit; refused requests are not counted."""
        window = self.windows.get(call.client_host)
        if window is None:
            window = self.windows[call.client_host] = SlidingWindow(RATE_WINDOW_S)
        now = self.clock.now()
        limit = scaled_limit(self.config["memberstack_rate"], self.config["rate_limit_scale"])
        if self.config["rate_limits"] and window.count(now) >= limit:
            return json_reply(429, {"code": GENERIC, "message": "Too many requests"})
        window.add(now)
        return None

    def gate_after_faults(self, route: Route, call: Call) -> Reply | None:
        key = call.headers.get("x-api-key", "")
        if not key.startswith("sk_"):
            return json_reply(400, {"code": INVALID_KEY, "message": "The secret key is missing or malformed; "
                                    "secret keys start with sk_."})
        app = self.apps.get(key)
        if app is None:
            return json_reply(401, {"code": INVALID_KEY, "message": "Invalid secret key."})
        call.auth = app
        return None

    # -- routes --------------------------------------------------------------------------------

    def register_routes(self) -> None:
        add = self.router.add
        add("GET", "/members", self.list_members, aliases=("/members/",))
        add("POST", "/members", self.create_member, aliases=("/members/",))
        add("POST", "/members/{id}/add-plan", self.add_plan)
        add("POST", "/members/{id}/remove-plan", self.remove_plan)
        add("GET", "/members/{id}", self.get_member)
        add("PATCH", "/members/{id}", self.update_member)
        add("DELETE", "/members/{id}", self.delete_member)
        add("GET", "/v2/data-tables", self.list_tables)
        add("GET", "/v2/data-tables/{table}", self.get_table)
        add("POST", "/v2/data-tables/{table}/records", self.create_record)
        add("POST", "/v2/data-tables/{table}/records/query", self.query_records)
        add("PUT", "/v2/data-tables/{table}/records/{recordId}", self.update_record)
        add("DELETE", "/v2/data-tables/{table}/records/{recordId}", self.delete_record)

    def _object_body(self, call: Call, *, required: bool = True) -> dict[str, Any]:
        body = call.json(default=None)
        if body is None and not required:
            return {}
        if not isinstance(body, dict):
            raise ms_error(400, "The request body must be a JSON object.", "validation/invalid-json")
        return body

    def _now_iso(self) -> str:
        return format_iso(self.clock.now())

    # -- members -------------------------------------------------------------------------------

    def _page_size(self, call: Call) -> int:
        text = call.query.get("first") or call.query.get("limit")
        if not text:
            return DEFAULT_PAGE_SIZE
        if not text.isdigit() or int(text) < 1:
            raise ms_error(400, "first and limit must be whole numbers of at least 1.")
        # Larger page sizes are capped, not refused.
        return min(int(text), MAX_PAGE_SIZE)

    def list_members(self, call: Call) -> Reply:
        """GET /members: cursor pages in creation order; `endCursor` is a number, never null."""
        app: App = call.auth
        size = self._page_size(call)
        after_text = call.query.get("after") or ""
        if after_text and not after_text.lstrip("-").isdigit():
            raise ms_error(400, "after must be the numeric endCursor of the previous page.")
        order = (call.query.get("order") or "ASC").upper()
        if order not in ("ASC", "DESC"):
            raise ms_error(400, "order must be ASC or DESC.")
        ordered = sorted(app.members, key=app.member_order.__getitem__, reverse=order == "DESC")
        if after_text:
            after = int(after_text)
            ordered = [mid for mid in ordered
                       if (app.member_order[mid] > after if order == "ASC" else app.member_order[mid] < after)]
        page = ordered[:size]
        include_json = call.query.get("includeJSON", "").lower() == "true"
        data = [self._list_view(app.members[mid], include_json) for mid in page]
        end_cursor = app.member_order[page[-1]] if page else int(after_text or 0)
        return json_reply(200, {"totalCount": len(app.members), "endCursor": end_cursor,
                                "hasNextPage": len(ordered) > size, "data": data})

    @staticmethod
    def _list_view(member: dict[str, Any], include_json: bool) -> dict[str, Any]:
        view = dict(member)
        if not include_json:
            view.pop("json", None)
        return view

    def get_member(self, call: Call) -> Reply:
        """GET /members/{id or URL-encoded email}: `{"data": null}` when absent."""
        member = call.auth.find_member(call.params["id"])
        return json_reply(200, {"data": member})

    def _member(self, call: Call) -> dict[str, Any]:
        member = call.auth.members.get(call.params["id"])
        if member is None:
            raise ms_error(400, NO_MEMBER)
        return member

    def _check_email(self, app: App, email: Any, member_id: str | None) -> str:
        if not isinstance(email, str) or not email:
            raise ms_error(400, "Email is required.")
        if not EMAIL_PATTERN.match(email):
            raise ms_error(400, "Email is invalid.", "invalid-email")
        owner = app.emails.get(email.lower())
        if owner is not None and owner != member_id:
            raise ms_error(400, "A member with this email already exists.")
        return email.lower()

    @staticmethod
    def _check_member_fields(body: dict[str, Any]) -> None:
        custom = body.get("customFields")
        if custom is not None:
            if not isinstance(custom, dict):
                raise ms_error(400, "customFields must be an object.")
            if not all(value is None or isinstance(value, str) for value in custom.values()):
                raise ms_error(400, "customFields values must be strings.")
        for key in ("metaData", "json"):
            if body.get(key) is not None and not isinstance(body[key], dict):
                raise ms_error(400, f"{key} must be an object.")
        for key in ("loginRedirect", "profileImage"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ms_error(400, f"{key} must be a string.")
        if body.get("verified") is not None and not isinstance(body["verified"], bool):
            raise ms_error(400, "verified must be true or false.")

    @staticmethod
    def _check_metadata(meta: dict[str, Any]) -> None:
        if metadata_size(meta) > METADATA_MAX_CHARS:
            raise ms_error(400, f"metaData must not exceed {METADATA_MAX_CHARS} characters as JSON.")

    def _free_plan(self, app: App, plan_id: Any) -> dict[str, Any]:
        plan = app.plans.get(plan_id) if isinstance(plan_id, str) else None
        if plan is None:
            raise ms_error(400, f"Plan {plan_id} was not found.", "plan-not-found")
        if plan["type"] != "FREE":
            raise ms_error(400, f"Plan {plan_id} is a paid plan; the Admin API adds free plans only.")
        return plan

    def create_member(self, call: Call) -> Reply:
        """POST /members: email and password required, free plans only, unknown custom fields dropped."""
        app: App = call.auth
        body = self._object_body(call)
        unknown = [key for key in body if key not in CREATE_MEMBER_KEYS]
        if unknown:
            raise ms_error(400, f"Unknown field {unknown[0]}.")

        email = self._check_email(app, body.get("email"), None)
        password = body.get("password")
        if not isinstance(password, str) or not password:
            raise ms_error(400, "Password is required.")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ms_error(400, f"Password must be at least {MIN_PASSWORD_LENGTH} characters.")
        self._check_member_fields(body)

        plans = body.get("plans") or []
        if not isinstance(plans, list) or not all(isinstance(item, dict) for item in plans):
            raise ms_error(400, "plans must be an array of {planId} objects.")
        plan_ids = list(dict.fromkeys(item.get("planId") for item in plans))
        connections = [app.plan_connection(self._free_plan(app, plan_id)) for plan_id in plan_ids]

        meta = {key: value for key, value in (body.get("metaData") or {}).items() if value}
        self._check_metadata(meta)
        custom = {key: value for key, value in app.known_custom_fields(body.get("customFields") or {}).items()
                  if value is not None}

        member = {
            "id": app.new_member_id(), "auth": {"email": email}, "verified": False, "customFields": custom,
            "metaData": meta, "json": body.get("json") or {},
            "loginRedirect": body.get("loginRedirect"), "profileImage": None, "stripeCustomerId": None,
            "lastLogin": None, "createdAt": self._now_iso(), "permissions": [], "planConnections": connections,
        }
        app.add_member(member)
        return json_reply(201, {"data": member})

    def update_member(self, call: Call) -> Reply:
        """PATCH /members/{id}: customFields and metaData merge shallowly, json is replaced."""
        app: App = call.auth
        member = self._member(call)
        body = self._object_body(call)
        unknown = [key for key in body if key not in UPDATE_MEMBER_KEYS]
        if unknown:
            raise ms_error(400, f"Unknown field {unknown[0]}.")
        self._check_member_fields(body)
        email = self._check_email(app, body["email"], member["id"]) if "email" in body else None

        meta = dict(member["metaData"])
        for key, value in (body.get("metaData") or {}).items():
            # Falsy values remove the key.
            if value:
                meta[key] = value
            else:
                meta.pop(key, None)
        self._check_metadata(meta)

        if email is not None and email != member["auth"]["email"]:
            app.emails.pop(member["auth"]["email"].lower(), None)
            member["auth"]["email"] = email
            app.emails[email] = member["id"]
        for key, value in app.known_custom_fields(body.get("customFields") or {}).items():
            if value is None:
                member["customFields"].pop(key, None)
            else:
                member["customFields"][key] = value
        member["metaData"] = meta
        if "json" in body:
            member["json"] = body["json"] if body["json"] is not None else {}
        for key in ("verified", "loginRedirect", "profileImage"):
            if key in body:
                member[key] = body[key]
        return json_reply(200, {"data": member})

    def delete_member(self, call: Call) -> Reply:
        """DELETE /members/{id}."""
        member = self._member(call)
        self._object_body(call, required=False)
        call.auth.remove_member(member["id"])
        return json_reply(200, {"data": {"id": member["id"]}})

    def _plan_change(self, call: Call) -> tuple[dict[str, Any], dict[str, Any]]:
        member = self._member(call)
        body = self._object_body(call)
        return member, self._free_plan(call.auth, body.get("planId"))

    def add_plan(self, call: Call) -> Reply:
        """POST /members/{id}/add-plan: text `OK`; a member can have each free plan only once."""
        member, plan = self._plan_change(call)
        if any(c["planId"] == plan["id"] for c in member["planConnections"]):
            raise ms_error(400, f"The member already has plan {plan['id']}.")
        member["planConnections"].append(call.auth.plan_connection(plan))
        return text_reply(200, "OK")

    def remove_plan(self, call: Call) -> Reply:
        """POST /members/{id}/remove-plan: text `OK`."""
        member, plan = self._plan_change(call)
        remaining = [c for c in member["planConnections"] if c["planId"] != plan["id"]]
        if len(remaining) == len(member["planConnections"]):
            raise ms_error(400, f"The member does not have plan {plan['id']}.")
        member["planConnections"] = remaining
        return text_reply(200, "OK")

    # -- data tables ---------------------------------------------------------------------------

    def _table(self, call: Call) -> Table:
        key = call.params["table"]
        if not TABLE_KEY_PATTERN.match(key):
            raise ms_error(400, "Invalid table key or ID format")
        table = call.auth.table(key)
        if table is None:
            raise ms_error(404, "Data table not found")
        return table

    def list_tables(self, call: Call) -> Reply:
        """GET /v2/data-tables."""
        return json_reply(200, {"data": {"tables": [table.describe() for table in call.auth.tables.values()]}})

    def get_table(self, call: Call) -> Reply:
        """GET /v2/data-tables/{table}, by key or id."""
        return json_reply(200, {"data": self._table(call).describe()})

    def _validated(self, call: Call, table: Table, data: Any, *, create: bool, record_id: str | None) -> dict:
        try:
            return call.auth.validate_record_data(table, data, create=create, record_id=record_id)
        except FieldError as error:
            raise ms_error(400, str(error)) from None

    def create_record(self, call: Call) -> Reply:
        """POST /v2/data-tables/{table}/records with `{data, memberId?}`; DECIMAL comes back as text."""
        app: App = call.auth
        table = self._table(call)
        body = self._object_body(call)
        if not isinstance(body.get("data"), dict):
            raise ms_error(400, "data must be an object")
        member_id = body.get("memberId")
        if member_id is not None and member_id not in app.members:
            raise ms_error(400, NO_MEMBER)
        data = self._validated(call, table, body["data"], create=True, record_id=None)
        now = self._now_iso()
        record = {"id": self._new_record_id(table), "tableKey": table.key, "data": data, "createdAt": now,
                  "updatedAt": now, "internalOrder": table.next_order, "createdByMemberId": member_id}
        table.next_order += 1
        table.records[record["id"]] = record
        return json_reply(201, {"data": table.record_view(record, read=False)})

    def _new_record_id(self, table: Table) -> str:
        while True:
            candidate = self.ids.make("rec_", 24, "abcdefghijklmnopqrstuvwxyz0123456789")
            if candidate not in table.records:
                return candidate

    def query_records(self, call: Call) -> Reply:
        """POST /v2/data-tables/{table}/records/query with findMany or findUnique."""
        table = self._table(call)
        body = self._object_body(call)
        query = body.get("query")
        if not isinstance(query, dict):
            raise ms_error(400, "Query parameter is required")
        if "findMany" in query and "findUnique" in query:
            raise ms_error(400, "Cannot specify both query.findMany and query.findUnique")
        try:
            if "findMany" in query:
                return json_reply(200, {"data": find_many(table, query["findMany"])})
            if "findUnique" in query:
                found = find_unique(table, query["findUnique"])
                if found is None:
                    raise ms_error(404, "Record not found")
                return json_reply(200, {"data": found})
        except QueryError as error:
            raise ms_error(400, str(error)) from None
        raise ms_error(400, "Either query.findMany or query.findUnique parameter is required")

    def _record(self, table: Table, call: Call) -> dict[str, Any]:
        record = table.records.get(call.params["recordId"])
        if record is None:
            raise ms_error(404, "Data record not found")
        return record

    def update_record(self, call: Call) -> Reply:
        """PUT /v2/data-tables/{table}/records/{recordId} with a partial, non-empty `data`."""
        table = self._table(call)
        record = self._record(table, call)
        data = self._object_body(call).get("data")
        if not isinstance(data, dict):
            raise ms_error(400, "data must be an object")
        if not data:
            raise ms_error(400, "data cannot be empty")
        record["data"].update(self._validated(call, table, data, create=False, record_id=record["id"]))
        record["updatedAt"] = self._now_iso()
        return json_reply(200, {"data": table.record_view(record, read=False)})

    def delete_record(self, call: Call) -> Reply:
        """DELETE /v2/data-tables/{table}/records/{recordId}: the record as it was."""
        table = self._table(call)
        record = self._record(table, call)
        del table.records[record["id"]]
        return json_reply(200, {"data": table.record_view(record, read=False)})
