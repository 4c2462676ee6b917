"""Data Table record queries: `findMany` (where, orderBy, take, skip, after, _count) and `findUnique`."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sandbox.core import parse_iso_ms
from sandbox.memberstack_store import Table

MAX_TAKE = 100
DEFAULT_TAKE = 20
MAX_SKIP = 10_000
MAX_WHERE_CONDITIONS = 50
OPERATORS = ("equals", "not", "in", "notIn", "lt", "lte", "gt", "gte", "contains", "startsWith", "endsWith")
FIND_MANY_KEYS = {"where", "orderBy", "take", "skip", "after", "_count", "include", "select"}

Predicate = Callable[[dict[str, Any]], bool]


class QueryError(ValueError):
    """A query body is invalid; the message goes into a 400 reply."""


def _field_type(table: Table, key: str) -> str:
    if key in ("createdAt", "updatedAt"):
        return "DATE"
    if key == "id":
        return "TEXT"
    if key == "internalOrder":
        return "NUMBER"
    field = table.fields_by_key.get(key)
    if field is None:
        raise QueryError(f"Unknown field '{key}' for table '{table.key}'")
    return field["type"]


def _comparable(kind: str, value: Any) -> Any:
    """Turn a stored or queried value into something that compares the way the field type does."""
    if value is None:
        return None
    try:
        if kind == "DECIMAL":
            return Decimal(str(value))
        if kind == "DATE" and isinstance(value, str):
            return parse_iso_ms(value)
    except (ArithmeticError, ValueError):
        raise QueryError(f"value {value!r} does not fit a {kind} field") from None
    return value


def _record_value(record: dict[str, Any], key: str) -> Any:
    if key in ("id", "createdAt", "updatedAt", "internalOrder"):
        return record.get(key)
    return record["data"].get(key)


def _operator_check(operator: str, expected: Any, kind: str) -> Callable[[Any], bool]:
    if operator in ("in", "notIn"):
        if not isinstance(expected, list):
            raise QueryError(f"'{operator}' needs an array")
        values = [_comparable(kind, item) for item in expected]
        if operator == "in":
            return lambda actual: actual in values
        return lambda actual: actual not in values
    target = _comparable(kind, expected)
    if operator == "equals":
        return lambda actual: actual == target
    if operator == "not":
        return lambda actual: actual != target
    if operator in ("contains", "startsWith", "endsWith"):
        if not isinstance(expected, str):
            raise QueryError(f"'{operator}' needs a string")
        method = {"contains": str.__contains__, "startsWith": str.startswith, "endsWith": str.endswith}[operator]
        return lambda actual: isinstance(actual, str) and method(actual, expected)
    compare = {"lt": lambda a: a < target, "lte": lambda a: a <= target,
               "gt": lambda a: a > target, "gte": lambda a: a >= target}[operator]

    def ordered(actual: Any) -> bool:
        if actual is None or target is None:
            return False
        try:
            return compare(actual)
        except TypeError:
            return False

    return ordered


class _WhereCompiler:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.conditions = 0

    def compile(self, where: Any) -> Predicate:
        if not isinstance(where, dict):
            raise QueryError("where must be an object")
        predicates = [self._entry(key, value) for key, value in where.items()]
        return lambda record: all(predicate(record) for predicate in predicates)

    def _list(self, key: str, value: Any) -> list[Predicate]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise QueryError(f"{key} must not be empty")
        return [self.compile(item) for item in items]

    def _entry(self, key: str, value: Any) -> Predicate:
        if key == "AND":
            parts = self._list(key, value)
            return lambda record: all(part(record) for part in parts)
        if key == "OR":
            parts = self._list(key, value)
            return lambda record: any(part(record) for part in parts)
        if key == "NOT":
            parts = self._list(key, value)
            return lambda record: not any(part(record) for part in parts)
        kind = _field_type(self.table, key)
        if isinstance(value, dict):
            unknown = [name for name in value if name not in OPERATORS]
            if unknown:
                raise QueryError(f"Unknown operator '{unknown[0]}' on field '{key}'")
            checks = [_operator_check(name, expected, kind) for name, expected in value.items()]
        else:
            checks = [_operator_check("equals", value, kind)]
        self.conditions += len(checks)
        if self.conditions > MAX_WHERE_CONDITIONS:
            raise QueryError(f"where may hold at most {MAX_WHERE_CONDITIONS} conditions")

        def matches(record: dict[str, Any]) -> bool:
            actual = _comparable(kind, _record_value(record, key))
            return all(check(actual) for check in checks)

        return matches


def _sort(table: Table, records: list[dict[str, Any]], order_by: Any) -> tuple[list[dict[str, Any]], bool]:
    """Sort records; return them and whether the order is the default internalOrder ascending."""
    if order_by is None:
        return records, True
    items = order_by if isinstance(order_by, list) else [order_by]
    keys: list[tuple[str, bool]] = []
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            raise QueryError("orderBy must be an object like {\"field\": \"asc\"} or an array of them")
        (key, direction), = item.items()
        if direction not in ("asc", "desc"):
            raise QueryError(f"orderBy direction for '{key}' must be 'asc' or 'desc'")
        _field_type(table, key)
        keys.append((key, direction == "desc"))
    ordered = sorted(records, key=lambda record: record["internalOrder"])
    for key, descending in reversed(keys):
        kind = _field_type(table, key)
        present = [r for r in ordered if _record_value(r, key) is not None]
        missing = [r for r in ordered if _record_value(r, key) is None]
        present.sort(key=lambda r: _comparable(kind, _record_value(r, key)), reverse=descending)
        # Nulls go last ascending and first descending, as in PostgreSQL.
        ordered = missing + present if descending else present + missing
    return ordered, keys == [("internalOrder", False)]


def _int_option(options: dict[str, Any], name: str, default: int | None) -> int | None:
    value = options.get(name, default)
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise QueryError(f"{name} must be an integer")
    return value


def find_many(table: Table, options: Any) -> dict[str, Any]:
    """Run a findMany query and return the `data` of the reply."""
    if not isinstance(options, dict):
        raise QueryError("query.findMany must be an object")
    unknown = [key for key in options if key not in FIND_MANY_KEYS]
    if unknown:
        raise QueryError(f"Unknown findMany option '{unknown[0]}'")
    if "include" in options or "select" in options:
        raise QueryError("include and select are not supported by the sandbox")

    records = list(table.records.values())
    if options.get("where") is not None:
        predicate = _WhereCompiler(table).compile(options["where"])
        records = [record for record in records if predicate(record)]
    if options.get("_count") is True:
        return {"_count": len(records)}

    take = _int_option(options, "take", DEFAULT_TAKE)
    if not 1 <= take <= MAX_TAKE:
        raise QueryError(f"take must be between 1 and {MAX_TAKE}")
    skip = _int_option(options, "skip", None)
    after = _int_option(options, "after", None)
    if skip is not None and after is not None:
        raise QueryError("skip and after cannot be used together")
    if skip is not None and not 0 <= skip <= MAX_SKIP:
        raise QueryError(f"skip must be between 0 and {MAX_SKIP}")

    records, default_order = _sort(table, records, options.get("orderBy"))
    start = skip or 0
    if after is not None:
        start = _position_after(records, after, default_order)
    page = records[start:start + take]
    pagination: dict[str, Any] = {"limit": take, "hasMore": start + take < len(records)}
    if page:
        pagination["endCursor"] = page[-1]["internalOrder"]
    return {"records": [table.record_view(record, read=True) for record in page], "pagination": pagination}


def _position_after(records: list[dict[str, Any]], after: int, default_order: bool) -> int:
    if default_order:
        return next((i for i, record in enumerate(records) if record["internalOrder"] > after), len(records))
    for position, record in enumerate(records):
        if record["internalOrder"] == after:
            return position + 1
    raise QueryError(f"after cursor {after} does not match a record of this query")


def find_unique(table: Table, options: Any) -> dict[str, Any] | None:
    """Run a findUnique query; return the `data` of the reply or None when no record matches."""
    where = options.get("where") if isinstance(options, dict) else None
    record_id = where.get("id") if isinstance(where, dict) else None
    if not isinstance(record_id, str) or not record_id:
        raise QueryError("query.findUnique requires where.id")
    record = table.records.get(record_id)
    if record is None:
        return None
    return {"record": table.record_view(record, read=True)}
