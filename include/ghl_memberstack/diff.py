"""Plan the Memberstack writes that turn the applied state into the desired state.

Columns are compared whole with pandas, so an unchanged member or record costs no Python loop. Only
the rows that differ become ``Operation`` objects. Missing values, nulls and "" compare equal, and
only the changed fields of a member or record are written.

Operation keys name the target and a hash of the values written, such as
``member:update:<contactId>:<hash>``, so a plan rebuilt after a crash yields the same keys for the
same writes and the journal can tell which are done.

``Operation.fields`` uses the state frames' column names. A member operation writes ``email``,
``cf:<key>`` custom fields and ``json``, and ``status`` records the sync status that goes with them.
A record operation writes Data Table field keys. The loader turns these into API payloads.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ghl_memberstack.state import AppliedState, DesiredState, Operation, OpKind

log = logging.getLogger(__name__)

CUSTOM_FIELD_PREFIX = "cf:"
STATUS_CUSTOM_FIELD = "cf:ghl-status"
STATUS_ACTIVE = "active"
STATUS_DELETED = "deleted"
DELETE_POLICIES = ("deactivate", "delete", "ignore")
# Record frame columns that are not Data Table fields.
RECORD_STATE_COLUMNS = ("contact_id", "record_id", "member_id")
# Set in a record update when the record moves to another contact; the loader puts the member id in.
MEMBER_LINK_FIELD = "member"


def _mapping_value(mapping: Any, name: str, default: Any) -> Any:
    if isinstance(mapping, dict):
        return mapping.get(name, default)
    return getattr(mapping, name, default)


def managed_plan_ids(mapping: Any) -> frozenset[str]:
    """Return the plan ids the mapping manages: the values of its ``tag_plans``."""
    tag_plans = _mapping_value(mapping, "tag_plans", None) or {}
    return frozenset(tag_plans.values())


def delete_policy(mapping: Any) -> str:
    """Return the mapping's policy for contacts gone from GHL: deactivate, delete or ignore.

    :raises ValueError: the mapping contains another value.
    """
    policy = _mapping_value(mapping, "delete_policy", "deactivate") or "deactivate"
    policy = getattr(policy, "value", policy)
    if policy not in DELETE_POLICIES:
        raise ValueError(
            f"Invalid delete_policy {policy!r} in the mapping; expected one of {DELETE_POLICIES}."
        )
    return policy


def operation_hash(fields: dict[str, Any]) -> str:
    """Return a short, stable hash of the values an operation writes.

    Values are str, bool, int or None, whose ``repr`` does not change between Python versions.
    """
    text = repr(sorted(fields.items()))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def values_of(column: pd.Series | pd.Index) -> list[Any]:
    """Return a column as plain Python values, with None for missing ones (fast for pyarrow text)."""
    return pa.array(column.array, from_pandas=True).to_pylist()


def _arrow_text(values: Any) -> pa.Array:
    if isinstance(values, (pd.Series, pd.Index)):
        values = values.array
    elif isinstance(values, (set, frozenset, dict)):
        values = list(values)
    array = pa.array(values, type=pa.large_string(), from_pandas=True)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _same_ids(left: pa.Array, right: pa.Array) -> bool:
    # Frames built from one another usually list the same ids in the same order; comparing them
    # costs a fraction of a hash lookup.
    return len(left) == len(right) and left.null_count == 0 and left.equals(right)


def isin(values: Any, universe: Any) -> np.ndarray:
    """Return a boolean array: whether each of ``values`` occurs in ``universe``, both ids as text.

    pandas 3.1 ``isin`` on pyarrow-backed text builds one pyarrow scalar per value of ``universe``
    in Python, which made it the slowest step of the diff. This function does one pyarrow hash lookup.
    """
    needles = _arrow_text(values)
    haystack = _arrow_text(universe)
    if _same_ids(needles, haystack):
        return np.ones(len(needles), dtype=bool)
    found = pc.fill_null(pc.is_in(needles, value_set=haystack), False)
    return found.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def positions(values: Any, universe: Any) -> np.ndarray:
    """Return for each of ``values`` its position in ``universe``, or -1 when it is absent."""
    needles = _arrow_text(values)
    haystack = _arrow_text(universe)
    if _same_ids(needles, haystack):
        return np.arange(len(needles))
    found = pc.fill_null(pc.index_in(needles, value_set=haystack), -1)
    return found.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def normalized(values: pd.Series) -> pd.Series:
    """Return the values as text with missing values as "", the form in which the diff compares."""
    return values.astype("string").fillna("")


def _normalized_arrow(values: pd.Series) -> pa.Array | pa.ChunkedArray:
    return pc.fill_null(_arrow_text(values.astype("string")), "")


def differs(new: pd.Series, old: pd.Series) -> np.ndarray:
    """Return a boolean array, True where two aligned columns differ once missing counts as ""."""
    changed = pc.not_equal(_normalized_arrow(new), _normalized_arrow(old))
    return changed.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _plain(value: Any) -> Any:
    """Return a JSON-friendly Python value: pandas and NumPy scalars unwrapped, missing as None."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _rows(frame: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """Return the rows where ``mask`` is True, without copying when it selects them all."""
    return frame if mask.all() else frame[mask]


def _split_plans(text: Any) -> set[str]:
    if text is None or text is pd.NA or not isinstance(text, str):
        return set()
    return {plan for plan in text.split(",") if plan}


def plan_operations(
    desired: DesiredState,
    applied: AppliedState,
    mapping: Any,
    *,
    observed_contact_ids: Iterable[str],
) -> list[Operation]:
    """Plan the writes that bring Memberstack from ``applied`` to ``desired``.

    Contacts outside ``observed_contact_ids`` are left alone, and so are their records. Records of
    observed contacts that are missing from ``desired`` are deleted, since those contacts' tasks,
    notes and appointments were read in full. Contacts missing from ``desired`` are treated as gone
    from GHL only when ``desired.complete`` is true. The mapping's delete policy then decides what
    happens to them. Quarantined contacts and records are never deleted.

    Operations come grouped by kind: member creates and updates, plan changes, record writes,
    then deletions.
    """
    observed = _as_index(observed_contact_ids)
    managed = managed_plan_ids(mapping)
    quarantined = _quarantined_ids(desired)
    desired_members = _rows(desired.members, isin(desired.members.index, observed))
    applied_members = _rows(applied.members, applied.members["member_id"].notna().to_numpy())

    where = positions(desired_members.index, applied_members.index)
    is_new = where < 0
    new_members = _rows(desired_members, is_new)
    old_members = _rows(desired_members, ~is_new)
    old_applied = _take(applied_members, where[~is_new])
    # Records may be written for observed contacts that have a member or get one in this plan.
    linkable = observed[isin(observed, desired_members.index) | isin(observed, applied_members.index)]

    operations: list[Operation] = []
    operations.extend(_member_creates(new_members, managed))
    operations.extend(_member_updates(old_members, old_applied))
    operations.extend(_plan_changes(old_members, old_applied, managed))
    member_ids = _MemberIds(applied_members)
    for table, desired_records in desired.records.items():
        applied_records = applied.records.get(table)
        operations.extend(
            _record_operations(
                table,
                desired_records,
                applied_records,
                observed,
                linkable,
                member_ids,
                quarantined.get(_table_entity(table), set()),
            )
        )
    if desired.complete:
        operations.extend(
            _deletions(desired, applied, applied_members, managed, delete_policy(mapping), quarantined)
        )
    log.info(
        "Planned %d operations for %d observed contacts (%d new members)",
        len(operations),
        len(desired_members),
        len(new_members),
    )
    return operations


def _as_index(contact_ids: Iterable[str]) -> pd.Index:
    if isinstance(contact_ids, pd.Index):
        return contact_ids if contact_ids.dtype == "string" else contact_ids.astype("string")
    return pd.Index(list(contact_ids), dtype="string")


def _take(frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """Return the rows at ``rows`` in that order, without copying when that is the whole frame."""
    if len(rows) == len(frame) and (rows == np.arange(len(frame))).all():
        return frame
    return frame.iloc[rows]


class _MemberIds:
    """Contact id to applied member id, built on first use: unchanged records never need it."""

    def __init__(self, applied_members: pd.DataFrame) -> None:
        self._members = applied_members
        self._ids: dict[str, str] | None = None

    def get(self, contact_id: str) -> str | None:
        if self._ids is None:
            members = self._members
            self._ids = dict(zip(values_of(members.index), values_of(members["member_id"]), strict=True))
        return self._ids.get(contact_id)


def _quarantined_ids(desired: DesiredState) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {}
    for entry in desired.quarantine:
        ids.setdefault(entry.entity, set()).add(entry.ghl_id)
    return ids


def _table_entity(table: str) -> str:
    return table.removeprefix("ghl_")


def _member_columns(desired_members: pd.DataFrame) -> list[str]:
    columns = ["email"]
    columns.extend(column for column in desired_members.columns if column.startswith(CUSTOM_FIELD_PREFIX))
    if "json" in desired_members.columns:
        columns.append("json")
    return columns


def _member_creates(new_members: pd.DataFrame, managed: frozenset[str]) -> Iterator[Operation]:
    columns = _member_columns(new_members)
    values = [values_of(new_members[column]) for column in columns]
    empty = [None] * len(new_members)
    statuses = values_of(new_members["status"]) if "status" in new_members.columns else empty
    plans = values_of(new_members["plans"]) if "plans" in new_members.columns else empty
    contact_ids = values_of(new_members.index)
    for position, row in enumerate(zip(*values, strict=True)):
        contact_id = contact_ids[position]
        fields = {
            column: value if column == "json" else (value or "")
            for column, value in zip(columns, row, strict=True)
        }
        if fields.get("json") is None:
            fields.pop("json", None)
        fields["status"] = statuses[position] or STATUS_ACTIVE
        yield Operation(
            key=f"member:create:{contact_id}:{operation_hash(fields)}",
            kind=OpKind.MEMBER_CREATE,
            contact_id=contact_id,
            fields=fields,
        )
        for plan_id in sorted(_split_plans(plans[position]) & managed):
            yield _plan_operation(OpKind.PLAN_ADD, contact_id, None, plan_id)


def _changed_mask(desired: pd.DataFrame, applied: pd.DataFrame, columns: list[str]) -> dict[str, np.ndarray]:
    """Return per column a boolean array, True where the row's normalized value differs."""
    changed = {}
    for column in columns:
        if column in applied.columns:
            old = applied[column]
        else:
            old = pd.Series("", index=applied.index, dtype="string")
        mask = differs(desired[column], old)
        if column == "json":
            # A member whose entities all target Data Tables has no json; its json is never touched.
            mask &= desired[column].notna().to_numpy()
        changed[column] = mask
    return changed


