"""Execute planned operations against Memberstack, idempotently, and fold the outcome into state.

The loader runs each contact's operations in order (member first, then plans, then records, then a
member delete) on one worker thread. Contacts run concurrently through ``hook.map_concurrently``.
Contacts that already have a member run before contacts that need one created, so an email that an
existing member gives up in this run is free before a new member is created with it.

Every finished operation is written to the journal before the worker moves on. A rerun skips the
operations the journal contains. When a write failed or its outcome is unknown, the loader reads
Memberstack (the member by email, the record by its GHL id field) before it writes again. Member
emails and the TEXT_UNIQUE id fields of records are unique in an app, so a crash between a write
and its journal entry does not duplicate a member or a record.

Member identity: a member is matched by ``metaData.ghlContactId``, else by email. A member with that
email and no link is adopted. A member linked to a contact that no longer exists is relinked. A
member linked to another live contact, or to another location (a shared app), makes the contact
``email_taken`` and nothing is written for it.

NOTE: the ``ghlContactId`` match needs a listing of all members, which the loader makes only for a
plan with at least ``member_index_threshold`` member creates. Below that, a new contact is looked up
by email alone, so a member that a crashed run created under an email the contact has since changed
is not found, and a second member is created.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ghl_memberstack import mapping as mapping_module
from ghl_memberstack.diff import (
    CUSTOM_FIELD_PREFIX,
    MEMBER_LINK_FIELD,
    is_deactivation,
    isin,
    positions,
    values_of,
)
from ghl_memberstack.exceptions import MemberstackConfigError, MemberstackError, MemberstackRequestError
from ghl_memberstack.snapshot import Journal, JournalEntry
from ghl_memberstack.state import (
    ENTITIES,
    AppliedState,
    DesiredState,
    Operation,
    OpKind,
    QuarantineEntry,
)

log = logging.getLogger(__name__)

REASON_EMAIL_TAKEN = "email_taken"
META_CONTACT_ID = "ghlContactId"
META_LOCATION_ID = "ghlLocationId"
PASSWORD_BYTES = 32  # token_urlsafe(32) gives 43 characters
DEFAULT_MEMBER_INDEX_THRESHOLD = 50
COUNT_NAMES = ("created", "updated", "deactivated", "deleted", "unchanged", "failed")
# Failed operations logged one by one; the end-of-load summary counts the rest.
MAX_FAILURES_LOGGED = 20

# Order of operations within one contact.
_KIND_ORDER = {
    OpKind.MEMBER_CREATE: 0,
    OpKind.MEMBER_UPDATE: 1,
    OpKind.PLAN_REMOVE: 2,
    OpKind.PLAN_ADD: 3,
    OpKind.RECORD_UPDATE: 4,
    OpKind.RECORD_CREATE: 5,
    OpKind.RECORD_DELETE: 6,
    OpKind.MEMBER_DELETE: 7,
}


class PreflightError(MemberstackConfigError):
    """The Memberstack app lacks a Data Table or field the mapping writes to."""


class LoadConfigError(MemberstackConfigError):
    """Memberstack rejected the configuration during the load (an unknown plan id, a wrong key).

    ``result`` contains what was loaded before the stop, so the caller can commit it.
    """

    def __init__(self, message: str, *, result: LoadResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class _Stopped(Exception):
    """The run stopped on a configuration error before this operation ran."""


class _Blocked(Exception):
    """An earlier operation of the same contact failed, so this one cannot run."""


@dataclasses.dataclass
class LoadResult:
    """The outcome of one load.

    ``done`` contains the finished operations with the member and record ids they wrote to,
    including operations that an earlier attempt finished and the journal recorded. ``pending``
    lists contacts with an operation that did not finish, which the next run retries.
    ``forgotten`` lists contacts whose member was re-created but not fully restored. Their applied
    rows are dropped, so the next run links the new member and writes everything again.
    ``missing_custom_fields`` lists custom field keys that Memberstack dropped from writes because
    the app does not define them.
    """

    done: list[Operation] = dataclasses.field(default_factory=list)
    failed: list[tuple[Operation, str]] = dataclasses.field(default_factory=list)
    quarantine: list[QuarantineEntry] = dataclasses.field(default_factory=list)
    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    member_ids: dict[str, str] = dataclasses.field(default_factory=dict)
    record_ids: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    pending: set[str] = dataclasses.field(default_factory=set)
    forgotten: set[str] = dataclasses.field(default_factory=set)
    missing_custom_fields: set[str] = dataclasses.field(default_factory=set)
    error: str | None = None

    @property
    def quarantined_contacts(self) -> set[str]:
        """Contact ids the loader quarantined."""
        return {entry.ghl_id for entry in self.quarantine if entry.entity == "contacts"}


@dataclasses.dataclass
class _ContactOutcome:
    contact_id: str
    done: list[Operation] = dataclasses.field(default_factory=list)
    failed: list[tuple[Operation, str]] = dataclasses.field(default_factory=list)
    quarantine: list[QuarantineEntry] = dataclasses.field(default_factory=list)
    member_id: str | None = None
    forgotten: bool = False
    relinked_records: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _MemberIndex:
    by_contact: dict[str, dict[str, Any]]
    by_email: dict[str, dict[str, Any]]


def new_password() -> str:
    """Return a random member password from the ``secrets`` CSPRNG; it is never stored or logged."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def _member_email(member: dict[str, Any]) -> str:
    auth = member.get("auth") or {}
    return str(auth.get("email") or member.get("email") or "").strip().lower()


def _member_meta(member: dict[str, Any]) -> dict[str, Any]:
    return member.get("metaData") or {}


def _plan_ids(member: dict[str, Any]) -> set[str]:
    return {connection.get("planId") for connection in member.get("planConnections") or []}


def _record_data(record: dict[str, Any]) -> dict[str, Any]:
    return record.get("data") or {}


def _error_text(error: MemberstackRequestError) -> str:
    return f"{getattr(error, 'code', None) or ''} {getattr(error, 'detail', '') or error}".lower()


def _is_member_missing(error: Exception) -> bool:
    return isinstance(error, MemberstackRequestError) and "no member" in _error_text(error)


def _is_plan_missing(error: Exception) -> bool:
    if not isinstance(error, MemberstackRequestError):
        return False
    text = _error_text(error)
    return "plan-not-found" in text or ("plan" in text and "not found" in text)


