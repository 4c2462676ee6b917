"""Parse and evaluate the body of GHL `POST /contacts/search`: filters, query text and sort."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.core import parse_iso_ms

MAX_PAGE_LIMIT = 500
# page x pageLimit may reach this many results; deeper reads need searchAfter.
PAGE_MODE_MAX_RESULTS = 10_000
MAX_VALUE_LENGTH = 75
SORT_FIELDS = ("dateUpdated", "dateAdded")
DEFAULT_SORT = ("dateUpdated", False)

DATE_FIELDS = {"dateUpdated", "dateAdded"}
TEXT_FIELDS = {"email", "firstName", "lastName", "phone", "companyName"}
TEXT_OPERATORS = {"eq", "not_eq", "contains", "not_contains", "exists", "not_exists"}
ID_OPERATORS = {"eq", "not_eq"}
TAG_OPERATORS = {"eq", "not_eq", "exists", "not_exists"}
RANGE_BOUNDS = {"gt", "gte", "lt", "lte"}
ALLOWED_BODY_KEYS = {"locationId", "pageLimit", "page", "searchAfter", "query", "filters", "sort"}

Predicate = Callable[[dict[str, Any]], bool]


class SearchError(ValueError):
    """The search body is invalid; `messages` go into the 422 reply."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class SearchRequest:
    """A validated search body."""

    location_id: str
    page_limit: int
    page: int | None
    search_after: tuple[float, str] | None
    predicate: Predicate
    sort_field: str
    descending: bool
    cache_key: str


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_text(path: str, value: Any, errors: list[str]) -> str:
    if not isinstance(value, str):
        errors.append(f"{path} must be a string")
        return ""
    if len(value) > MAX_VALUE_LENGTH:
        errors.append(f"{path} must be shorter than or equal to {MAX_VALUE_LENGTH} characters")
    return value


def _check_text_values(path: str, value: Any, errors: list[str]) -> list[str]:
    """Accept one string or a list of strings (matching any of them)."""
    if isinstance(value, list):
        if not value:
            errors.append(f"{path} must not be an empty array")
        return [_check_text(f"{path}[{i}]", item, errors).lower() for i, item in enumerate(value)]
    return [_check_text(path, value, errors).lower()]


def _date_bound_ms(path: str, value: Any, errors: list[str]) -> float:
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(parse_iso_ms(value))
        except ValueError:
            pass
    errors.append(f"{path} must be an ISO 8601 date string or epoch milliseconds")
    return 0.0


def _field_ms(contact: dict[str, Any], field: str) -> int | None:
    value = contact.get(field)
    if not isinstance(value, str):
        return None
    try:
        return parse_iso_ms(value)
    except ValueError:
        return None


def _date_predicate(field: str, value: Any, path: str, errors: list[str]) -> Predicate:
    if not isinstance(value, dict) or not value or not set(value) <= RANGE_BOUNDS:
        errors.append(f"{path}.value must be an object with gt, gte, lt and/or lte")
        return lambda contact: True
    bounds = {key: _date_bound_ms(f"{path}.value.{key}", bound, errors) for key, bound in value.items()}

    def matches(contact: dict[str, Any]) -> bool:
        ms = _field_ms(contact, field)
        if ms is None:
            return False
        return (("gt" not in bounds or ms > bounds["gt"]) and ("gte" not in bounds or ms >= bounds["gte"])
                and ("lt" not in bounds or ms < bounds["lt"]) and ("lte" not in bounds or ms <= bounds["lte"]))

    return matches


def _text_predicate(field: str, operator: str, value: Any, path: str, errors: list[str]) -> Predicate:
    if operator in ("exists", "not_exists"):
        should_exist = operator == "exists"
        return lambda contact: bool(contact.get(field)) == should_exist
    values = _check_text_values(f"{path}.value", value, errors)

    def text_of(contact: dict[str, Any]) -> str:
        raw = contact.get(field)
        return raw.lower() if isinstance(raw, str) else ""

    if operator == "eq":
        return lambda contact: text_of(contact) in values
    if operator == "not_eq":
        return lambda contact: text_of(contact) not in values
    if operator == "contains":
        return lambda contact: any(v in text_of(contact) for v in values)
    return lambda contact: not any(v in text_of(contact) for v in values)