def _changed_rows(
    desired: pd.DataFrame, mask: dict[str, np.ndarray], extra: np.ndarray | None = None
) -> tuple[np.ndarray, list[Any], dict[str, list[Any]], dict[str, np.ndarray]]:
    """Return the changed rows' positions, index values, desired values and masks per column."""
    any_changed = np.zeros(len(desired), dtype=bool) if extra is None else extra.copy()
    for column_mask in mask.values():
        any_changed |= column_mask
    positions = np.flatnonzero(any_changed)
    subset = desired.iloc[positions]
    values = {column: values_of(subset[column]) for column in mask}
    masks = {column: column_mask[positions] for column, column_mask in mask.items()}
    return positions, values_of(subset.index), values, masks


def _member_updates(old_members: pd.DataFrame, old_applied: pd.DataFrame) -> Iterator[Operation]:
    columns = _member_columns(old_members)
    if old_members.empty:
        return
    mask = _changed_mask(old_members, old_applied, columns)
    if "status" in old_members.columns:
        mask["status"] = np.zeros(len(old_members), dtype=bool)
    rows, contact_ids, values, masks = _changed_rows(old_members, mask)
    # The rows of old_applied line up with old_members; one positional take is far cheaper than
    # a label lookup per changed member.
    member_ids = values_of(old_applied["member_id"].iloc[rows])
    for position, contact_id in enumerate(contact_ids):
        fields: dict[str, Any] = {}
        cleared = []
        for column in columns:
            if not masks[column][position]:
                continue
            value = values[column][position]
            if column != "json":
                value = "" if value is None else str(value)
                if value == "":
                    cleared.append(column)
            fields[column] = value
        status = values["status"][position] if "status" in values else None
        fields["status"] = status or STATUS_ACTIVE
        yield Operation(
            key=f"member:update:{contact_id}:{operation_hash(fields)}",
            kind=OpKind.MEMBER_UPDATE,
            contact_id=contact_id,
            member_id=member_ids[position],
            fields=fields,
            cleared=tuple(cleared),
        )


