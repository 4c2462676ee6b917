"""The actual Memberstack state of a sync pair, and its comparison with the desired state.

``observe_memberstack`` lists every member and every Data Table record of the app.
``actual_state`` turns that listing into frames of the applied-state shape (see
``ghl_memberstack.state``), so the diff that plans a sync also plans a repair. ``compare`` then
sorts every member and record into one finding kind.

Finding kinds, which count towards parity:
    in_sync             the member or record contains what the mapping derives from GHL
    missing_member      a valid GHL contact has no member linked to it
    extra_member        a member is linked to a contact that no longer exists in GHL, and the delete
                        policy has not been applied to it yet
    field_mismatch      a member field differs (the field names are listed)
    plan_mismatch       the member holds other managed plans than its contact's tags grant
    record_missing, record_extra, record_different
                        a Data Table record is missing, is not in GHL, or differs (field names
                        listed; ``member`` means the record links to another member)

Outside the percentages:
    unmanaged           members the sync neither created nor adopted: no ``ghlContactId``
    retired             members of contacts gone from GHL that the delete policy has already dealt
                        with (deactivated, or left alone under ``ignore``), and their records
    quarantined         members and records of contacts the mapping quarantined
    not_covered         notes and appointments of contacts whose children this run did not read,
                        and, after a partial read of the contacts, members and records of contacts
                        the read did not reach

Parity of an entity is in_sync / (in_sync + missing + mismatched + extra), counting each member or
record once; an entity with nothing to count has parity 100 %.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from ghl_memberstack import mapping as mapping_module
from ghl_memberstack.diff import CUSTOM_FIELD_PREFIX, STATUS_DELETED, delete_policy, differs, managed_plan_ids
from ghl_memberstack.load import META_CONTACT_ID, META_LOCATION_ID
from ghl_memberstack.report import mask_value
from ghl_memberstack.state import ENTITIES, AppliedState, DesiredState

log = logging.getLogger(__name__)

IN_SYNC = "in_sync"
MISSING_MEMBER = "missing_member"
EXTRA_MEMBER = "extra_member"
FIELD_MISMATCH = "field_mismatch"
PLAN_MISMATCH = "plan_mismatch"
RECORD_MISSING = "record_missing"
RECORD_EXTRA = "record_extra"
RECORD_DIFFERENT = "record_different"
FINDING_KINDS = (
    IN_SYNC,
    MISSING_MEMBER,
    EXTRA_MEMBER,
    FIELD_MISMATCH,
    PLAN_MISMATCH,
    RECORD_MISSING,
    RECORD_EXTRA,
    RECORD_DIFFERENT,
)
EXCLUDED_KINDS = ("unmanaged", "retired", "quarantined", "not_covered")
# Reports list at most this many examples per finding kind and entity.
EXAMPLES_PER_KIND = 20
# The Data Table field that links a record to its member.
MEMBER_FIELD = "member"


@dataclasses.dataclass
class MemberstackObservation:
    """Every member and every Data Table record of one app, as the API returned them."""

    members: list[dict[str, Any]]
    records: dict[str, list[dict[str, Any]]]


@dataclasses.dataclass
class ActualState:
    """The Memberstack state of one pair in the applied-state shape, and the members it leaves out.

    ``applied`` contains the managed members (linked to a contact of this location) and the records
    of this location. ``unmanaged`` lists members without a link, each with its email masked, and
    ``other_location`` counts members linked to another location of a shared app.
    """

    applied: AppliedState
    unmanaged: list[dict[str, Any]]
    other_location: int = 0


def observe_memberstack(hook: Any, mapping: Any) -> MemberstackObservation:
    """List every member, with ``json`` when the mapping targets it, and every record of the mapped tables."""
    include_json = bool(mapping.json_entities)
    members = list(hook.list_members(include_json=include_json))
    records = {}
    for entity in mapping.table_entities:
        table = mapping_module.ENTITY_TABLES[entity]
        records[table] = list(hook.query_records(table))
    log.info(
        "Read %d members and %s records from Memberstack",
        len(members),
        {table: len(rows) for table, rows in records.items()},
    )
    return MemberstackObservation(members=members, records=records)


# --------------------------------------------------------------------------------------------
# Actual state


def _member_email(member: Mapping[str, Any]) -> str:
    auth = member.get("auth") or {}
    return str(auth.get("email") or member.get("email") or "").strip().lower()


def _json_text(member: Mapping[str, Any], json_entities: tuple[str, ...]) -> str | None:
    """Return the member's ``ghl`` json subtree in the text form the desired state uses."""
    if not json_entities:
        return None
    subtree = ((member.get("json") or {}).get(mapping_module.JSON_ROOT_KEY)) or {}
    value = {entity: subtree.get(entity, []) for entity in json_entities}
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _member_row(member: Mapping[str, Any], mapping: Any, managed: frozenset[str]) -> dict[str, Any]:
    custom_fields = member.get("customFields") or {}
    row: dict[str, Any] = {"email": _member_email(member)}
    for key in mapping.member_fields:
        value = custom_fields.get(key)
        row[CUSTOM_FIELD_PREFIX + key] = "" if value is None else str(value)
    plans = {connection.get("planId") for connection in member.get("planConnections") or []}
    row["plans"] = ",".join(sorted(plan for plan in plans if plan in managed))
    row["status"] = STATUS_DELETED if custom_fields.get("ghl-status") == STATUS_DELETED else "active"
    row["json"] = _json_text(member, mapping.json_entities)
    row["member_id"] = str(member["id"])
    return row


