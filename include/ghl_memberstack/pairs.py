"""Sync pairs: which GHL location syncs into which Memberstack app, under which mapping.

A pairs file is YAML with one top-level key ``pairs``, a list of entries such as::

    pairs:
      - name: default
        gohighlevel_conn_id: gohighlevel_default
        memberstack_conn_id: memberstack_default
        mapping: mapping.yaml

A relative ``mapping`` path resolves against the folder of the pairs file. The Airflow Variable
``ghl_memberstack_sync_pairs`` may name another pairs file; a relative path there resolves against
the project's ``include/`` folder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

INCLUDE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_PAIRS_FILE = INCLUDE_DIR / "sync_pairs.yaml"
PAIRS_VARIABLE = "ghl_memberstack_sync_pairs"

# Pair names become parts of storage paths, lease names and task map index labels.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
# The characters Airflow accepts in a connection id.
_CONN_ID_RE = re.compile(r"^[\w.-]{1,250}$")
_FIELDS = ("name", "gohighlevel_conn_id", "memberstack_conn_id", "mapping")


class PairsError(ValueError):
    """A pairs file or a requested pair name is invalid."""


@dataclasses.dataclass(frozen=True)
class SyncPair:
    """One GHL location synced into one Memberstack app under one mapping file."""

    name: str
    gohighlevel_conn_id: str
    memberstack_conn_id: str
    mapping: str

    def to_dict(self) -> dict[str, str]:
        """Return the pair as a plain dict, small enough for XCom."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SyncPair:
        """Build a pair from the dict that :meth:`to_dict` returns."""
        return cls(**{field: str(data[field]) for field in _FIELDS})


def resolve_pairs_path(variable_value: str | None = None) -> Path:
    """Return the pairs file to use: the Variable's value when set, else the default file."""
    if variable_value is None or not variable_value.strip():
        return DEFAULT_PAIRS_FILE
    path = Path(variable_value.strip()).expanduser()
    if not path.is_absolute():
        path = INCLUDE_DIR / path
    return path


def read_pairs_variable() -> str | None:
    """Return the value of the Variable ``ghl_memberstack_sync_pairs``, or None when it is unset.

    Call this inside a task only, because a DAG file must not read Variables at parse time.
    """
    from airflow.sdk import Variable

    return Variable.get(PAIRS_VARIABLE, default=None)


def load_pairs(path: str | Path) -> list[SyncPair]:
    """Read and validate a pairs file.

    :raises PairsError: when the file is missing, is not valid YAML, or an entry is invalid. The
        message names the file, the entry and the problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PairsError(f"{path}: sync pairs file not found") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PairsError(f"{path}: invalid YAML: {error}") from error

    if not isinstance(document, dict) or set(document) != {"pairs"}:
        raise PairsError(f"{path}: expected a mapping with the single key 'pairs'")
    entries = document["pairs"]
    if not isinstance(entries, list) or not entries:
        raise PairsError(f"{path}: 'pairs' must be a non-empty list")

    pairs = [_parse_entry(path, index, entry) for index, entry in enumerate(entries)]
    _check_unique(path, pairs)
    return pairs


def _parse_entry(path: Path, index: int, entry: Any) -> SyncPair:
    where = f"{path}: pairs[{index}]"
    if not isinstance(entry, dict):
        raise PairsError(f"{where}: expected a mapping with the keys {', '.join(_FIELDS)}")
    unknown = sorted(set(map(str, entry)) - set(_FIELDS))
    if unknown:
        raise PairsError(f"{where}: unknown keys {unknown}; allowed keys are {', '.join(_FIELDS)}")
    missing = [field for field in _FIELDS if field not in entry]
    if missing:
        raise PairsError(f"{where}: missing keys {missing}")
    for field in _FIELDS:
        if not isinstance(entry[field], str) or not entry[field].strip():
            raise PairsError(f"{where}.{field}: expected a non-empty string, got {entry[field]!r}")

    name = entry["name"].strip()
    if not _NAME_RE.match(name):
        raise PairsError(
            f"{where}.name: invalid name {name!r}; use 1 to 63 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    for field in ("gohighlevel_conn_id", "memberstack_conn_id"):
        if not _CONN_ID_RE.match(entry[field].strip()):
            raise PairsError(f"{where}.{field}: invalid connection id {entry[field]!r}")

    mapping = Path(entry["mapping"].strip()).expanduser()
    if not mapping.is_absolute():
        mapping = path.resolve().parent / mapping
    if not mapping.is_file():
        raise PairsError(f"{where}.mapping: mapping file {str(mapping)!r} not found")

    return SyncPair(
        name=name,
        gohighlevel_conn_id=entry["gohighlevel_conn_id"].strip(),
        memberstack_conn_id=entry["memberstack_conn_id"].strip(),
        mapping=str(mapping),
    )


def _check_unique(path: Path, pairs: list[SyncPair]) -> None:
    names: set[str] = set()
    routes: dict[tuple[str, str], str] = {}
    for pair in pairs:
        if pair.name in names:
            raise PairsError(f"{path}: pair name {pair.name!r} appears more than once")
        names.add(pair.name)
        # Two pairs on one location and one app would write the same members from two snapshots.
        route = (pair.gohighlevel_conn_id, pair.memberstack_conn_id)
        if route in routes:
            raise PairsError(
                f"{path}: pairs {routes[route]!r} and {pair.name!r} both sync "
                f"{route[0]!r} into {route[1]!r}; keep one of them"
            )
        routes[route] = pair.name


def select_pairs(pairs: list[SyncPair], names: Iterable[str] | None) -> list[SyncPair]:
    """Return the pairs named in ``names`` in file order, or every pair when ``names`` is empty.

    :raises PairsError: when a name is not in the pairs file.
    """
    requested = [str(name).strip() for name in (names or []) if str(name).strip()]
    if not requested:
        return list(pairs)
    known = {pair.name for pair in pairs}
    unknown = sorted(set(requested) - known)
    if unknown:
        raise PairsError(
            f"unknown sync pairs {unknown} in the sync_pairs param; known pairs are {sorted(known)}"
        )
    wanted = set(requested)
    return [pair for pair in pairs if pair.name in wanted]