def _plan_operation(kind: OpKind, contact_id: str, member_id: str | None, plan_id: str) -> Operation:
    verb = "add" if kind is OpKind.PLAN_ADD else "remove"
    return Operation(
        key=f"plan:{verb}:{contact_id}:{plan_id}",
        kind=kind,
        contact_id=contact_id,
        member_id=member_id,
        fields={"plan": plan_id},
    )


def _plan_changes(
    old_members: pd.DataFrame, old_applied: pd.DataFrame, managed: frozenset[str]
) -> Iterator[Operation]:
    if old_members.empty or "plans" not in old_members.columns:
        return
    old_plans = (
        old_applied["plans"] if "plans" in old_applied.columns else pd.Series("", index=old_applied.index)
    )
    for contact_id in old_members.index[differs(old_members["plans"], old_plans)]:
        wanted = _split_plans(old_members.at[contact_id, "plans"]) & managed
        held = _split_plans(old_plans.at[contact_id]) & managed
        member_id = old_applied.at[contact_id, "member_id"]
        for plan_id in sorted(wanted - held):
            yield _plan_operation(OpKind.PLAN_ADD, contact_id, member_id, plan_id)
        for plan_id in sorted(held - wanted):
            yield _plan_operation(OpKind.PLAN_REMOVE, contact_id, member_id, plan_id)


