"""Shared types of the sync: desired and applied state, planned operations, quarantine entries.

Every step of the pipeline exchanges these, so extraction, mapping, diff, guard, loader and reports
agree on one shape. Frames are pandas DataFrames with explicit nullable dtypes (``string``,
``boolean``, ``Int64``), so pandas 2 and 3 give the same diff.

Members frame (one row per valid GHL contact, index ``contact_id``):
    ``email``          trimmed, lower-cased login email
    ``cf:<key>``       one column per mapped Memberstack custom field, "" for empty
    ``plans``          managed free plan ids the member should hold, sorted and joined with ","
    ``status``         ``active`` or ``deleted``
    ``json``           JSON text of the member's ``ghl`` json subtree, or <NA> when no entity targets json
    ``date_updated``   the contact's dateUpdated in epoch milliseconds (Int64)
    applied state only: ``member_id``

Record frames (one per Data Table, index ``ghl_id``):
    ``contact_id`` plus one column per Data Table field key except ``member``
    applied state only: ``record_id``, ``member_id``
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import pandas as pd

SCHEMA_VERSION = 1
ENTITIES = ("contacts", "tasks", "notes", "appointments")


class OpKind(str, enum.Enum):
    """The kind of one planned write."""

    MEMBER_CREATE = "member_create"
    MEMBER_UPDATE = "member_update"
    MEMBER_DELETE = "member_delete"
    PLAN_ADD = "plan_add"
    PLAN_REMOVE = "plan_remove"
    RECORD_CREATE = "record_create"
    RECORD_UPDATE = "record_update"
    RECORD_DELETE = "record_delete"


@dataclasses.dataclass(frozen=True)
class Operation:
    """One write to Memberstack, with a key that stays the same when the plan is rebuilt.

    The key names the target and a hash of the values written, for example
    ``member:update:<contactId>:<hash>`` or ``record:create:ghl_notes:<noteId>``, so a rerun after a
    crash recognises operations the journal already holds. ``fields`` contains full values and is
    never logged; reports mask it.
    """

    key: str
    kind: OpKind
    contact_id: str
    member_id: str | None = None
    table: str | None = None
    ghl_id: str | None = None
    record_id: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The field names a member or record update clears, for the guard.
    cleared: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class QuarantineEntry:
    """A GHL object left out of the load, with a reason code such as ``invalid_email``."""

    entity: str
    ghl_id: str
    reason: str
    detail: str = ""


@dataclasses.dataclass
class DesiredState:
    """The state Memberstack should reach for one sync pair, built from GHL under the mapping."""

    members: pd.DataFrame
    records: dict[str, pd.DataFrame]
    quarantine: list[QuarantineEntry] = dataclasses.field(default_factory=list)
    # True only when every page of every entity was read (no budget cut, no failed cursor).
    complete: bool = False


@dataclasses.dataclass
class AppliedState:
    """The last desired state that was written to Memberstack, with the ids it was written to."""

    members: pd.DataFrame
    records: dict[str, pd.DataFrame]