def actual_state(
    observation: MemberstackObservation,
    mapping: Any,
    *,
    location_id: str,
    desired: DesiredState,
    known_member_ids: Mapping[str, str] | None = None,
) -> ActualState:
    """Build the actual state of one pair from a Memberstack listing.

    A member is managed when its ``metaData.ghlContactId`` is set and its ``ghlLocationId`` is this
    location or empty. When two members link the same contact, the one in ``known_member_ids``
    (contact id to member id, from the snapshot) stays managed and the others are listed as
    unmanaged duplicates. Records whose ``ghl_location_id`` names another location are left out.
    """
    managed_plans = managed_plan_ids(mapping)
    known = dict(known_member_ids or {})
    desired_by_email = {
        email: str(cid) for cid, email in zip(desired.members.index, desired.members["email"], strict=True)
    }
    rows: dict[str, dict[str, Any]] = {}
    unmanaged: list[dict[str, Any]] = []
    other_location = 0
    for member in observation.members:
        meta = member.get("metaData") or {}
        contact_id = str(meta.get(META_CONTACT_ID) or "")
        location = str(meta.get(META_LOCATION_ID) or "")
        if not contact_id:
            unmanaged.append(_unmanaged_entry(member, "not_linked", desired_by_email))
            continue
        if location and location != location_id:
            other_location += 1
            continue
        previous = rows.get(contact_id)
        if previous is not None and known.get(contact_id) != str(member["id"]):
            unmanaged.append(_unmanaged_entry(member, "duplicate_link", {}))
            continue
        if previous is not None:
            # The snapshot records this member, so the one listed before it is the duplicate.
            unmanaged.append(
                {
                    "member_id": previous["member_id"],
                    "email": mask_value("email", previous["email"]),
                    "reason": "duplicate_link",
                    "contact_id": None,
                }
            )
        rows[contact_id] = _member_row(member, mapping, managed_plans)

    members = _members_frame(rows, desired.members)
    records = {
        table: _records_frame(table, raw, location_id, desired.records.get(table))
        for table, raw in observation.records.items()
    }
    log.info(
        "Actual state: %d managed members, %d unmanaged, %d of other locations",
        len(members),
        len(unmanaged),
        other_location,
    )
    return ActualState(AppliedState(members=members, records=records), unmanaged, other_location)


def _unmanaged_entry(
    member: Mapping[str, Any], reason: str, desired_by_email: Mapping[str, str]
) -> dict[str, Any]:
    email = _member_email(member)
    # A member with a contact's email is adopted by the next repair or sync.
    return {
        "member_id": str(member["id"]),
        "email": mask_value("email", email),
        "reason": reason,
        "contact_id": desired_by_email.get(email),
    }


def _members_frame(rows: Mapping[str, dict[str, Any]], template: pd.DataFrame) -> pd.DataFrame:
    columns = [column for column in template.columns if column != "date_updated"]
    data = {
        column: pd.array([row.get(column) for row in rows.values()], dtype="string") for column in columns
    }
    frame = pd.DataFrame(data, index=pd.Index(list(rows), dtype="string", name="contact_id"))
    frame["date_updated"] = pd.array([None] * len(rows), dtype="Int64")
    frame["member_id"] = pd.array([row["member_id"] for row in rows.values()], dtype="string")
    return frame