def _record_field_columns(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if column not in RECORD_STATE_COLUMNS]


def _record_operations(
    table: str,
    desired_records: pd.DataFrame,
    applied_records: pd.DataFrame | None,
    observed: pd.Index,
    linkable: pd.Index,
    member_ids: _MemberIds,
    quarantined: set[str],
) -> Iterator[Operation]:
    wanted = isin(desired_records["contact_id"], linkable)
    if applied_records is None or applied_records.empty:
        yield from _record_creates(table, _rows(desired_records, wanted), member_ids)
        return
    applied_loaded = _rows(applied_records, applied_records["record_id"].notna().to_numpy())
    where = positions(desired_records.index, applied_loaded.index)
    is_new = where < 0
    yield from _record_creates(table, _rows(desired_records, wanted & is_new), member_ids)
    kept = wanted & ~is_new
    old = _take(applied_loaded, where[kept])
    yield from _record_updates(table, _rows(desired_records, kept), old, member_ids)

    # Applied records missing from the desired state are gone, unless their contact was not observed.
    matched = np.zeros(len(applied_loaded), dtype=bool)
    matched[where[~is_new]] = True
    gone = applied_loaded[~matched]
    gone = gone[isin(gone["contact_id"], observed) & ~isin(gone.index, quarantined)]
    for ghl_id, contact_id, record_id in zip(gone.index, gone["contact_id"], gone["record_id"], strict=True):
        yield _record_delete(table, ghl_id, contact_id, record_id, member_ids.get(contact_id))


def _record_creates(table: str, records: pd.DataFrame, member_ids: _MemberIds) -> Iterator[Operation]:
    columns = _record_field_columns(records)
    values = zip(*(values_of(records[column]) for column in columns), strict=True)
    for ghl_id, contact_id, row in zip(
        values_of(records.index), values_of(records["contact_id"]), values, strict=True
    ):
        fields = dict(zip(columns, row, strict=True))
        yield Operation(
            key=f"record:create:{table}:{ghl_id}:{operation_hash(fields)}",
            kind=OpKind.RECORD_CREATE,
            contact_id=contact_id,
            member_id=member_ids.get(contact_id),
            table=table,
            ghl_id=ghl_id,
            fields=fields,
        )