def _id_predicate(operator: str, value: Any, path: str, errors: list[str]) -> Predicate:
    if isinstance(value, list):
        ids = {_check_text(f"{path}.value[{i}]", item, errors) for i, item in enumerate(value)}
        if not value:
            errors.append(f"{path}.value must not be an empty array")
    else:
        ids = {_check_text(f"{path}.value", value, errors)}
    if operator == "eq":
        return lambda contact: contact.get("id") in ids
    return lambda contact: contact.get("id") not in ids


def _tags_predicate(operator: str, value: Any, path: str, errors: list[str]) -> Predicate:
    if operator in ("exists", "not_exists"):
        should_exist = operator == "exists"
        return lambda contact: bool(contact.get("tags")) == should_exist
    tag_set = set(_check_text_values(f"{path}.value", value, errors))

    def has_any(contact: dict[str, Any]) -> bool:
        return any(str(tag).lower() in tag_set for tag in contact.get("tags") or ())

    if operator == "eq":
        return has_any
    return lambda contact: not has_any(contact)


def _operators_for(field: str) -> set[str] | None:
    if field in DATE_FIELDS:
        return {"range"}
    if field in TEXT_FIELDS:
        return TEXT_OPERATORS
    if field == "id":
        return ID_OPERATORS
    if field == "tags":
        return TAG_OPERATORS
    return None


def _filter_predicate(item: Any, path: str, errors: list[str]) -> Predicate:
    if not isinstance(item, dict):
        errors.append(f"{path} must be an object")
        return lambda contact: True
    if "group" in item:
        return _group_predicate(item, path, errors)
    field, operator = item.get("field"), item.get("operator")
    if not isinstance(field, str) or not field:
        errors.append(f"{path}.field should not be empty")
        return lambda contact: True
    operators = _operators_for(field)
    if operators is None:
        errors.append(f"Invalid field {field}")
        return lambda contact: True
    if operator not in operators:
        errors.append(f"{path}.operator must be one of: {', '.join(sorted(operators))} for field {field}")
        return lambda contact: True
    if operator not in ("exists", "not_exists") and "value" not in item:
        errors.append(f"{path}.value should not be empty")
        return lambda contact: True
    value = item.get("value")
    if field in DATE_FIELDS:
        return _date_predicate(field, value, path, errors)
    if field == "id":
        return _id_predicate(operator, value, path, errors)
    if field == "tags":
        return _tags_predicate(operator, value, path, errors)
    return _text_predicate(field, operator, value, path, errors)


def _group_predicate(item: dict[str, Any], path: str, errors: list[str]) -> Predicate:
    group = item.get("group")
    children = item.get("filters")
    if group not in ("AND", "OR"):
        errors.append(f"{path}.group must be AND or OR")
    if not isinstance(children, list) or not children:
        errors.append(f"{path}.filters must be a non-empty array")
        return lambda contact: True
    predicates = [_filter_predicate(child, f"{path}.filters[{i}]", errors) for i, child in enumerate(children)]
    if group == "OR":
        return lambda contact: any(predicate(contact) for predicate in predicates)
    return lambda contact: all(predicate(contact) for predicate in predicates)


def _query_predicate(query: Any, errors: list[str]) -> Predicate | None:
    if query is None or query == "":
        return None
    text = _check_text("query", query, errors).lower()

    def matches(contact: dict[str, Any]) -> bool:
        for field in ("firstName", "lastName", "name", "email", "phone", "companyName"):
            value = contact.get(field)
            if isinstance(value, str) and text in value.lower():
                return True
        return False

    return matches