def _records_frame(
    table: str, raw_records: list[dict[str, Any]], location_id: str, template: pd.DataFrame | None
) -> pd.DataFrame:
    id_field = mapping_module.TABLE_ID_FIELDS[table]
    columns = mapping_module.record_columns(table)
    rows: dict[str, dict[str, Any]] = {}
    for record in raw_records:
        data = record.get("data") or {}
        ghl_id = data.get(id_field)
        location = data.get("ghl_location_id")
        if not ghl_id or (location and location != location_id) or str(ghl_id) in rows:
            continue
        row = {column: data.get(column) for column in columns if column != "contact_id"}
        row["contact_id"] = data.get("ghl_contact_id")
        row["record_id"] = record.get("id")
        member = data.get(MEMBER_FIELD)
        row["member_id"] = member if isinstance(member, str) else None
        rows[str(ghl_id)] = row
    frame = pd.DataFrame(index=pd.Index(list(rows), dtype="string", name="ghl_id"))
    for column in [*columns, "record_id", "member_id"]:
        dtype = template[column].dtype if template is not None and column in template.columns else "string"
        values = [row.get(column) for row in rows.values()]
        try:
            frame[column] = pd.array(values, dtype=dtype)
        except (TypeError, ValueError):
            # A value of another type (a text "true" in a BOOLEAN field) is compared as text.
            frame[column] = pd.array([None if v is None else str(v) for v in values], dtype="string")
    return frame


def planning_state(actual: ActualState, desired: DesiredState) -> AppliedState:
    """Return the actual state as the diff should see it when it plans a repair.

    A desired record that links to another member than its contact's member gets an empty
    ``contact_id`` here, so the diff reads it as moved and its update sets the member link again.
    """
    members = actual.applied.members
    member_ids = members["member_id"]
    records = {}
    for table, frame in actual.applied.records.items():
        desired_rows = desired.records.get(table)
        if frame.empty or desired_rows is None:
            records[table] = frame
            continue
        expected = member_ids.reindex(frame["contact_id"]).to_numpy()
        linked = frame["member_id"].to_numpy()
        mislinked = [
            ghl_id in desired_rows.index and (pd.isna(want) or pd.isna(have) or want != have)
            for ghl_id, want, have in zip(frame.index, expected, linked, strict=True)
        ]
        adjusted = frame.copy()
        adjusted.loc[mislinked, "contact_id"] = ""
        records[table] = adjusted
    return AppliedState(members=members, records=records)


# --------------------------------------------------------------------------------------------
# Comparison


@dataclasses.dataclass
class Findings:
    """Counts, field mismatch counts and examples of one comparison.

    ``counts`` maps entity to kind (``FINDING_KINDS`` and ``EXCLUDED_KINDS``) to a count, and
    ``mismatched`` counts per entity the members or records with at least one mismatch kind.
    """

    counts: dict[str, dict[str, int]]
    mismatched: dict[str, int]
    fields: dict[str, dict[str, int]]
    examples: dict[str, list[dict[str, Any]]]

    def parity(self, entity: str) -> float:
        """Return the parity of one entity in percent."""
        counts = self.counts[entity]
        in_sync = counts[IN_SYNC]
        if entity == "contacts":
            total = in_sync + counts[MISSING_MEMBER] + self.mismatched[entity] + counts[EXTRA_MEMBER]
        else:
            total = in_sync + counts[RECORD_MISSING] + counts[RECORD_DIFFERENT] + counts[RECORD_EXTRA]
        return 100.0 if total == 0 else round(100.0 * in_sync / total, 3)

    def parity_by_entity(self) -> dict[str, float]:
        """Return the parity of every entity in percent."""
        return {entity: self.parity(entity) for entity in ENTITIES}

    def lowest(self) -> tuple[str, float]:
        """Return the entity with the lowest parity and its parity."""
        parities = self.parity_by_entity()
        entity = min(ENTITIES, key=lambda name: (parities[name], ENTITIES.index(name)))
        return entity, parities[entity]

    def to_dict(self) -> dict[str, Any]:
        """Return the findings as JSON-compatible data, with the parity per entity."""
        lowest_entity, lowest_parity = self.lowest()
        return {
            "parity": self.parity_by_entity(),
            "lowest": {"entity": lowest_entity, "parity": lowest_parity},
            "counts": self.counts,
            "mismatched": self.mismatched,
            "field_mismatches": self.fields,
            "examples": self.examples,
        }


