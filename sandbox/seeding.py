"""Seed files: schema validation, the default demo seed and reading seeds from disk."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import jsonschema

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).with_name("seed.schema.json")
EXAMPLE_SEED_PATH = Path(__file__).with_name("example_seed.json")


class SeedError(ValueError):
    """A seed does not match the seed format, or refers to objects it does not contain."""


# Items of these large arrays first go through a fast Python test. The JSON Schema check, which is
# slow, runs only on the first items and on items the fast test does not accept, to name the problem.
FULL_CHECK_ITEMS = 20
BULK_ARRAYS = {
    "locations": {"contacts": "contact", "tasks": "task", "notes": "note", "appointments": "appointment"},
    "apps": {"members": "member"},
}


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.validators.validator_for(schema).check_schema(schema)
    return schema


@functools.lru_cache(maxsize=None)
def _validator(definition: str | None = None) -> jsonschema.protocols.Validator:
    schema = _schema()
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return jsonschema.validators.validator_for(_schema())(schema)


def _format_path(parts: Any) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text or "(top level)"


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _optional(item: dict[str, Any], key: str, kind: type) -> bool:
    """Return True when `key` is absent or contains a `kind` (booleans count only as bool)."""
    if key not in item:
        return True
    value = item[key]
    if kind is bool:
        return isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def _quick_contact(item: Any) -> bool:
    if not isinstance(item, dict) or not _is_text(item.get("id")):
        return False
    if not all(_optional(item, key, str) for key in ("locationId", "dateAdded", "dateUpdated")):
        return False
    tags = item.get("tags", [])
    fields = item.get("customFields", [])
    return (isinstance(tags, list) and all(isinstance(tag, str) for tag in tags) and isinstance(fields, list)
            and all(isinstance(f, dict) and _is_text(f.get("id")) and "value" in f for f in fields))


def _quick_child(*text_keys: str, bool_keys: tuple[str, ...] = ()) -> Any:
    def check(item: Any) -> bool:
        return (isinstance(item, dict) and _is_text(item.get("id")) and _is_text(item.get("contactId"))
                and all(_optional(item, key, str) for key in text_keys)
                and all(_optional(item, key, bool) for key in bool_keys))

    return check


def _quick_member(item: Any) -> bool:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"].startswith("mem_"):
        return False
    auth = item.get("auth")
    if not isinstance(auth, dict) or not _is_text(auth.get("email")):
        return False
    custom = item.get("customFields", {})
    connections = item.get("planConnections", [])
    return (isinstance(custom, dict) and all(v is None or isinstance(v, str) for v in custom.values())
            and _optional(item, "metaData", dict) and _optional(item, "json", dict)
            and isinstance(connections, list)
            and all(isinstance(c, dict) and isinstance(c.get("planId"), str) for c in connections))


QUICK_CHECKS = {
    "contact": _quick_contact,
    "task": _quick_child("title", bool_keys=("completed",)),
    "note": _quick_child("body"),
    "appointment": _quick_child("startTime", "endTime"),
    "member": _quick_member,
}


def _split_bulk(seed: Any) -> tuple[Any, list[tuple[list[Any], str, list[Any]]]]:
    """Return the seed with its large arrays cut short, and the cut-off items with their paths."""
    if not isinstance(seed, dict):
        return seed, []
    skeleton = dict(seed)
    rest: list[tuple[list[Any], str, list[Any]]] = []
    for part_name, container in (("ghl", "locations"), ("memberstack", "apps")):
        part = seed.get(part_name)
        if not isinstance(part, dict) or not isinstance(part.get(container), list):
            continue
        skeleton[part_name] = dict(part, **{container: []})
        for index, entry in enumerate(part[container]):
            short = dict(entry) if isinstance(entry, dict) else entry
            for key, kind in BULK_ARRAYS[container].items():
                items = entry.get(key) if isinstance(entry, dict) else None
                if isinstance(items, list) and len(items) > FULL_CHECK_ITEMS:
                    short[key] = items[:FULL_CHECK_ITEMS]
                    rest.append(([part_name, container, index, key], kind, items[FULL_CHECK_ITEMS:]))
            skeleton[part_name][container].append(short)
    return skeleton, rest


def _raise_first(errors: Any, prefix: list[Any]) -> None:
    error = jsonschema.exceptions.best_match(errors)
    if error is not None:
        path = _format_path([*prefix, *error.absolute_path])
        raise SeedError(f"seed is invalid at {path}: {error.message}")


def validate_seed(seed: Any) -> None:
    """Check a seed against `seed.schema.json`.

    Raises SeedError naming the first invalid location in the seed and the problem.
    """
    skeleton, rest = _split_bulk(seed)
    _raise_first(_validator().iter_errors(skeleton), [])
    for path, kind, items in rest:
        quick = QUICK_CHECKS[kind]
        for offset, item in enumerate(items):
            if not quick(item):
                _raise_first(_validator(kind).iter_errors(item), [*path, FULL_CHECK_ITEMS + offset])


def load_seed_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a seed file.

    Raises SeedError when the file is missing, is not JSON or does not match the schema.
    """
    seed_path = Path(path)
    try:
        text = seed_path.read_text(encoding="utf-8")
    except OSError as error:
        raise SeedError(f"cannot read seed file {seed_path}: {error.strerror}") from None
    try:
        seed = json.loads(text)
    except ValueError as error:
        raise SeedError(f"seed file {seed_path} is not valid JSON: {error}") from None
    try:
        validate_seed(seed)
    except SeedError as error:
        raise SeedError(f"{seed_path}: {error}") from None
    return seed


@functools.lru_cache(maxsize=1)
def default_seed() -> dict[str, Any]:
    """Return the demo seed, generated once per process; callers must not change it.

    The demo seed comes from `sandbox.seedgen.generate_demo_seed()`. Without that module the
    small committed `example_seed.json` is used.
    """
    if importlib.util.find_spec("sandbox.seedgen") is None:
        log.info("sandbox.seedgen is not available; using %s", EXAMPLE_SEED_PATH.name)
        return json.loads(EXAMPLE_SEED_PATH.read_text(encoding="utf-8"))
    seedgen = importlib.import_module("sandbox.seedgen")
    return seedgen.generate_demo_seed()
