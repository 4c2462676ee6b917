"""An in-memory Memberstack Admin API served through ``httpx.MockTransport`` for loader tests.

It keeps members, free plans and Data Table records, and responds like the Admin API: ``{"data": ...}``
envelopes, ``{"data": null}`` for an unknown member, 400 "There is no member with this identifier."
on updates of a missing member, unknown custom field keys dropped, TEXT_UNIQUE fields enforced.
Faults are injected per route name: ``fail_after_apply`` applies the write and then answers 500,
``fail_before_apply`` answers 500 without applying it, and ``crash_after_writes`` raises
``SimulatedCrash`` (a ``BaseException``, so nothing in the loader catches it) once that many writes
have been applied.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from collections import Counter
from typing import Any
from urllib.parse import unquote

import httpx

from ghl_memberstack.mapping import TABLE_FIELD_TYPES

APP_CUSTOM_FIELDS = ("first-name", "last-name", "phone", "ghl-tags", "ghl-status", "membership-tier")
APP_PLANS = ("pln_vip-free", "pln_members-free", "pln_premium-paid")


class SimulatedCrash(BaseException):
    """Stands for the process being killed in the middle of a load."""


def _error(status: int, message: str, code: str = "generic-message") -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message})


class FakeMemberstack:
    """State and request handler of one fake Memberstack app."""

    def __init__(
        self, *, custom_fields: tuple[str, ...] = APP_CUSTOM_FIELDS, tables: dict | None = None
    ) -> None:
        self.custom_fields = set(custom_fields)
        self.plans = set(APP_PLANS)
        self.tables = copy.deepcopy(TABLE_FIELD_TYPES if tables is None else tables)
        self.members: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, dict[str, Any]]] = {table: {} for table in self.tables}
        self.passwords: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self.writes = 0
        self.fail_after_apply: Counter[str] = Counter()
        self.fail_before_apply: Counter[str] = Counter()
        self.crash_after_writes: int | None = None
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def add_member(
        self,
        email: str,
        *,
        meta: dict | None = None,
        custom: dict | None = None,
        json_body: dict | None = None,
        plans: tuple[str, ...] = (),
    ) -> str:
        """Create a member directly, as someone working in the dashboard would."""
        member_id = f"mem_{next(self._ids):06d}"
        self.members[member_id] = {
            "id": member_id,
            "auth": {"email": email},
            "customFields": dict(custom or {}),
            "metaData": dict(meta or {}),
            "json": dict(json_body or {}),
            "planConnections": [{"planId": plan, "active": True, "type": "FREE"} for plan in plans],
        }
        return member_id

    def member_by_email(self, email: str) -> dict[str, Any] | None:
        """Return the member holding ``email``, or None."""
        return next((m for m in self.members.values() if m["auth"]["email"] == email.lower()), None)

    def members_of_contact(self, contact_id: str) -> list[dict[str, Any]]:
        """Return every member linked to ``contact_id``."""
        return [m for m in self.members.values() if m["metaData"].get("ghlContactId") == contact_id]

    def records_of(self, table: str, field: str, value: Any) -> list[dict[str, Any]]:
        """Return the records of ``table`` whose ``field`` equals ``value``."""
        return [r for r in self.records[table].values() if r["data"].get(field) == value]

    def transport(self) -> httpx.MockTransport:
        """Return a transport that serves this app."""
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Return the response to one Admin API request."""
        path = unquote(request.url.path)
        body = json.loads(request.content) if request.content else {}
        with self._lock:
            for pattern, method, name, handler in self._routes():
                match = re.fullmatch(pattern, path)
                if match and request.method == method:
                    self.calls[name] += 1
                    is_write = name not in ("list_members", "get_member", "list_tables", "get_table", "query")
                    if is_write and self.fail_before_apply[name] > 0:
                        self.fail_before_apply[name] -= 1
                        return _error(500, "Internal error")
                    response = handler(request, body, *match.groups())
                    if is_write and response.status_code < 300:
                        self.writes += 1
                        if self.crash_after_writes is not None and self.writes >= self.crash_after_writes:
                            self.crash_after_writes = None
                            raise SimulatedCrash(f"simulated crash after {self.writes} writes")
                        if self.fail_after_apply[name] > 0:
                            self.fail_after_apply[name] -= 1
                            return _error(500, "Internal error")
                    return response
        return _error(404, f"Cannot {request.method} {path}")

    def _routes(self) -> list[tuple[str, str, str, Any]]:
        return [
            (r"/members", "GET", "list_members", self._list_members),
            (r"/members", "POST", "create_member", self._create_member),
            (r"/members/([^/]+)/add-plan", "POST", "add_plan", self._add_plan),
            (r"/members/([^/]+)/remove-plan", "POST", "remove_plan", self._remove_plan),
            (r"/members/([^/]+)", "GET", "get_member", self._get_member),
            (r"/members/([^/]+)", "PATCH", "update_member", self._update_member),
            (r"/members/([^/]+)", "DELETE", "delete_member", self._delete_member),
            (r"/v2/data-tables", "GET", "list_tables", self._list_tables),
            (r"/v2/data-tables/([^/]+)", "GET", "get_table", self._get_table),
            (r"/v2/data-tables/([^/]+)/records/query", "POST", "query", self._query),
            (r"/v2/data-tables/([^/]+)/records", "POST", "create_record", self._create_record),
            (r"/v2/data-tables/([^/]+)/records/([^/]+)", "PUT", "update_record", self._update_record),
            (r"/v2/data-tables/([^/]+)/records/([^/]+)", "DELETE", "delete_record", self._delete_record),
        ]

    def _public(self, member: dict[str, Any], *, with_json: bool = True) -> dict[str, Any]:
        shown = copy.deepcopy(member)
        if not with_json:
            shown.pop("json", None)
        return shown

    def _find(self, id_or_email: str) -> dict[str, Any] | None:
        return self.members.get(id_or_email) or self.member_by_email(id_or_email)

    def _list_members(self, request: httpx.Request, body: dict) -> httpx.Response:
        limit = min(int(request.url.params.get("limit", 50)), 100)
        after = int(request.url.params.get("after", 0))
        ordered = sorted(self.members.values(), key=lambda m: m["id"])
        page = [m for m in ordered if int(m["id"][4:]) > after][:limit]
        with_json = request.url.params.get("includeJSON") == "true"
        end = int(page[-1]["id"][4:]) if page else after
        has_next = any(int(m["id"][4:]) > end for m in ordered)
        return httpx.Response(
            200,
            json={
                "totalCount": len(ordered),
                "endCursor": end,
                "hasNextPage": has_next,
                "data": [self._public(m, with_json=with_json) for m in page],
            },
        )

    def _get_member(self, request: httpx.Request, body: dict, id_or_email: str) -> httpx.Response:
        member = self._find(id_or_email)
        return httpx.Response(200, json={"data": self._public(member) if member else None})

    def _custom(self, values: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in values.items() if key in self.custom_fields}

    def _create_member(self, request: httpx.Request, body: dict) -> httpx.Response:
        email = str(body.get("email", "")).lower()
        if not body.get("password"):
            return _error(400, "Password is required")
        if self.member_by_email(email):
            return _error(400, "The email is already taken.")
        member_id = self.add_member(
            email,
            meta=body.get("metaData"),
            custom=self._custom(body.get("customFields") or {}),
            json_body=body.get("json"),
        )
        self.passwords[member_id] = body["password"]
        return httpx.Response(200, json={"data": self._public(self.members[member_id])})

    def _update_member(self, request: httpx.Request, body: dict, member_id: str) -> httpx.Response:
        member = self.members.get(member_id)
        if member is None:
            return _error(400, "There is no member with this identifier.")
        if "email" in body:
            email = str(body["email"]).lower()
            holder = self.member_by_email(email)
            if holder is not None and holder["id"] != member_id:
                return _error(400, "The email is already taken.")
            member["auth"]["email"] = email
        member["customFields"].update(self._custom(body.get("customFields") or {}))
        member["metaData"].update(body.get("metaData") or {})
        if "json" in body:
            member["json"] = body["json"]
        return httpx.Response(200, json={"data": self._public(member)})

    def _delete_member(self, request: httpx.Request, body: dict, member_id: str) -> httpx.Response:
        if self.members.pop(member_id, None) is None:
            return _error(400, "There is no member with this identifier.")
        return httpx.Response(200, json={"data": {"id": member_id}})

    def _change_plan(self, member_id: str, body: dict, *, add: bool) -> httpx.Response:
        member = self.members.get(member_id)
        if member is None:
            return _error(400, "There is no member with this identifier.")
        plan_id = body.get("planId")
        if plan_id not in self.plans:
            return _error(404, "Plan not found", code="plan-not-found")
        held = [c for c in member["planConnections"] if c["planId"] == plan_id]
        if add:
            if held:
                return _error(400, "The member already has this plan.")
            member["planConnections"].append({"planId": plan_id, "active": True, "type": "FREE"})
        else:
            if not held:
                return _error(400, "The member does not have this plan.")
            member["planConnections"] = [c for c in member["planConnections"] if c["planId"] != plan_id]
        return httpx.Response(200, text="OK")

    def _add_plan(self, request: httpx.Request, body: dict, member_id: str) -> httpx.Response:
        return self._change_plan(member_id, body, add=True)

    def _remove_plan(self, request: httpx.Request, body: dict, member_id: str) -> httpx.Response:
        return self._change_plan(member_id, body, add=False)

    def _table(self, key: str) -> dict[str, Any]:
        fields = [{"key": field, "type": kind} for field, kind in self.tables[key].items()]
        return {"id": f"tbl_{key}", "key": key, "name": key, "fields": fields}

    def _list_tables(self, request: httpx.Request, body: dict) -> httpx.Response:
        return httpx.Response(200, json={"data": {"tables": [self._table(key) for key in self.tables]}})

    def _get_table(self, request: httpx.Request, body: dict, key: str) -> httpx.Response:
        if key not in self.tables:
            return _error(404, "Data table not found")
        return httpx.Response(200, json={"data": self._table(key)})

    def _query(self, request: httpx.Request, body: dict, key: str) -> httpx.Response:
        if key not in self.tables:
            return _error(404, "Data table not found")
        find_many = body["query"]["findMany"]
        where = find_many.get("where") or {}
        take = find_many.get("take", 20)
        after = find_many.get("after") or 0
        matching = [
            r
            for r in sorted(self.records[key].values(), key=lambda r: r["internalOrder"])
            if r["internalOrder"] > after and all(r["data"].get(f) == v for f, v in where.items())
        ]
        page = matching[:take]
        end = page[-1]["internalOrder"] if page else after
        return httpx.Response(
            200,
            json={
                "data": {
                    "records": copy.deepcopy(page),
                    "pagination": {"limit": take, "endCursor": end, "hasMore": len(matching) > take},
                }
            },
        )

    def _unique_clash(self, key: str, data: dict, record_id: str | None) -> str | None:
        for field, kind in self.tables[key].items():
            if kind != "TEXT_UNIQUE" or field not in data:
                continue
            for other in self.records[key].values():
                if other["id"] != record_id and other["data"].get(field) == data[field]:
                    return field
        return None

    def _check_member_ref(self, data: dict) -> httpx.Response | None:
        member_id = data.get("member")
        if member_id is not None and member_id not in self.members:
            return _error(400, "Referenced member not found")
        return None

    def _create_record(self, request: httpx.Request, body: dict, key: str) -> httpx.Response:
        if key not in self.tables:
            return _error(404, "Data table not found")
        data = dict(body.get("data") or {})
        clash = self._unique_clash(key, data, None)
        if clash:
            return _error(400, f"Unique constraint failed on the field {clash}")
        if (bad := self._check_member_ref(data)) is not None:
            return bad
        number = next(self._ids)
        record = {"id": f"rec_{number:06d}", "tableKey": key, "data": data, "internalOrder": number}
        self.records[key][record["id"]] = record
        return httpx.Response(200, json={"data": copy.deepcopy(record)})

    def _update_record(self, request: httpx.Request, body: dict, key: str, record_id: str) -> httpx.Response:
        record = self.records.get(key, {}).get(record_id)
        if record is None:
            return _error(404, "Data record not found")
        data = body.get("data") or {}
        if not data:
            return _error(400, "data cannot be empty")
        if self._unique_clash(key, data, record_id):
            return _error(400, "Unique constraint failed")
        if (bad := self._check_member_ref(data)) is not None:
            return bad
        record["data"].update(data)
        return httpx.Response(200, json={"data": copy.deepcopy(record)})

    def _delete_record(self, request: httpx.Request, body: dict, key: str, record_id: str) -> httpx.Response:
        record = self.records.get(key, {}).pop(record_id, None)
        if record is None:
            return _error(404, "Data record not found")
        return httpx.Response(200, json={"data": record})