class _Collector:
    def __init__(self) -> None:
        kinds = (*FINDING_KINDS, *EXCLUDED_KINDS)
        self.counts = {entity: dict.fromkeys(kinds, 0) for entity in ENTITIES}
        self.mismatched = dict.fromkeys(ENTITIES, 0)
        self.fields: dict[str, dict[str, int]] = {entity: {} for entity in ENTITIES}
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(self, entity: str, kind: str, count: int = 1) -> None:
        self.counts[entity][kind] += count

    def example(self, kind: str, entity: str, **ids: Any) -> None:
        bucket = self.examples.setdefault(kind, [])
        if sum(1 for item in bucket if item["entity"] == entity) < EXAMPLES_PER_KIND:
            bucket.append({"entity": entity, **{key: _plain(value) for key, value in ids.items()}})

    def field(self, entity: str, name: str) -> None:
        self.fields[entity][name] = self.fields[entity].get(name, 0) + 1

    def findings(self) -> Findings:
        fields = {entity: dict(sorted(values.items())) for entity, values in self.fields.items()}
        return Findings(self.counts, self.mismatched, fields, self.examples)


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def _entity(table: str) -> str:
    return table.removeprefix("ghl_")


def compare(
    desired: DesiredState,
    actual: ActualState,
    mapping: Any,
    *,
    covered_contact_ids: Iterable[str],
) -> Findings:
    """Sort every member and record of the pair into one finding kind.

    :param covered_contact_ids: the contacts whose notes and appointments this run read; the notes
        and appointments of other contacts count as ``not_covered``. Tasks are always read in full.
    """
    collector = _Collector()
    quarantined = _quarantined(desired)
    gone_retired = _compare_members(collector, desired, actual, mapping, quarantined.get("contacts", set()))
    covered = set(covered_contact_ids)
    for table, desired_rows in desired.records.items():
        have = actual.applied.records.get(table)
        if have is None:
            continue
        entity = _entity(table)
        scope = None if entity == "tasks" else covered
        _compare_records(
            collector,
            table,
            desired_rows,
            have,
            desired,
            actual,
            scope,
            quarantined,
            gone_retired,
            delete_policy(mapping),
        )
    collector.counts["contacts"]["unmanaged"] = len(actual.unmanaged)
    return collector.findings()


def _quarantined(desired: DesiredState) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {}
    for entry in desired.quarantine:
        ids.setdefault(entry.entity, set()).add(str(entry.ghl_id))
    return ids


def _compare_members(
    collector: _Collector,
    desired: DesiredState,
    actual: ActualState,
    mapping: Any,
    quarantined_contacts: set[str],
) -> set[str]:
    """Classify members; return the contacts gone from GHL whose member counts as retired."""
    desired_rows = desired.members
    have = actual.applied.members
    present = desired_rows.index.isin(have.index)
    for contact_id in desired_rows.index[~present]:
        collector.add("contacts", MISSING_MEMBER)
        collector.example(MISSING_MEMBER, "contacts", ghl_id=contact_id, member_id=None)

    both = desired_rows.index[present]
    old = have.loc[both]
    new = desired_rows.loc[both]
    columns = ["email", *(c for c in new.columns if c.startswith(CUSTOM_FIELD_PREFIX))]
    if "json" in new.columns and new["json"].notna().any():
        columns.append("json")
    masks = {column: differs(new[column], old[column]) for column in columns}
    plan_mask = differs(new["plans"], old["plans"])
    for position, contact_id in enumerate(both):
        changed = [column.removeprefix(CUSTOM_FIELD_PREFIX) for column in columns if masks[column][position]]
        member_id = old.iat[position, old.columns.get_loc("member_id")]
        if not changed and not plan_mask[position]:
            collector.add("contacts", IN_SYNC)
            continue
        collector.mismatched["contacts"] += 1
        if changed:
            collector.add("contacts", FIELD_MISMATCH)
            collector.example(
                FIELD_MISMATCH, "contacts", ghl_id=contact_id, member_id=member_id, fields=changed
            )
            for name in changed:
                collector.field("contacts", name)
        if plan_mask[position]:
            collector.add("contacts", PLAN_MISMATCH)
            collector.field("contacts", "plans")
            collector.example(
                PLAN_MISMATCH,
                "contacts",
                ghl_id=contact_id,
                member_id=member_id,
                expected=str(new["plans"].iat[position] or ""),
                actual=str(old["plans"].iat[position] or ""),
            )

    policy = delete_policy(mapping)
    extra = have[~have.index.isin(desired_rows.index)]
    retired: set[str] = set()
    for contact_id, status, plans, member_id in zip(
        extra.index, extra["status"], extra["plans"], extra["member_id"], strict=True
    ):
        if contact_id in quarantined_contacts:
            collector.add("contacts", "quarantined")
            continue
        if not desired.complete:
            # A partial read cannot tell a gone contact from one it did not reach.
            collector.add("contacts", "not_covered")
            continue
        deactivated = status == STATUS_DELETED and not (isinstance(plans, str) and plans)
        if policy == "ignore" or (policy == "deactivate" and deactivated):
            collector.add("contacts", "retired")
            retired.add(contact_id)
            continue
        collector.add("contacts", EXTRA_MEMBER)
        collector.example(EXTRA_MEMBER, "contacts", ghl_id=contact_id, member_id=member_id, policy=policy)
    return retired