def _parse_sort(sort: Any, errors: list[str]) -> tuple[str, bool]:
    if sort is None or sort == []:
        return DEFAULT_SORT
    if not isinstance(sort, list) or len(sort) != 1 or not isinstance(sort[0], dict):
        errors.append("sort must be an array with one {field, direction} object")
        return DEFAULT_SORT
    field, direction = sort[0].get("field"), sort[0].get("direction", "asc")
    if field not in SORT_FIELDS:
        errors.append(f"sort[0].field must be one of: {', '.join(SORT_FIELDS)}")
    if direction not in ("asc", "desc"):
        errors.append("sort[0].direction must be asc or desc")
    return (field if field in SORT_FIELDS else DEFAULT_SORT[0]), direction == "desc"


def _parse_paging(body: dict[str, Any], errors: list[str]) -> tuple[int, int | None, tuple[float, str] | None]:
    page_limit = body.get("pageLimit")
    if page_limit is None:
        errors.append("pageLimit should not be empty")
        page_limit = 1
    elif not isinstance(page_limit, int) or isinstance(page_limit, bool):
        errors.append("pageLimit must be an integer number")
        page_limit = 1
    elif not 1 <= page_limit <= MAX_PAGE_LIMIT:
        errors.append(f"pageLimit must be between 1 and {MAX_PAGE_LIMIT}")
    page = body.get("page")
    search_after = body.get("searchAfter")
    cursor = None
    if search_after is not None:
        if page is not None:
            errors.append("page and searchAfter cannot be used together")
        valid = (isinstance(search_after, list) and len(search_after) == 2 and _is_number(search_after[0])
                 and isinstance(search_after[1], str))
        if valid:
            cursor = (float(search_after[0]), search_after[1])
        else:
            errors.append("searchAfter must be an array of [sort value in epoch milliseconds, contact id]")
    elif page is not None:
        if not isinstance(page, int) or isinstance(page, bool) or page < 1:
            errors.append("page must be an integer of at least 1")
        elif page * page_limit > PAGE_MODE_MAX_RESULTS:
            errors.append(f"page * pageLimit must not exceed {PAGE_MODE_MAX_RESULTS}; "
                          "use searchAfter to read further")
    return page_limit, page, cursor


def parse_search(body: Any) -> SearchRequest:
    """Validate a search body.

    Raises SearchError listing every problem found, for a 422 reply.
    """
    if not isinstance(body, dict):
        raise SearchError(["request body must be a JSON object"])
    errors: list[str] = [f"property {key} should not exist" for key in body if key not in ALLOWED_BODY_KEYS]
    location_id = body.get("locationId")
    if not isinstance(location_id, str) or not location_id:
        errors.append("locationId should not be empty")
    page_limit, page, cursor = _parse_paging(body, errors)
    filters = body.get("filters") or []
    predicates: list[Predicate] = []
    if not isinstance(filters, list):
        errors.append("filters must be an array")
    else:
        predicates = [_filter_predicate(item, f"filters[{i}]", errors) for i, item in enumerate(filters)]
    query_predicate = _query_predicate(body.get("query"), errors)
    if query_predicate is not None:
        predicates.append(query_predicate)
    sort_field, descending = _parse_sort(body.get("sort"), errors)
    if errors:
        raise SearchError(errors)

    def predicate(contact: dict[str, Any]) -> bool:
        return all(check(contact) for check in predicates)

    cache_key = json.dumps([filters, body.get("query"), sort_field, descending], sort_keys=True, default=str)
    return SearchRequest(location_id, page_limit, page, cursor, predicate, sort_field, descending, cache_key)


def sort_key(contact: dict[str, Any], field: str) -> tuple[int, str]:
    """Return the (epoch ms, id) pair that orders contacts and forms their searchAfter."""
    return (_field_ms(contact, field) or 0, str(contact.get("id", "")))