def _is_not_found(error: Exception) -> bool:
    return isinstance(error, MemberstackRequestError) and (
        error.status == 404 or "not found" in _error_text(error)
    )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _custom_fields(fields: dict[str, Any]) -> dict[str, str]:
    return {
        name[len(CUSTOM_FIELD_PREFIX) :]: "" if value is None else str(value)
        for name, value in fields.items()
        if name.startswith(CUSTOM_FIELD_PREFIX)
    }


class Loader:
    """Run planned operations through a ``MemberstackHook``, journalling each finished one.

    :param hook: a ``MemberstackHook`` (or an object with the same methods).
    :param journal: the journal of the snapshot the plan was made from.
    :param location_id: the GHL location of the sync pair, stored in each member's metaData.
    :param concurrency: worker threads; None uses the hook's default.
    :param contact_exists: returns whether a GHL contact id still exists. Asked only when an email
        is held by a member linked to another contact of this location and the observation is not
        complete. Without it such a contact is assumed to exist, so the email stays taken.
    :param member_index_threshold: with at least this many member creates, the loader lists all
        members once instead of looking each email up, which also finds members linked by
        ``ghlContactId`` under another email.
    :param run_id: written into the journal's start marker.
    """

    def __init__(
        self,
        hook: Any,
        journal: Journal,
        *,
        location_id: str,
        concurrency: int | None = None,
        contact_exists: Callable[[str], bool] | None = None,
        member_index_threshold: int = DEFAULT_MEMBER_INDEX_THRESHOLD,
        run_id: str | None = None,
    ) -> None:
        self.hook = hook
        self.journal = journal
        self.location_id = location_id
        self.concurrency = concurrency
        self.contact_exists = contact_exists
        self.member_index_threshold = member_index_threshold
        self.run_id = run_id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._missing_fields: set[str] = set()
        self._failures_logged = 0
        self._index: _MemberIndex | None = None
        self._desired: DesiredState | None = None
        # The Data Tables the mapping writes to; preflight sets them from the mapping.
        self._table_names: tuple[str, ...] | None = None
        # The plans the mapping manages; preflight sets them, and only they are ever removed.
        self._managed_plans: frozenset[str] = frozenset()

    def preflight(self, mapping: Any) -> None:
        """Check that the app has every Data Table and field the mapping writes to.

        :raises PreflightError: names each missing table, and each missing or mistyped field.
        """
        entities = getattr(mapping, "table_entities", tuple(mapping_module.ENTITY_TABLES))
        wanted = {mapping_module.ENTITY_TABLES[entity] for entity in entities}
        self._table_names = tuple(sorted(wanted))
        self._managed_plans = frozenset(getattr(mapping, "managed_plans", ()))
        if not wanted:
            return
        tables = {table.get("key"): table for table in self.hook.list_data_tables()}
        problems = []
        for table_key in sorted(wanted):
            table = tables.get(table_key)
            if table is None:
                problems.append(f"Data Table {table_key!r} is missing")
                continue
            if "fields" not in table:
                table = self.hook.get_data_table(table_key)
            problems.extend(_field_problems(table_key, table))
        if problems:
            raise PreflightError(
                "The Memberstack app is not ready for the sync: "
                + "; ".join(problems)
                + ". Create them in the Memberstack dashboard (Data Tables), then rerun."
            )
        log.info("Preflight passed for Data Tables %s", ", ".join(sorted(wanted)))

    def run(
        self,
        operations: Iterable[Operation],
        *,
        desired: DesiredState | None = None,
        observed_contact_ids: Iterable[str] | None = None,
    ) -> LoadResult:
        """Execute ``operations`` and return what was loaded.

        :param desired: the desired state the plan came from. It is needed to re-create a member
            deleted by hand, and it gives the unchanged counts.
        :param observed_contact_ids: the contacts the plan covered, for the unchanged counts.
        :raises LoadConfigError: Memberstack rejected a plan id or the key. Its ``result`` contains
            the partial result, whose finished operations are also in the journal.
        """
        operations = list(operations)
        self._desired = desired
        groups = _group_by_contact(operations)
        if operations:
            self.journal.mark_started(self.run_id)
        creates = sum(
            1 for op in operations if op.kind is OpKind.MEMBER_CREATE and op.key not in self.journal
        )
        if creates >= self.member_index_threshold:
            self._index = self._build_member_index()
        existing = [group for group in groups if group[0].kind is not OpKind.MEMBER_CREATE]
        new = [group for group in groups if group[0].kind is OpKind.MEMBER_CREATE]
        outcomes: list[_ContactOutcome] = []
        for phase in (existing, new):
            if phase:
                outcomes.extend(
                    self.hook.map_concurrently(self._run_contact, phase, max_workers=self.concurrency)
                )
        result = self._collect(outcomes, operations, observed_contact_ids)
        log.info(
            "Loaded %d operations, %d failed, %d contacts quarantined, %d contacts pending",
            len(result.done),
            len(result.failed),
            len(result.quarantined_contacts),
            len(result.pending),
        )
        if self._stop_reason:
            raise LoadConfigError(self._stop_reason, result=result)
        return result

    def _build_member_index(self) -> _MemberIndex:
        by_contact: dict[str, dict[str, Any]] = {}
        by_email: dict[str, dict[str, Any]] = {}
        for member in self.hook.list_members():
            meta = _member_meta(member)
            contact_id = meta.get(META_CONTACT_ID)
            location = meta.get(META_LOCATION_ID)
            if contact_id and location in (None, "", self.location_id):
                by_contact[str(contact_id)] = member
            email = _member_email(member)
            if email:
                by_email[email] = member
        log.info("Indexed %d members (%d linked to this location)", len(by_email), len(by_contact))
        return _MemberIndex(by_contact=by_contact, by_email=by_email)

    def _run_contact(self, group: list[Operation]) -> _ContactOutcome:
        outcome = _ContactOutcome(contact_id=group[0].contact_id)
        member_id = next((op.member_id for op in group if op.member_id), None)
        outcome.member_id = member_id
        blocked: str | None = None
        for op in group:
            entry = self.journal.get(op.key)
            if entry is not None:
                done = _from_entry(op, entry)
                outcome.done.append(done)
                outcome.member_id = done.member_id or outcome.member_id
                continue
            if outcome.quarantine:
                continue
            try:
                if self._stop.is_set():
                    raise _Stopped(self._stop_reason or "the run stopped")
                if blocked and op.kind is not OpKind.MEMBER_CREATE:
                    raise _Blocked(blocked)
                done = self._execute(op, outcome)
            except MemberstackConfigError as error:
                self._stop_run(error)
                outcome.failed.append((op, _describe(error)))
                continue
            except (_Stopped, _Blocked) as error:
                outcome.failed.append((op, str(error)))
                continue
            except Exception as error:  # noqa: BLE001 - one failed write must not stop the others
                self._log_failure(op, error)
                outcome.failed.append((op, _describe(error)))
                if op.kind is OpKind.MEMBER_CREATE or outcome.member_id is None:
                    blocked = f"the member of contact {op.contact_id} was not loaded"
                continue
            if done is None:
                continue
            self.journal.record(_to_entry(done))
            outcome.done.append(done)
            outcome.member_id = done.member_id or outcome.member_id
        return outcome

    def _log_failure(self, op: Operation, error: Exception) -> None:
        with self._lock:
            self._failures_logged += 1
            logged = self._failures_logged
        if logged <= MAX_FAILURES_LOGGED:
            log.warning("Operation %s failed: %s", op.key, _describe(error))
        elif logged == MAX_FAILURES_LOGGED + 1:
            log.warning("More operations failed; the summary at the end of the load counts them all")

    def _stop_run(self, error: MemberstackConfigError) -> None:
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = (
                    f"Memberstack rejected the configuration, so the load stopped: {error} "
                    "Check the plan ids in the mapping and the Memberstack connection."
                )
                log.error("Stopping the load: %s", error)
        self._stop.set()

    def _execute(self, op: Operation, outcome: _ContactOutcome) -> Operation | None:
        """Run one operation; return it with ids filled in, or None when it was quarantined."""
        handlers = {
            OpKind.MEMBER_CREATE: self._member_create,
            OpKind.MEMBER_UPDATE: self._member_update,
            OpKind.MEMBER_DELETE: self._member_delete,
            OpKind.PLAN_ADD: self._plan_change,
            OpKind.PLAN_REMOVE: self._plan_change,
            OpKind.RECORD_CREATE: self._record_create,
            OpKind.RECORD_UPDATE: self._record_update,
            OpKind.RECORD_DELETE: self._record_delete,
        }
        return handlers[op.kind](op, outcome)

    def _member_create(self, op: Operation, outcome: _ContactOutcome) -> Operation | None:
        email = op.fields["email"]
        member = self._find_member(op.contact_id, email)
        if member is not None:
            if self._email_taken(member, op.contact_id, outcome):
                return None
            if _member_email(member) != email and self._email_held_by_other(email, member["id"], op, outcome):
                return None
            member_id = self._link_member(member, op.contact_id, op.fields)
            self._remove_ungranted_plans(member, op.contact_id)
            return dataclasses.replace(op, member_id=member_id)
        member_id = self._create_member(op.contact_id, op.fields)
        return dataclasses.replace(op, member_id=member_id)

    def _remove_ungranted_plans(self, member: dict[str, Any], contact_id: str) -> None:
        """Remove managed plans that an adopted or relinked member has but its contact's tags do not grant.

        The plan contains only plan adds for such a member, because the applied state had no member
        for the contact.
        """
        desired = self._desired
        if not self._managed_plans or desired is None or contact_id not in desired.members.index:
            return
        value = desired.members.at[contact_id, "plans"] if "plans" in desired.members.columns else None
        granted = set() if value is None or pd.isna(value) else set(str(value).split(",")) - {""}
        for plan_id in sorted((_plan_ids(member) & self._managed_plans) - granted):
            log.info(
                "Removing plan %s from member %s, which contact %s does not grant",
                plan_id,
                member.get("id"),
                contact_id,
            )
            self._remove_plan(member["id"], plan_id)

    def _find_member(self, contact_id: str, email: str) -> dict[str, Any] | None:
        if self._index is not None:
            return self._index.by_contact.get(contact_id) or self._index.by_email.get(email)
        return self.hook.get_member(email)

    def _email_taken(self, member: dict[str, Any], contact_id: str, outcome: _ContactOutcome) -> bool:
        """Quarantine the contact when ``member`` belongs to another live contact or location."""
        meta = _member_meta(member)
        linked = str(meta.get(META_CONTACT_ID) or "")
        location = str(meta.get(META_LOCATION_ID) or "")
        if location and location != self.location_id:
            detail = "the email belongs to a member of another location"
        elif not linked or linked == contact_id:
            return False
        elif self._contact_is_live(linked):
            detail = f"the email belongs to the member of live contact {linked}"
        else:
            log.info(
                "Relinking member %s from gone contact %s to contact %s", member.get("id"), linked, contact_id
            )
            return False
        outcome.quarantine.append(QuarantineEntry("contacts", contact_id, REASON_EMAIL_TAKEN, detail))
        log.warning("Quarantined contact %s as %s: %s", contact_id, REASON_EMAIL_TAKEN, detail)
        return True

    def _contact_is_live(self, contact_id: str) -> bool:
        desired = self._desired
        if desired is not None and contact_id in desired.members.index:
            return True
        if desired is not None and desired.complete:
            quarantined = {e.ghl_id for e in desired.quarantine if e.entity == "contacts"}
            return contact_id in quarantined
        if self.contact_exists is not None:
            return bool(self.contact_exists(contact_id))
        return True

    def _link_member(self, member: dict[str, Any], contact_id: str, fields: dict[str, Any]) -> str:
        """Point an existing member at ``contact_id`` and write ``fields`` that differ from it."""
        member_id = member["id"]
        if "json" in fields and "json" not in member:
            member = self.hook.get_member(member_id) or member
        payload = self._member_payload(member, fields)
        meta = _member_meta(member)
        if meta.get(META_CONTACT_ID) != contact_id or meta.get(META_LOCATION_ID) != self.location_id:
            payload["meta_data"] = self._meta(contact_id)
        if payload:
            response = self.hook.update_member(member_id, **payload)
            self._check_custom_fields(payload.get("custom_fields"), response)
        return member_id

    def _member_payload(self, member: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """Return the update arguments for the values of ``fields`` that ``member`` lacks."""
        payload: dict[str, Any] = {}
        email = fields.get("email")
        if email and email != _member_email(member):
            payload["email"] = email
        held = member.get("customFields") or {}
        wanted = _custom_fields(fields)
        changed = {key: value for key, value in wanted.items() if (held.get(key) or "") != value}
        if changed:
            payload["custom_fields"] = changed
        if fields.get("json") is not None:
            merged = _merge_json(member.get("json"), fields["json"])
            if merged != (member.get("json") or {}):
                payload["json"] = merged
        return payload

    def _meta(self, contact_id: str) -> dict[str, str]:
        return {META_CONTACT_ID: contact_id, META_LOCATION_ID: self.location_id}

    def _create_member(self, contact_id: str, fields: dict[str, Any]) -> str:
        email = fields["email"]
        custom_fields = _custom_fields(fields)
        subtree = fields.get("json")
        try:
            member = self.hook.create_member(
                email=email,
                password=new_password(),
                custom_fields=custom_fields,
                meta_data=self._meta(contact_id),
                json=_merge_json(None, subtree) if subtree is not None else None,
            )
        except MemberstackConfigError:
            raise
        except MemberstackError as error:
            # The create may have happened although the reply was lost; read before any new write.
            found = self.hook.get_member(email)
            if found is None or _member_meta(found).get(META_CONTACT_ID) != contact_id:
                raise
            log.info("Member create for contact %s failed (%s) but the member exists", contact_id, error)
            member = found
        self._check_custom_fields(custom_fields, member)
        return member["id"]

    def _check_custom_fields(self, sent: dict[str, str] | None, member: dict[str, Any] | None) -> None:
        """Record custom fields that Memberstack dropped, which it does for keys the app lacks."""
        if not sent or not isinstance(member, dict) or "customFields" not in member:
            return
        held = member.get("customFields") or {}
        missing = {key for key, value in sent.items() if value and key not in held}
        if not missing:
            return
        with self._lock:
            new = missing - self._missing_fields
            self._missing_fields |= missing
        if new:
            log.warning(
                "Memberstack dropped the custom fields %s: the app does not define them. "
                "Add them in the Memberstack dashboard.",
                ", ".join(sorted(new)),
            )

    def _email_held_by_other(
        self, email: str, member_id: str, op: Operation, outcome: _ContactOutcome, *, fresh: bool = False
    ) -> bool:
        """Quarantine the contact when a member other than ``member_id`` has ``email``.

        :param fresh: read Memberstack even when the member index exists, which was built before
            this run's writes.
        """
        if self._index is not None and not fresh:
            holder = self._index.by_email.get(email)
        else:
            holder = self.hook.get_member(email)
        if holder is None or holder.get("id") == member_id:
            return False
        detail = "the new email belongs to another member"
        outcome.quarantine.append(QuarantineEntry("contacts", op.contact_id, REASON_EMAIL_TAKEN, detail))
        log.warning("Quarantined contact %s as %s: %s", op.contact_id, REASON_EMAIL_TAKEN, detail)
        return True

    def _member_update(self, op: Operation, outcome: _ContactOutcome) -> Operation | None:
        member_id = outcome.member_id or op.member_id
        payload: dict[str, Any] = {}
        if op.fields.get("email"):
            if self._email_held_by_other(op.fields["email"], member_id, op, outcome, fresh=True):
                return None
            payload["email"] = op.fields["email"]
        custom_fields = _custom_fields(op.fields)
        if custom_fields:
            payload["custom_fields"] = custom_fields
        try:
            if op.fields.get("json") is not None:
                member = self.hook.get_member(member_id)
                if member is None:
                    return self._recreate_member(op, outcome)
                payload["json"] = _merge_json(member.get("json"), op.fields["json"])
            if not payload:
                return dataclasses.replace(op, member_id=member_id)
            response = self.hook.update_member(member_id, **payload)
        except MemberstackRequestError as error:
            if not _is_member_missing(error):
                raise
            return self._recreate_member(op, outcome)
        self._check_custom_fields(custom_fields, response)
        return dataclasses.replace(op, member_id=member_id)

    def _recreate_member(self, op: Operation, outcome: _ContactOutcome) -> Operation | None:
        """Re-create a member deleted by hand from the desired state, with its plans and records."""
        desired = self._desired
        if desired is not None and desired.complete and op.contact_id not in desired.members.index:
            # The contact is gone from GHL too, so there is nothing left to deactivate or re-create.
            log.info("The member of gone contact %s was already deleted in Memberstack", op.contact_id)
            return dataclasses.replace(op, member_id=outcome.member_id or op.member_id)
        if desired is None or op.contact_id not in desired.members.index:
            raise MemberstackRequestError(
                f"The member of contact {op.contact_id} was deleted in Memberstack and cannot be re-created "
                "without the desired state.",
                status=None,
            )
        log.warning("The member of contact %s was deleted in Memberstack; re-creating it", op.contact_id)

        row = desired.members.loc[op.contact_id]
        fields = {
            column: ("" if pd.isna(row[column]) else str(row[column]))
            for column in desired.members.columns
            if column == "email" or column.startswith(CUSTOM_FIELD_PREFIX)
        }
        if "json" in desired.members.columns and not pd.isna(row["json"]):
            fields["json"] = str(row["json"])

        member = self.hook.get_member(fields["email"])
        if member is not None:
            if self._email_taken(member, op.contact_id, outcome):
                return None
            member_id = self._link_member(member, op.contact_id, fields)
        else:
            member_id = self._create_member(op.contact_id, fields)
        outcome.member_id = member_id

        try:
            plans = row["plans"] if "plans" in desired.members.columns else ""
            for plan_id in sorted(set(str(plans or "").split(",")) - {""}):
                self._add_plan(member_id, plan_id)
            self._relink_records(op.contact_id, member_id, outcome)
        except Exception:
            # The new member exists but lacks plans or records; the next run links it and restores them.
            outcome.forgotten = True
            raise
        return dataclasses.replace(op, member_id=member_id)

    def _relink_records(self, contact_id: str, member_id: str, outcome: _ContactOutcome) -> None:
        desired = self._desired
        tables = self._table_names
        if tables is None:
            tables = tuple(t for t, f in (desired.records.items() if desired else ()) if not f.empty)
        for table in tables:
            id_field = mapping_module.TABLE_ID_FIELDS[table]
            stored = {}
            for record in self.hook.query_records(table, where={"ghl_contact_id": contact_id}):
                data = _record_data(record)
                stored[str(data.get(id_field))] = record
                if data.get("member") != member_id:
                    self.hook.update_record(table, record["id"], {"member": member_id})
                outcome.relinked_records[(table, str(data.get(id_field)))] = record["id"]
            frame = desired.records.get(table) if desired is not None else None
            if frame is None:
                continue
            for ghl_id in frame.index[frame["contact_id"] == contact_id]:
                if ghl_id not in stored:
                    data = _record_payload(_row_fields(frame, ghl_id), member_id)
                    record = self.hook.create_record(table, data)
                    outcome.relinked_records[(table, ghl_id)] = record["id"]

    def _member_delete(self, op: Operation, outcome: _ContactOutcome) -> Operation:
        member_id = outcome.member_id or op.member_id
        try:
            self.hook.delete_member(member_id)
        except MemberstackRequestError as error:
            if not _is_member_missing(error):
                raise
            log.info("Member of contact %s was already deleted", op.contact_id)
        return dataclasses.replace(op, member_id=member_id)

    def _plan_change(self, op: Operation, outcome: _ContactOutcome) -> Operation | None:
        member_id = outcome.member_id or op.member_id
        plan_id = op.fields["plan"]
        try:
            if op.kind is OpKind.PLAN_ADD:
                self._add_plan(member_id, plan_id)
            else:
                self._remove_plan(member_id, plan_id)
        except MemberstackRequestError as error:
            if not _is_member_missing(error):
                raise
            return self._recreate_member(op, outcome)
        return dataclasses.replace(op, member_id=member_id)

    def _add_plan(self, member_id: str, plan_id: str) -> None:
        try:
            self.hook.add_plan(member_id, plan_id)
        except MemberstackConfigError:
            raise
        except MemberstackRequestError as error:
            if _is_member_missing(error):
                raise
            if _is_plan_missing(error):
                raise MemberstackConfigError(
                    f"Memberstack has no plan {plan_id!r} in this app ({error.status}). Create the free plan "
                    "in the Memberstack dashboard or fix tag_plans in the mapping."
                ) from error
            # A member cannot hold a free plan twice, so an earlier add may be why this one failed.
            member = self.hook.get_member(member_id)
            if member is None or plan_id not in _plan_ids(member):
                raise

    def _remove_plan(self, member_id: str, plan_id: str) -> None:
        try:
            self.hook.remove_plan(member_id, plan_id)
        except MemberstackConfigError:
            raise
        except MemberstackRequestError as error:
            if _is_member_missing(error):
                raise
            member = self.hook.get_member(member_id)
            if member is None or plan_id in _plan_ids(member):
                raise

    def _record_create(self, op: Operation, outcome: _ContactOutcome) -> Operation:
        member_id = outcome.member_id or op.member_id
        if member_id is None:
            raise _Blocked(f"contact {op.contact_id} has no member to link the record to")
        known = outcome.relinked_records.get((op.table, op.ghl_id))
        if known is not None:
            return self._record_rewrite(op, known, member_id)
        data = _record_payload(op.fields, member_id)
        if self.journal.resumed:
            # An earlier attempt may have created the record without journalling it.
            existing = self._find_record(op)
            if existing is not None:
                return self._record_rewrite(op, existing["id"], member_id, existing)
        attempts = max(1, int(getattr(getattr(self.hook, "settings", None), "retry_attempts", 3)))
        for attempt in range(1, attempts + 1):
            try:
                record = self.hook.create_record(op.table, data)
            except MemberstackConfigError:
                raise
            except MemberstackError as error:
                existing = self._find_record(op)
                if existing is not None:
                    return self._record_rewrite(op, existing["id"], member_id, existing)
                # The hook never resends a create whose outcome is unknown. The lookup above showed
                # that the server did not apply it, so sending it again cannot duplicate the record.
                if not getattr(error, "outcome_unknown", False) or attempt == attempts:
                    raise
                log.warning("Record create %s had an unknown outcome and was not applied; retrying", op.key)
                continue
            return dataclasses.replace(op, member_id=member_id, record_id=record["id"])
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _find_record(self, op: Operation) -> dict[str, Any] | None:
        id_field = mapping_module.TABLE_ID_FIELDS[op.table]
        return self.hook.find_record(op.table, id_field, op.ghl_id)

    def _record_rewrite(
        self, op: Operation, record_id: str, member_id: str, existing: dict[str, Any] | None = None
    ) -> Operation:
        """Bring an existing record to the values of a create operation, writing only differences."""
        data = _record_payload(op.fields, member_id)
        if existing is not None:
            held = _record_data(existing)
            data = {key: value for key, value in data.items() if held.get(key) != value}
        if data:
            self.hook.update_record(op.table, record_id, data)
        return dataclasses.replace(op, member_id=member_id, record_id=record_id)

    def _record_update(self, op: Operation, outcome: _ContactOutcome) -> Operation:
        member_id = outcome.member_id or op.member_id
        record_id = outcome.relinked_records.get((op.table, op.ghl_id)) or op.record_id
        data = {key: value for key, value in op.fields.items() if key != MEMBER_LINK_FIELD}
        if MEMBER_LINK_FIELD in op.fields or record_id != op.record_id:
            data["member"] = member_id
        try:
            self.hook.update_record(op.table, record_id, data)
        except MemberstackRequestError as error:
            if not _is_not_found(error):
                raise
            record_id = self._restore_record(op, member_id)
        return dataclasses.replace(op, member_id=member_id, record_id=record_id)

    def _restore_record(self, op: Operation, member_id: str) -> str:
        """Re-create a record deleted in Memberstack from its desired row."""
        frame = self._desired.records.get(op.table) if self._desired is not None else None
        if frame is None or op.ghl_id not in frame.index:
            raise MemberstackRequestError(
                f"Record {op.ghl_id} of {op.table} is gone from Memberstack and not in the desired state.",
                status=404,
            )
        existing = self._find_record(op)
        if existing is not None:
            self.hook.update_record(op.table, existing["id"], _record_payload(op.fields, member_id))
            return existing["id"]
        log.info("Record %s of %s was deleted in Memberstack; re-creating it", op.ghl_id, op.table)
        record = self.hook.create_record(op.table, _record_payload(_row_fields(frame, op.ghl_id), member_id))
        return record["id"]

    def _record_delete(self, op: Operation, outcome: _ContactOutcome) -> Operation:
        self.hook.delete_record(op.table, op.record_id)
        return op

    def _collect(
        self,
        outcomes: list[_ContactOutcome],
        operations: list[Operation],
        observed_contact_ids: Iterable[str] | None,
    ) -> LoadResult:
        result = LoadResult(missing_custom_fields=set(self._missing_fields), error=self._stop_reason)
        for outcome in outcomes:
            result.done.extend(outcome.done)
            result.failed.extend(outcome.failed)
            result.quarantine.extend(outcome.quarantine)
            if outcome.member_id:
                result.member_ids[outcome.contact_id] = outcome.member_id
            for (table, ghl_id), record_id in outcome.relinked_records.items():
                result.record_ids[(table, ghl_id)] = record_id
            if outcome.failed:
                result.pending.add(outcome.contact_id)
            if outcome.forgotten:
                result.forgotten.add(outcome.contact_id)
        for op in result.done:
            if op.record_id and op.table and op.kind is not OpKind.RECORD_DELETE:
                result.record_ids[(op.table, op.ghl_id)] = op.record_id
        result.counts = _count(result, operations, self._desired, observed_contact_ids)
        return result


def _field_problems(table_key: str, table: dict[str, Any]) -> list[str]:
    expected = mapping_module.TABLE_FIELD_TYPES[table_key]
    present = {field.get("key"): str(field.get("type") or "") for field in table.get("fields") or []}
    problems = []
    missing = [key for key in expected if key not in present]
    if missing:
        problems.append(f"Data Table {table_key!r} lacks the fields {', '.join(missing)}")
    for key, field_type in expected.items():
        actual = present.get(key)
        if actual is None or actual == field_type:
            continue
        # The record match and the member link depend on these two types; the others only on the value.
        if field_type in ("TEXT_UNIQUE", "MEMBER_REFERENCE"):
            problems.append(f"field {table_key}.{key} is {actual}, expected {field_type}")
        else:
            log.warning("Field %s.%s is %s, expected %s", table_key, key, actual, field_type)
    return problems


def _group_by_contact(operations: list[Operation]) -> list[list[Operation]]:
    groups: dict[str, list[Operation]] = defaultdict(list)
    for op in operations:
        groups[op.contact_id].append(op)
    ordered = []
    for group in groups.values():
        group.sort(key=lambda op: _KIND_ORDER[op.kind])
        ordered.append(group)
    return ordered


def _merge_json(current: Any, subtree_text: str | None) -> dict[str, Any]:
    """Return the member json with ``ghl.<entity>`` keys replaced from ``subtree_text``, others kept."""
    merged = dict(current) if isinstance(current, dict) else {}
    if subtree_text is None:
        return merged
    subtree = json.loads(subtree_text) if isinstance(subtree_text, str) else dict(subtree_text)
    root = dict(merged.get(mapping_module.JSON_ROOT_KEY) or {})
    root.update(subtree)
    merged[mapping_module.JSON_ROOT_KEY] = root
    return merged


def _record_payload(fields: dict[str, Any], member_id: str) -> dict[str, Any]:
    """Return a record's ``data``: its fields without empty values, linked to ``member_id``."""
    data = {
        key: value
        for key, value in fields.items()
        if key != MEMBER_LINK_FIELD and value is not None and value is not pd.NA
    }
    data["member"] = member_id
    return data


def _row_fields(frame: pd.DataFrame, ghl_id: str) -> dict[str, Any]:
    row = frame.loc[ghl_id]
    fields = {}
    for column in frame.columns:
        if column == "contact_id":
            continue
        value = row[column]
        if pd.isna(value):
            value = None
        elif hasattr(value, "item"):
            value = value.item()
        fields[column] = value
    return fields


def _to_entry(op: Operation) -> JournalEntry:
    return JournalEntry(
        key=op.key,
        kind=op.kind.value,
        contact_id=op.contact_id,
        member_id=op.member_id,
        table=op.table,
        ghl_id=op.ghl_id,
        record_id=op.record_id,
        fields=dict(op.fields),
    )


def _from_entry(op: Operation, entry: JournalEntry) -> Operation:
    return dataclasses.replace(
        op,
        member_id=entry.member_id or op.member_id,
        record_id=entry.record_id or op.record_id,
    )


def _entity_of(table: str | None) -> str:
    if table is None:
        return "contacts"
    for entity, name in mapping_module.ENTITY_TABLES.items():
        if name == table:
            return entity
    return table


def _count(
    result: LoadResult,
    operations: list[Operation],
    desired: DesiredState | None,
    observed_contact_ids: Iterable[str] | None,
) -> dict[str, dict[str, int]]:
    counts = {entity: dict.fromkeys(COUNT_NAMES, 0) for entity in ENTITIES}
    contacts = counts["contacts"]
    failed_contacts = {op.contact_id for op, _reason in result.failed if op.table is None}
    member_done: dict[str, set[str]] = defaultdict(set)
    for op in result.done:
        entity = _entity_of(op.table)
        if op.table is not None:
            name = {OpKind.RECORD_CREATE: "created", OpKind.RECORD_UPDATE: "updated"}.get(op.kind, "deleted")
            counts.setdefault(entity, dict.fromkeys(COUNT_NAMES, 0))[name] += 1
            continue
        if op.kind is OpKind.MEMBER_DELETE:
            member_done[op.contact_id].add("deleted")
        elif is_deactivation(op):
            member_done[op.contact_id].add("deactivated")
        elif op.kind is OpKind.MEMBER_CREATE:
            member_done[op.contact_id].add("created")
        else:
            member_done[op.contact_id].add("updated")
    for op, _reason in result.failed:
        if op.table is not None:
            counts.setdefault(_entity_of(op.table), dict.fromkeys(COUNT_NAMES, 0))["failed"] += 1
    for contact_id, kinds in member_done.items():
        if contact_id in failed_contacts:
            continue
        for name in ("deleted", "deactivated", "created", "updated"):
            if name in kinds:
                contacts[name] += 1
                break
    contacts["failed"] = len(failed_contacts)
    if desired is not None:
        _count_unchanged(counts, operations, desired, observed_contact_ids)
    return counts


def _count_unchanged(
    counts: dict[str, dict[str, int]],
    operations: list[Operation],
    desired: DesiredState,
    observed_contact_ids: Iterable[str] | None,
) -> None:
    touched_contacts = {op.contact_id for op in operations if op.table is None}
    touched_records = {(op.table, op.ghl_id) for op in operations if op.table is not None}
    members = desired.members
    if observed_contact_ids is not None:
        observed = pd.Index(list(observed_contact_ids), dtype="string")
        members = members[isin(members.index, observed)]
    counts["contacts"]["unchanged"] = int((~isin(members.index, touched_contacts)).sum())
    for table, frame in desired.records.items():
        frame = frame[isin(frame["contact_id"], members.index)]
        entity = _entity_of(table)
        touched = [ghl_id for (name, ghl_id) in touched_records if name == table]
        counts.setdefault(entity, dict.fromkeys(COUNT_NAMES, 0))["unchanged"] = int(
            (~isin(frame.index, touched)).sum()
        )


def fold_journal(applied: AppliedState, journal: Journal) -> AppliedState:
    """Return ``applied`` with every operation of ``journal`` applied, field by field.

    Plan against this state when resuming after a crash, so a write the crashed run made is not
    planned again, and a value that changed back since then is written back.
    """
    entries = journal.entries()
    if not entries:
        return applied
    operations = [_entry_operation(entry) for entry in entries]
    members, records = _apply_operations(applied.members, dict(applied.records), operations)
    log.info(
        "Folded %d journal entries of base %s into the applied state", len(entries), journal.base_snapshot_id
    )
    return AppliedState(members=members, records=records)


def _entry_operation(entry: JournalEntry) -> Operation:
    return Operation(
        key=entry.key,
        kind=OpKind(entry.kind),
        contact_id=entry.contact_id,
        member_id=entry.member_id,
        table=entry.table,
        ghl_id=entry.ghl_id,
        record_id=entry.record_id,
        fields=dict(entry.fields),
    )


def apply_result(
    applied: AppliedState,
    desired: DesiredState,
    result: LoadResult,
    *,
    observed_contact_ids: Iterable[str] | None = None,
) -> AppliedState:
    """Return the applied state after the load: only what was loaded advances.

    An observed contact whose operations all finished takes its desired row and records whole. A
    contact with a failed or quarantined operation keeps its old row, changed only by the operations
    that finished, so the next plan retries the rest. Deleted and forgotten contacts lose their rows.

    :param observed_contact_ids: the contacts the plan covered; by default every desired contact.
    """
    desired_ids = desired.members.index
    observed = desired_ids if observed_contact_ids is None else list(observed_contact_ids)
    held_back = result.pending | result.forgotten | result.quarantined_contacts
    deleted = {op.contact_id for op in result.done if op.kind is OpKind.MEMBER_DELETE}
    dropped = deleted | result.forgotten

    members = _without(applied.members, applied.members.index, dropped)
    records = {
        table: _without(frame, frame["contact_id"], dropped) for table, frame in applied.records.items()
    }
    ok_index = desired_ids[isin(desired_ids, observed) & ~isin(desired_ids, held_back | dropped)]
    # Operations of contacts that do not take their desired row whole are applied one by one.
    if result.done:
        ok_set = set(values_of(ok_index))
        stepwise = [op for op in result.done if op.contact_id not in ok_set and op.contact_id not in dropped]
        members, records = _apply_operations(members, records, stepwise)

    member_ids = _member_ids_for(ok_index, members, result)
    has_member = pc.is_valid(member_ids).to_numpy(zero_copy_only=False)
    ok_rows = _rows_at(desired.members, ok_index)[has_member].copy()
    ok_rows["member_id"] = pd.array(member_ids.filter(pa.array(has_member)), dtype="string")
    members = _upsert(members, ok_rows)
    records = _replace_records(records, desired, ok_rows.index, members, result)
    return AppliedState(members=members, records=records)


def _without(frame: pd.DataFrame, keys: pd.Index | pd.Series, dropped: set[str]) -> pd.DataFrame:
    if not dropped:
        return frame
    return frame[~isin(keys, dropped)]


def _rows_at(frame: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """Return the rows of ``frame`` labelled ``index``, in that order; every label must exist."""
    where = positions(index, frame.index)
    if (where < 0).any():
        raise KeyError(f"{int((where < 0).sum())} labels are missing from the frame")
    return frame if len(where) == len(frame) and (where == np.arange(len(frame))).all() else frame.iloc[where]


def _take_text(values: Any, where: np.ndarray) -> pa.Array:
    """Return ``values`` (text) at positions ``where``, with nulls where a position is -1."""
    source = pa.array(
        values.array if isinstance(values, (pd.Series, pd.Index)) else values,
        type=pa.large_string(),
        from_pandas=True,
    )
    return pc.take(source, pa.array(where, mask=where < 0))


def _member_ids_for(ok_index: pd.Index, members: pd.DataFrame, result: LoadResult) -> pa.Array:
    """Return the member id of each contact of ``ok_index``: loaded now, else applied, else null."""
    if "member_id" in members.columns:
        current = _take_text(members["member_id"], positions(ok_index, members.index))
    else:
        current = pa.nulls(len(ok_index), type=pa.large_string())
    if not result.member_ids:
        return current
    loaded = _take_text(list(result.member_ids.values()), positions(ok_index, list(result.member_ids)))
    return pc.coalesce(loaded, current)


def _upsert(frame: pd.DataFrame, rows: pd.DataFrame, *, disjoint: bool = False) -> pd.DataFrame:
    """Return ``frame`` with ``rows`` added, replacing rows of the same index.

    :param disjoint: the caller guarantees that no label of ``rows`` is in ``frame``.
    """
    if rows.empty:
        return frame
    kept = frame if disjoint else frame[~isin(frame.index, rows.index)]
    if kept.empty:
        combined = rows.copy()
    else:
        columns = kept.columns.union(rows.columns, sort=False)
        combined = pd.concat([kept.reindex(columns=columns), rows.reindex(columns=columns)])
    for column in combined.columns:
        if combined[column].dtype == object:
            combined[column] = combined[column].astype("string")
    combined.index = combined.index.astype("string")
    combined.index.name = frame.index.name or rows.index.name
    return combined


def _record_ids_by_table(result: LoadResult) -> dict[str, dict[str, str]]:
    by_table: dict[str, dict[str, str]] = defaultdict(dict)
    for (table, ghl_id), record_id in result.record_ids.items():
        by_table[table][ghl_id] = record_id
    return by_table


def _replace_records(
    records: dict[str, pd.DataFrame],
    desired: DesiredState,
    ok_index: pd.Index,
    members: pd.DataFrame,
    result: LoadResult,
) -> dict[str, pd.DataFrame]:
    """Give the records of fully loaded contacts their desired rows, with record and member ids."""
    quarantined = {(entry.entity, entry.ghl_id) for entry in desired.quarantine}
    loaded_by_table = _record_ids_by_table(result)
    for table, wanted in desired.records.items():
        current = records.get(table)
        rows = wanted[isin(wanted["contact_id"], ok_index)].copy()
        record_ids = pa.nulls(len(rows), type=pa.large_string())
        if current is not None and "record_id" in current.columns:
            record_ids = _take_text(current["record_id"], positions(rows.index, current.index))
        loaded = loaded_by_table.get(table)
        if loaded:
            record_ids = pc.coalesce(
                _take_text(list(loaded.values()), positions(rows.index, list(loaded))), record_ids
            )
        rows["record_id"] = pd.array(record_ids, dtype="string")
        member_ids = _take_text(members["member_id"], positions(rows["contact_id"], members.index))
        rows["member_id"] = pd.array(member_ids, dtype="string")
        unknown = rows["record_id"].isna().to_numpy()
        if unknown.any():
            log.warning(
                "Left %d %s records without a record id out of the snapshot", int(unknown.sum()), table
            )
            rows = rows[~unknown]
        if current is None:
            records[table] = rows
            continue
        entity = _entity_of(table)
        # Quarantined records were not written or deleted, so their applied rows stay as they were.
        spared = isin(current.index, [ghl_id for name, ghl_id in quarantined if name == entity])
        kept = current[(~isin(current["contact_id"], ok_index) | spared) & ~isin(current.index, rows.index)]
        records[table] = _upsert(kept, rows, disjoint=True)
    return records


def _apply_operations(
    members: pd.DataFrame, records: dict[str, pd.DataFrame], operations: list[Operation]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Apply finished operations one by one to the rows they touch; other rows stay as they are."""
    if not operations:
        return members, records
    contact_ids = {op.contact_id for op in operations}
    record_keys = {(op.table, op.ghl_id) for op in operations if op.table is not None}
    touched = isin(members.index, contact_ids)
    member_rows = members[touched].to_dict("index")
    record_rows: dict[str, dict[str, dict[str, Any]]] = {}
    untouched_records: dict[str, pd.DataFrame] = {}
    for table, frame in records.items():
        ids = [ghl_id for name, ghl_id in record_keys if name == table]
        mask = isin(frame["contact_id"], contact_ids) | isin(frame.index, ids)
        record_rows[table] = frame[mask].to_dict("index")
        untouched_records[table] = frame[~mask]
    for op in operations:
        if op.table is None:
            _apply_member_operation(member_rows, record_rows, op)
        else:
            _apply_record_operation(record_rows.setdefault(op.table, {}), op)
    members = _upsert(members[~touched], _frame_from_rows(member_rows, members))
    result = {}
    for table, rows in record_rows.items():
        template = records.get(table)
        rebuilt = _frame_from_rows(rows, template)
        base = untouched_records.get(table)
        result[table] = rebuilt if base is None else _upsert(base, rebuilt)
    return members, result


def _apply_member_operation(
    member_rows: dict[str, dict[str, Any]], record_rows: dict[str, dict[str, dict[str, Any]]], op: Operation
) -> None:
    if op.kind is OpKind.MEMBER_DELETE:
        member_rows.pop(op.contact_id, None)
        for rows in record_rows.values():
            for ghl_id in [key for key, row in rows.items() if row.get("contact_id") == op.contact_id]:
                del rows[ghl_id]
        return
    if op.kind is OpKind.MEMBER_CREATE:
        row: dict[str, Any] = {"plans": ""}
    else:
        row = member_rows.get(op.contact_id)
        if row is None:
            return
    if op.kind in (OpKind.PLAN_ADD, OpKind.PLAN_REMOVE):
        plans = set(str(row.get("plans") or "").split(",")) - {""}
        if op.kind is OpKind.PLAN_ADD:
            plans.add(op.fields["plan"])
        else:
            plans.discard(op.fields["plan"])
        row["plans"] = ",".join(sorted(plans))
    else:
        row.update(op.fields)
    if op.member_id:
        row["member_id"] = op.member_id
    member_rows[op.contact_id] = row


def _apply_record_operation(rows: dict[str, dict[str, Any]], op: Operation) -> None:
    if op.kind is OpKind.RECORD_DELETE:
        rows.pop(op.ghl_id, None)
        return
    row = {} if op.kind is OpKind.RECORD_CREATE else rows.get(op.ghl_id, {})
    row.update({key: value for key, value in op.fields.items() if key != MEMBER_LINK_FIELD})
    row["contact_id"] = op.contact_id
    row["record_id"] = op.record_id
    row["member_id"] = op.member_id
    rows[op.ghl_id] = row


def _frame_from_rows(rows: dict[str, dict[str, Any]], template: pd.DataFrame | None) -> pd.DataFrame:
    """Build a frame from row dicts with the template's columns and dtypes; new columns are text."""
    frame = pd.DataFrame.from_dict(rows, orient="index") if rows else pd.DataFrame()
    columns = list(template.columns) if template is not None else []
    columns += [column for column in frame.columns if column not in columns]
    frame = frame.reindex(columns=columns)
    for column in columns:
        known = template is not None and column in template.columns
        dtype = template[column].dtype if known else "string"
        try:
            frame[column] = frame[column].astype(dtype)
        except (TypeError, ValueError):
            frame[column] = frame[column].astype("string")
    name = template.index.name if template is not None else None
    frame.index = pd.Index(list(rows), dtype="string", name=name)
    return frame