def _compare_records(
    collector: _Collector,
    table: str,
    desired_rows: pd.DataFrame,
    have: pd.DataFrame,
    desired: DesiredState,
    actual: ActualState,
    scope: set[str] | None,
    quarantined: dict[str, set[str]],
    retired_contacts: set[str],
    policy: str,
) -> None:
    entity = _entity(table)
    quarantined_records = quarantined.get(entity, set())
    quarantined_contacts = quarantined.get("contacts", set())
    live_contacts = set(desired.members.index)
    member_ids = actual.applied.members["member_id"]

    in_scope = desired_rows["contact_id"].isin(scope).to_numpy() if scope is not None else None
    if in_scope is not None:
        collector.add(entity, "not_covered", int((~in_scope).sum()))
        desired_rows = desired_rows[in_scope]
    have_ids = have.index
    missing = desired_rows.index[~desired_rows.index.isin(have_ids)]
    for ghl_id in missing:
        collector.add(entity, RECORD_MISSING)
        collector.example(
            RECORD_MISSING,
            entity,
            ghl_id=ghl_id,
            contact_id=desired_rows.at[ghl_id, "contact_id"],
            record_id=None,
        )

    both = desired_rows.index[desired_rows.index.isin(have_ids)]
    new = desired_rows.loc[both]
    old = have.loc[both]
    columns = [column for column in new.columns if column != "contact_id"]
    masks = {column: differs(new[column], old[column]) for column in columns}
    expected_members = member_ids.reindex(new["contact_id"]).to_numpy()
    for position, ghl_id in enumerate(both):
        changed = [column for column in columns if masks[column][position]]
        expected, linked = expected_members[position], old["member_id"].iat[position]
        if pd.isna(expected) or pd.isna(linked) or expected != linked:
            changed.append(MEMBER_FIELD)
        if not changed:
            collector.add(entity, IN_SYNC)
            continue
        collector.add(entity, RECORD_DIFFERENT)
        collector.mismatched[entity] += 1
        for name in changed:
            collector.field(entity, name)
        collector.example(
            RECORD_DIFFERENT,
            entity,
            ghl_id=ghl_id,
            contact_id=new["contact_id"].iat[position],
            record_id=old["record_id"].iat[position],
            member_id=linked,
            fields=changed,
        )

    rest = have[~have.index.isin(desired_rows.index)]
    for ghl_id, contact_id, record_id in zip(rest.index, rest["contact_id"], rest["record_id"], strict=True):
        contact_id = _plain(contact_id) or ""
        if ghl_id in quarantined_records or contact_id in quarantined_contacts:
            collector.add(entity, "quarantined")
        elif contact_id in live_contacts:
            if scope is not None and contact_id not in scope:
                collector.add(entity, "not_covered")
            else:
                collector.add(entity, RECORD_EXTRA)
                collector.example(
                    RECORD_EXTRA, entity, ghl_id=ghl_id, contact_id=contact_id, record_id=record_id
                )
        elif not desired.complete:
            collector.add(entity, "not_covered")
        elif (
            policy != "delete"
            or contact_id in retired_contacts
            or contact_id not in actual.applied.members.index
        ):
            # The delete policy keeps the records of a gone contact unless it deletes its member.
            collector.add(entity, "retired")
        else:
            collector.add(entity, RECORD_EXTRA)
            collector.example(RECORD_EXTRA, entity, ghl_id=ghl_id, contact_id=contact_id, record_id=record_id)