def _record_updates(
    table: str, records: pd.DataFrame, old: pd.DataFrame, member_ids: _MemberIds
) -> Iterator[Operation]:
    """Plan updates of ``records`` from their applied rows ``old``, which are in the same order."""
    if records.empty:
        return
    columns = _record_field_columns(records)
    record_ids = values_of(old["record_id"])
    mask = _changed_mask(records, old, columns)
    moved = differs(records["contact_id"], old["contact_id"])
    mask["contact_id"] = np.zeros(len(records), dtype=bool)
    rows, ghl_ids, values, masks = _changed_rows(records, mask, extra=moved)
    moved_ids = set(values_of(records.index[moved]))
    for position, ghl_id in enumerate(ghl_ids):
        contact_id = values["contact_id"][position]
        fields: dict[str, Any] = {}
        cleared = []
        for column in columns:
            if masks[column][position]:
                value = values[column][position]
                fields[column] = value
                if value is None or value == "":
                    cleared.append(column)
        if ghl_id in moved_ids:
            fields[MEMBER_LINK_FIELD] = None
        yield Operation(
            key=f"record:update:{table}:{ghl_id}:{operation_hash(fields | {'contact_id': contact_id})}",
            kind=OpKind.RECORD_UPDATE,
            contact_id=contact_id,
            member_id=member_ids.get(contact_id),
            table=table,
            ghl_id=ghl_id,
            record_id=record_ids[rows[position]],
            fields=fields,
            cleared=tuple(cleared),
        )


def _record_delete(
    table: str, ghl_id: str, contact_id: str, record_id: str, member_id: str | None
) -> Operation:
    return Operation(
        key=f"record:delete:{table}:{ghl_id}:{record_id}",
        kind=OpKind.RECORD_DELETE,
        contact_id=contact_id,
        member_id=member_id,
        table=table,
        ghl_id=ghl_id,
        record_id=record_id,
    )


def _deletions(
    desired: DesiredState,
    applied: AppliedState,
    applied_members: pd.DataFrame,
    managed: frozenset[str],
    policy: str,
    quarantined: dict[str, set[str]],
) -> Iterator[Operation]:
    if policy == "ignore":
        return
    spared = desired.members.index.union(pd.Index(list(quarantined.get("contacts", ())), dtype="string"))
    gone = applied_members[~isin(applied_members.index, spared)]
    # The loader relinks the member of a gone contact to a live contact with the same email. Both
    # applied rows then name that member, which belongs to the live contact now, so it stays as it is.
    live = applied_members[isin(applied_members.index, desired.members.index)]
    gone = gone[~isin(gone["member_id"], live["member_id"])]
    if policy == "deactivate":
        yield from _deactivations(gone, managed)
        return
    for table, records in applied.records.items():
        doomed = records[isin(records["contact_id"], gone.index) & records["record_id"].notna().to_numpy()]
        for ghl_id, contact_id, record_id in zip(
            doomed.index, doomed["contact_id"], doomed["record_id"], strict=True
        ):
            yield _record_delete(
                table, ghl_id, contact_id, record_id, _plain(gone.at[contact_id, "member_id"])
            )
    for contact_id, member_id in zip(gone.index, gone["member_id"], strict=True):
        yield Operation(
            key=f"member:delete:{contact_id}:{member_id}",
            kind=OpKind.MEMBER_DELETE,
            contact_id=contact_id,
            member_id=member_id,
        )


def _deactivations(gone: pd.DataFrame, managed: frozenset[str]) -> Iterator[Operation]:
    has_status_field = STATUS_CUSTOM_FIELD in gone.columns
    for contact_id in gone.index:
        member_id = gone.at[contact_id, "member_id"]
        held = _split_plans(gone.at[contact_id, "plans"]) & managed if "plans" in gone.columns else set()
        for plan_id in sorted(held):
            yield _plan_operation(OpKind.PLAN_REMOVE, contact_id, member_id, plan_id)
        status = _plain(gone.at[contact_id, "status"]) if "status" in gone.columns else None
        field_status = _plain(gone.at[contact_id, STATUS_CUSTOM_FIELD]) if has_status_field else None
        if status == STATUS_DELETED and (not has_status_field or field_status == STATUS_DELETED):
            continue
        fields = {"status": STATUS_DELETED}
        if has_status_field:
            fields[STATUS_CUSTOM_FIELD] = STATUS_DELETED
        yield Operation(
            key=f"member:update:{contact_id}:{operation_hash(fields)}",
            kind=OpKind.MEMBER_UPDATE,
            contact_id=contact_id,
            member_id=member_id,
            fields=fields,
        )


def is_deactivation(operation: Operation) -> bool:
    """Return True for the member update that marks a contact gone from GHL."""
    return operation.kind is OpKind.MEMBER_UPDATE and operation.fields.get("status") == STATUS_DELETED
