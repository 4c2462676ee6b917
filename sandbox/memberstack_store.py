"""State of one emulated Memberstack app: members, plans and Data Tables with typed records."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.core import LOWER_ALPHANUMERIC, IdFactory, copy_json, format_iso, parse_iso_ms
from sandbox.seeding import SeedError

EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
URL_PATTERN = re.compile(r"^https?://\S+$")
TABLE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TEXT_FILTERABLE_MAX = 255
METADATA_MAX_CHARS = 500
MIN_PASSWORD_LENGTH = 8

TEXT_TYPES = {"TEXT", "TEXT_FILTERABLE", "TEXT_UNIQUE", "EMAIL", "URL"}


class FieldError(ValueError):
    """A record or member value breaks its field's rules; the message goes into a 400 reply."""


def decimal_text(value: Any) -> str:
    """Return the canonical text of a DECIMAL value given as a number or a numeric string.

    Raises FieldError for anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FieldError("must be a decimal number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise FieldError("must be a decimal number") from None
    if not number.is_finite():
        raise FieldError("must be a finite decimal number")
    return str(value).strip() if isinstance(value, str) else str(number)


def decimal_number(text: str) -> int | float:
    """Return the JSON number that reads give for a stored DECIMAL."""
    number = Decimal(text)
    return int(number) if number == number.to_integral_value() and "." not in text else float(number)


class Table:
    """One Data Table: its dashboard-defined fields and its records in internalOrder order."""

    def __init__(self, part: dict[str, Any], ids: IdFactory, now_iso: str) -> None:
        self.key: str = part["key"]
        self.id: str = part.get("id") or ids.make("tbl_", 24, LOWER_ALPHANUMERIC)
        self.name: str = part.get("name", self.key)
        self.created_at: str = part.get("createdAt", now_iso)
        self.updated_at: str | None = part.get("updatedAt", now_iso)
        self.fields: list[dict[str, Any]] = []
        for position, raw in enumerate(part.get("fields", [])):
            self.fields.append({
                "id": raw.get("id") or ids.make("fld_", 24, LOWER_ALPHANUMERIC), "key": raw["key"],
                "name": raw.get("name", raw["key"]), "type": raw["type"], "required": raw.get("required", False),
                "defaultValue": raw.get("defaultValue"), "tableOrder": raw.get("tableOrder", position),
                "referencedTableId": raw.get("referencedTableId"),
            })
        self.fields_by_key = {field["key"]: field for field in self.fields}
        if len(self.fields_by_key) != len(self.fields):
            raise SeedError(f"data table {self.key} defines a field key twice")
        self.records: dict[str, dict[str, Any]] = {}
        self.next_order = 1

    def describe(self) -> dict[str, Any]:
        """Return the table as the API shows it."""
        return {
            "id": self.id, "key": self.key, "name": self.name, "createRule": "ADMIN_ONLY",
            "readRule": "ADMIN_ONLY", "updateRule": "ADMIN_ONLY", "deleteRule": "ADMIN_ONLY",
            "createdAt": self.created_at, "updatedAt": self.updated_at, "fields": self.fields,
        }

    def record_view(self, record: dict[str, Any], *, read: bool) -> dict[str, Any]:
        """Return a record as the API shows it: DECIMAL values are numbers on reads, strings on writes."""
        view = dict(record, data=dict(record["data"]))
        if read:
            for key, value in view["data"].items():
                field = self.fields_by_key.get(key)
                if field is not None and field["type"] == "DECIMAL" and isinstance(value, str):
                    view["data"][key] = decimal_number(value)
        return view


class App:
    """One Memberstack app, selected by its secret key."""

    def __init__(self, part: dict[str, Any], ids: IdFactory, now_ms: int) -> None:
        self.ids = ids
        self.secret_key: str = part["secret_key"]
        self.name: str = part.get("name", "Sandbox app")
        self.custom_fields: list[str] = list(part.get("custom_fields", []))
        self.plans: dict[str, dict[str, Any]] = {}
        for plan in part.get("plans", []):
            if plan["id"] in self.plans:
                raise SeedError(f"plan {plan['id']} appears twice in app {self._label()}")
            self.plans[plan["id"]] = {"id": plan["id"], "name": plan.get("name", plan["id"]), "type": plan["type"]}
        self.members: dict[str, dict[str, Any]] = {}
        self.member_order: dict[str, int] = {}
        self.next_member_order = 1
        self.emails: dict[str, str] = {}
        now_iso = format_iso(now_ms / 1000)
        for raw in part.get("members", []):
            self._load_member(raw, now_iso)
        self.tables: dict[str, Table] = {}
        for raw in part.get("data_tables", []):
            table = Table(raw, ids, now_iso)
            if table.key in self.tables:
                raise SeedError(f"data table {table.key} appears twice in app {self._label()}")
            self.tables[table.key] = table
        for raw in part.get("data_tables", []):
            self._load_records(self.tables[raw["key"]], raw.get("records", []), now_iso)

    def _label(self) -> str:
        return f"{self.secret_key[:8]}..."

    # -- loading and dumping -------------------------------------------------------------------

    def _load_member(self, raw: dict[str, Any], now_iso: str) -> None:
        member = normalize_member(raw, now_iso)
        email = member["auth"]["email"].lower()
        if member["id"] in self.members:
            raise SeedError(f"member {member['id']} appears twice in app {self._label()}")
        if email in self.emails:
            raise SeedError(f"member email of {member['id']} is already used by {self.emails[email]}")
        unknown = [key for key in member["customFields"] if key not in self.custom_fields]
        if unknown:
            raise SeedError(f"member {member['id']} has custom field {unknown[0]!r}, which the app does not define")
        for connection in member["planConnections"]:
            plan = self.plans.get(connection["planId"])
            if plan is None:
                raise SeedError(f"member {member['id']} is connected to unknown plan {connection['planId']}")
            connection.setdefault("id", self.ids.make("con_", 24, LOWER_ALPHANUMERIC))
            connection.setdefault("active", True)
            connection.setdefault("status", "ACTIVE")
            connection.setdefault("planName", plan["name"])
            connection.setdefault("type", plan["type"])
            connection.setdefault("payment", None)
        self.add_member(member)

    def _load_records(self, table: Table, records: list[dict[str, Any]], now_iso: str) -> None:
        for position, raw in enumerate(records):
            try:
                data = self.validate_record_data(table, raw.get("data", {}), create=True, record_id=None)
            except FieldError as error:
                raise SeedError(f"data table {table.key} record {position}: {error}") from None
            record = {
                "id": raw.get("id") or self.ids.make("rec_", 24, LOWER_ALPHANUMERIC), "tableKey": table.key,
                "data": data, "createdAt": raw.get("createdAt", now_iso), "updatedAt": raw.get("updatedAt", now_iso),
                "internalOrder": raw.get("internalOrder", table.next_order),
                "createdByMemberId": raw.get("createdByMemberId"),
            }
            if record["id"] in table.records:
                raise SeedError(f"record {record['id']} appears twice in data table {table.key}")
            table.records[record["id"]] = record
            table.next_order = max(table.next_order, record["internalOrder"] + 1)
        table.records = dict(sorted(table.records.items(), key=lambda item: item[1]["internalOrder"]))

    def dump(self) -> dict[str, Any]:
        """Return the app in the seed format."""
        tables = []
        for table in self.tables.values():
            entry = table.describe()
            for rule in ("createRule", "readRule", "updateRule", "deleteRule"):
                entry.pop(rule)
            entry["records"] = [table.record_view(record, read=True) for record in table.records.values()]
            tables.append(entry)
        return {
            "secret_key": self.secret_key, "name": self.name, "custom_fields": list(self.custom_fields),
            "plans": list(self.plans.values()), "data_tables": tables,
            "members": list(self.members.values()),
        }

    # -- members -------------------------------------------------------------------------------

    def add_member(self, member: dict[str, Any]) -> None:
        """Store a member at the end of the creation order."""
        self.members[member["id"]] = member
        self.member_order[member["id"]] = self.next_member_order
        self.next_member_order += 1
        self.emails[member["auth"]["email"].lower()] = member["id"]

    def remove_member(self, member_id: str) -> None:
        """Delete a member."""
        member = self.members.pop(member_id)
        self.member_order.pop(member_id)
        self.emails.pop(member["auth"]["email"].lower(), None)

    def find_member(self, id_or_email: str) -> dict[str, Any] | None:
        """Return the member with this id, or with this email (case-insensitive), or None."""
        member = self.members.get(id_or_email)
        if member is None and "@" in id_or_email:
            member_id = self.emails.get(id_or_email.strip().lower())
            member = self.members.get(member_id) if member_id else None
        return member

    def new_member_id(self) -> str:
        """Return an unused member id."""
        while True:
            candidate = self.ids.make("mem_", 24, LOWER_ALPHANUMERIC)
            if candidate not in self.members:
                return candidate

    def plan_connection(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Return a new active connection to a free plan."""
        return {"id": self.ids.make("con_", 24, LOWER_ALPHANUMERIC), "active": True, "status": "ACTIVE",
                "planId": plan["id"], "planName": plan["name"], "type": plan["type"], "payment": None}

    def known_custom_fields(self, values: dict[str, Any]) -> dict[str, Any]:
        """Keep the custom field keys the app defines; others are dropped without an error."""
        return {key: value for key, value in values.items() if key in self.custom_fields}

    # -- records -------------------------------------------------------------------------------

    def table(self, key_or_id: str) -> Table | None:
        """Return a table by key or id."""
        table = self.tables.get(key_or_id)
        if table is None:
            table = next((t for t in self.tables.values() if t.id == key_or_id), None)
        return table

    def validate_record_data(self, table: Table, data: Any, *, create: bool,
                             record_id: str | None) -> dict[str, Any]:
        """Check record data against the table's fields and return the values to store.

        Creates fill defaults and need every required field. Raises FieldError naming the field.
        """
        if not isinstance(data, dict):
            raise FieldError("data must be an object")
        unknown = [key for key in data if key not in table.fields_by_key]
        if unknown:
            raise FieldError(f"Unknown field '{unknown[0]}' for table '{table.key}'")
        stored: dict[str, Any] = {}
        for key, value in data.items():
            field = table.fields_by_key[key]
            if value is None:
                if field["required"]:
                    raise FieldError(f"Field '{key}' is required")
                stored[key] = None
                continue
            try:
                stored[key] = self._coerce(table, field, value, record_id)
            except FieldError as error:
                raise FieldError(f"Field '{key}' {error}") from None
        if create:
            for field in table.fields:
                if field["key"] in stored:
                    continue
                if field["defaultValue"] is not None:
                    stored[field["key"]] = copy_json(field["defaultValue"])
                elif field["required"]:
                    raise FieldError(f"Field '{field['key']}' is required")
        return stored

    def _coerce(self, table: Table, field: dict[str, Any], value: Any, record_id: str | None) -> Any:
        kind = field["type"]
        if kind in TEXT_TYPES:
            return self._check_text(table, field, value, record_id)
        if kind in ("NUMBER", "INTEGER"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise FieldError("must be an integer")
            return value
        if kind == "DECIMAL":
            return decimal_text(value)
        if kind == "BOOLEAN":
            if not isinstance(value, bool):
                raise FieldError("must be true or false")
            return value
        if kind == "DATE":
            if not isinstance(value, str):
                raise FieldError("must be an ISO 8601 date string")
            try:
                parse_iso_ms(value)
            except ValueError:
                raise FieldError("must be an ISO 8601 date string") from None
            return value
        if kind in ("REFERENCE", "REFERENCE_MANY"):
            return self._check_references(field, value, many=kind == "REFERENCE_MANY")
        if kind in ("MEMBER_REFERENCE", "MEMBER_REFERENCE_MANY"):
            ids = value if kind == "MEMBER_REFERENCE_MANY" else [value]
            if kind == "MEMBER_REFERENCE_MANY" and not isinstance(value, list):
                raise FieldError("must be an array of member ids")
            for member_id in ids:
                if not isinstance(member_id, str) or member_id not in self.members:
                    raise FieldError(f"must name an existing member; {member_id!r} is not one")
            return value
        return value

    @staticmethod
    def _check_text(table: Table, field: dict[str, Any], value: Any, record_id: str | None) -> str:
        kind = field["type"]
        if not isinstance(value, str):
            raise FieldError("must be a string")
        if kind == "TEXT_FILTERABLE" and len(value) > TEXT_FILTERABLE_MAX:
            raise FieldError(f"must be at most {TEXT_FILTERABLE_MAX} characters")
        if kind == "EMAIL" and not EMAIL_PATTERN.match(value):
            raise FieldError("must be an email address")
        if kind == "URL" and not URL_PATTERN.match(value):
            raise FieldError("must be an http or https URL")
        if kind == "TEXT_UNIQUE":
            for other in table.records.values():
                if other["id"] != record_id and other["data"].get(field["key"]) == value:
                    raise FieldError(f"must be unique; record {other['id']} already has this value")
        return value

    def _check_references(self, field: dict[str, Any], value: Any, *, many: bool) -> Any:
        ids = value if many else [value]
        if many and not isinstance(value, list):
            raise FieldError("must be an array of record ids")
        target = self.table(field["referencedTableId"]) if field["referencedTableId"] else None
        for record_id in ids:
            if not isinstance(record_id, str):
                raise FieldError("must be a record id")
            candidates = [target] if target is not None else list(self.tables.values())
            if not any(record_id in table.records for table in candidates):
                raise FieldError(f"must name an existing record; {record_id!r} is not one")
        return value


def normalize_member(raw: dict[str, Any], now_iso: str) -> dict[str, Any]:
    """Fill a seeded member with the defaults of a member object, in the API's key order."""
    return {
        "id": raw["id"], "auth": {"email": raw["auth"]["email"]}, "verified": raw.get("verified", False),
        "customFields": raw.get("customFields", {}),
        "metaData": raw.get("metaData", {}), "json": raw.get("json", {}),
        "loginRedirect": raw.get("loginRedirect"), "profileImage": raw.get("profileImage"),
        "stripeCustomerId": raw.get("stripeCustomerId"), "lastLogin": raw.get("lastLogin"),
        "createdAt": raw.get("createdAt", now_iso), "permissions": list(raw.get("permissions", [])),
        "planConnections": raw.get("planConnections", []),
    }


def metadata_size(meta: dict[str, Any]) -> int:
    """Return the length of metaData as compact JSON, the measure of its 500-character cap."""
    return len(json.dumps(meta, ensure_ascii=False, separators=(",", ":")))
