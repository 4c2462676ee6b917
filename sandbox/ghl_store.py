"""State of one emulated GHL location: contacts, their tasks, notes and appointments, and search."""

from __future__ import annotations

import bisect
import re
from collections import OrderedDict
from typing import Any

from sandbox.core import IdFactory, copy_json, format_iso, parse_iso_ms
from sandbox.ghl_search import SearchRequest, sort_key

EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CONTACT_STRING_FIELDS = (
    "firstName", "lastName", "name", "email", "gender", "phone", "address1", "city", "state",
    "postalCode", "website", "timezone", "source", "country", "companyName", "assignedTo", "dateOfBirth",
)
CONTACT_OBJECT_FIELDS = ("dndSettings", "inboundDndSettings")
CONTACT_UPDATE_KEYS = set(CONTACT_STRING_FIELDS) | set(CONTACT_OBJECT_FIELDS) | {"dnd", "tags", "customFields"}
CONTACT_CREATE_KEYS = CONTACT_UPDATE_KEYS | {"locationId"}
CONTACT_UPSERT_KEYS = CONTACT_CREATE_KEYS | {"createNewIfDuplicateAllowed"}
SEARCH_CACHE_SIZE = 8


class ValidationFailed(Exception):
    """A write body is invalid; `messages` go into the 422 reply."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


class DuplicateContact(Exception):
    """The location forbids duplicate contacts and the write matches `contact` on `field`."""

    def __init__(self, contact: dict[str, Any], field: str) -> None:
        super().__init__(field)
        self.contact = contact
        self.field = field


def normalize_phone(phone: Any) -> str:
    """Reduce a phone number to its digits, so `+1 (555) 010-0000` matches `+15550100000`."""
    return re.sub(r"\D", "", phone) if isinstance(phone, str) else ""


class SearchIndex:
    """Contact versions as search returns them; writes become visible after `search_lag_ms`.

    The index keeps references, which is safe because stored contacts are never changed in
    place: every write stores a new dict.
    """

    def __init__(self) -> None:
        self.visible: dict[str, dict[str, Any]] = {}
        self._pending: list[tuple[int, int, str, dict[str, Any] | None]] = []
        self._applied_seq: dict[str, int] = {}
        self._seq = 0
        self.version = 0

    def put(self, contact_id: str, contact: dict[str, Any] | None, now_ms: int, lag_ms: float) -> None:
        """Index a contact version (None for a deletion), visible from `now_ms + lag_ms`."""
        self._seq += 1
        if lag_ms <= 0:
            self._apply(self._seq, contact_id, contact)
        else:
            self._pending.append((now_ms + int(lag_ms), self._seq, contact_id, contact))

    def _apply(self, seq: int, contact_id: str, snapshot: dict[str, Any] | None) -> None:
        if self._applied_seq.get(contact_id, 0) > seq:
            return
        self._applied_seq[contact_id] = seq
        if snapshot is None:
            self.visible.pop(contact_id, None)
        else:
            self.visible[contact_id] = snapshot
        self.version += 1

    def refresh(self, now_ms: int) -> bool:
        """Make due writes visible; return True when no write is still waiting."""
        if self._pending:
            due = sorted(entry for entry in self._pending if entry[0] <= now_ms)
            if due:
                self._pending = [entry for entry in self._pending if entry[0] > now_ms]
                for _, seq, contact_id, snapshot in due:
                    self._apply(seq, contact_id, snapshot)
        return not self._pending


class LocationState:
    """One location with its contacts, their tasks, notes and appointments, and its settings.

    A stored contact dict is never changed: writes store a changed copy under the same id.
    """

    def __init__(self, part: dict[str, Any], ids: IdFactory, now_ms: int) -> None:
        self.ids = ids
        self.id: str = part["id"]
        self.name: str = part.get("name", self.id)
        self.timezone: str = part.get("timezone", "UTC")
        self.active: bool = part.get("active", True)
        self.allow_duplicates: bool = part.get("allow_duplicate_contacts", False)
        self.company_id: str = part.get("company_id", "SandboxCompany000001")
        self.custom_fields: list[dict[str, Any]] = part.get("custom_fields", [])
        self.contacts: dict[str, dict[str, Any]] = {}
        self.children: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
            "tasks": {}, "notes": {}, "appointments": {}}
        self.appointment_owner: dict[str, str] = {}
        self.index = SearchIndex()
        self._search_cache: OrderedDict[tuple[str, str, int], tuple[list[Any], list[Any]]] = OrderedDict()
        self._load_contacts(part.get("contacts", []), now_ms)
        for kind in ("tasks", "notes", "appointments"):
            self._load_children(kind, part.get(kind, []))

    # -- loading and dumping -------------------------------------------------------------------

    def _load_contacts(self, contacts: list[dict[str, Any]], now_ms: int) -> None:
        from sandbox.seeding import SeedError

        for position, contact in enumerate(contacts):
            if contact.setdefault("locationId", self.id) != self.id:
                raise SeedError(f"contact {contact['id']} in location {self.id} has locationId "
                                f"{contact['locationId']}")
            if contact["id"] in self.contacts:
                raise SeedError(f"contact id {contact['id']} appears twice in location {self.id}")
            for field in ("dateAdded", "dateUpdated"):
                value = contact.setdefault(field, format_iso(now_ms / 1000))
                try:
                    parse_iso_ms(value)
                except (TypeError, ValueError):
                    raise SeedError(f"contacts[{position}].{field} of location {self.id} is not an ISO "
                                    f"8601 date: {value!r}") from None
            self.contacts[contact["id"]] = contact
            self.index.put(contact["id"], contact, now_ms, 0)

    def _load_children(self, kind: str, items: list[dict[str, Any]]) -> None:
        from sandbox.seeding import SeedError

        seen: set[str] = set()
        for item in items:
            contact_id = item["contactId"]
            if contact_id not in self.contacts:
                raise SeedError(f"{kind[:-1]} {item['id']} of location {self.id} refers to unknown "
                                f"contact {contact_id}")
            if item["id"] in seen:
                raise SeedError(f"{kind[:-1]} id {item['id']} appears twice in location {self.id}")
            seen.add(item["id"])
            if kind == "appointments":
                item.setdefault("locationId", self.id)
                self.appointment_owner[item["id"]] = contact_id
            self.children[kind].setdefault(contact_id, {})[item["id"]] = item

    def dump(self, grants: list[dict[str, Any]], pits: list[str],
             codes: list[dict[str, Any]]) -> dict[str, Any]:
        """Return the location in the seed format; it shares objects with the live state."""
        part: dict[str, Any] = {
            "id": self.id, "name": self.name, "timezone": self.timezone, "active": self.active,
            "allow_duplicate_contacts": self.allow_duplicates, "company_id": self.company_id,
            "private_integration_tokens": pits, "oauth_grants": grants, "authorization_codes": codes,
            "custom_fields": self.custom_fields,
            "contacts": list(self.contacts.values()),
        }
        for kind in ("tasks", "notes", "appointments"):
            part[kind] = self.all_children(kind)
        return part

    # -- ids and lookups -----------------------------------------------------------------------

    def new_id(self, existing_ids: Any) -> str:
        """Return a 20-character id that is not in `existing_ids`."""
        while True:
            candidate = self.ids.make()
            if candidate not in existing_ids:
                return candidate

    def child(self, kind: str, contact_id: str, child_id: str) -> dict[str, Any] | None:
        """Return a task, note or appointment of a contact, or None."""
        return self.children[kind].get(contact_id, {}).get(child_id)

    def all_children(self, kind: str) -> list[dict[str, Any]]:
        """Return every task, note or appointment of the location, grouped by contact."""
        return [item for contact_id in self.contacts for item in self.children[kind].get(contact_id, {}).values()]

    # -- contact writes ------------------------------------------------------------------------

    def reindex(self, contact_id: str, now_ms: int, lag_ms: float) -> None:
        """Send the current version of a contact (or its deletion) to the search index."""
        self.index.put(contact_id, self.contacts.get(contact_id), now_ms, lag_ms)

    def store(self, contact: dict[str, Any], now_ms: int, lag_ms: float) -> dict[str, Any]:
        """Store a new version of a contact with dateUpdated set to now, and reindex it."""
        contact["dateUpdated"] = format_iso(now_ms / 1000)
        self.contacts[contact["id"]] = contact
        self.reindex(contact["id"], now_ms, lag_ms)
        return contact

    def touch(self, contact: dict[str, Any], now_ms: int, lag_ms: float) -> dict[str, Any]:
        """Bump a contact's dateUpdated; return the new version."""
        return self.store(dict(contact), now_ms, lag_ms)

    def set_tags(self, contact: dict[str, Any], tags: list[str], now_ms: int, lag_ms: float) -> dict[str, Any]:
        """Replace a contact's tags (duplicates dropped) and bump dateUpdated; return the new version."""
        changed = dict(contact, tags=list(dict.fromkeys(tags)))
        return self.store(changed, now_ms, lag_ms)

    def find_duplicate(self, email: Any, phone: Any, exclude_id: str | None = None) -> DuplicateContact | None:
        """Return the match of an email (first) or phone among other contacts, or None."""
        email_key = email.strip().lower() if isinstance(email, str) and email.strip() else None
        phone_key = normalize_phone(phone) or None
        for field, match_key in (("email", email_key), ("phone", phone_key)):
            if match_key is None:
                continue
            for contact in self.contacts.values():
                if contact["id"] == exclude_id:
                    continue
                value = contact.get(field)
                current = normalize_phone(value) if field == "phone" else (
                    value.strip().lower() if isinstance(value, str) else None)
                if current == match_key:
                    return DuplicateContact(contact, field)
        return None

    def check_contact_body(self, body: Any, allowed: set[str]) -> dict[str, Any]:
        """Validate a contact write body.

        Raises ValidationFailed with every problem found.
        """
        if not isinstance(body, dict):
            raise ValidationFailed(["request body must be a JSON object"])
        errors = [f"property {key} should not exist" for key in body if key not in allowed]
        for key in CONTACT_STRING_FIELDS:
            if body.get(key) is not None and not isinstance(body[key], str):
                errors.append(f"{key} must be a string")
        for key in CONTACT_OBJECT_FIELDS:
            if body.get(key) is not None and not isinstance(body[key], dict):
                errors.append(f"{key} must be an object")
        if body.get("dnd") is not None and not isinstance(body["dnd"], bool):
            errors.append("dnd must be a boolean value")
        email = body.get("email")
        if isinstance(email, str) and email and not EMAIL_PATTERN.match(email):
            errors.append("email must be an email")
        tags = body.get("tags")
        if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
            errors.append("tags must be an array of strings")
        if body.get("customFields") is not None:
            self.resolve_custom_fields(body["customFields"], errors)
        if errors:
            raise ValidationFailed(errors)
        return body

    def resolve_custom_fields(self, items: Any, errors: list[str]) -> list[tuple[str, Any]]:
        """Map write-side `[{id|key, field_value}]` to `(definition id, value)` pairs."""
        if not isinstance(items, list):
            errors.append("customFields must be an array")
            return []
        resolved = []
        for position, item in enumerate(items):
            path = f"customFields.{position}"
            if not isinstance(item, dict):
                errors.append(f"{path} must be an object")
                continue
            reference = item.get("id") or item.get("key")
            if not isinstance(reference, str) or not reference:
                errors.append(f"{path} needs an id or a key")
                continue
            if "field_value" not in item:
                errors.append(f"{path}.field_value should not be empty")
                continue
            definition = self.custom_field(reference)
            if definition is None:
                errors.append(f"{path}: no custom field with id or key {reference} in this location")
                continue
            resolved.append((definition["id"], item["field_value"]))
        return resolved

    def custom_field(self, reference: str) -> dict[str, Any] | None:
        """Return the custom field definition with this id or fieldKey (`contact.` prefix optional)."""
        for definition in self.custom_fields:
            key = definition.get("fieldKey", "")
            if reference in (definition.get("id"), key) or f"contact.{reference}" == key:
                return definition
        return None

    def apply_contact_fields(self, contact: dict[str, Any], body: dict[str, Any]) -> None:
        """Write the fields of a validated body into a contact; null clears a field."""
        for key in (*CONTACT_STRING_FIELDS, *CONTACT_OBJECT_FIELDS, "dnd"):
            if key not in body:
                continue
            if body[key] is None:
                contact.pop(key, None)
            else:
                contact[key] = body[key]
        if "tags" in body:
            contact["tags"] = list(dict.fromkeys(body["tags"] or []))
        if body.get("customFields") is not None:
            self._merge_custom_fields(contact, self.resolve_custom_fields(body["customFields"], []))
        self._derive_names(contact, explicit_name="name" in body)

    @staticmethod
    def _merge_custom_fields(contact: dict[str, Any], values: list[tuple[str, Any]]) -> None:
        current = {item["id"]: item for item in contact.get("customFields", [])}
        for field_id, value in values:
            if value is None or value == "" or value == []:
                current.pop(field_id, None)
            else:
                current[field_id] = {"id": field_id, "value": value}
        contact["customFields"] = list(current.values())

    @staticmethod
    def _derive_names(contact: dict[str, Any], *, explicit_name: bool) -> None:
        first, last = contact.get("firstName"), contact.get("lastName")
        if not explicit_name and (first or last):
            contact["name"] = " ".join(part for part in (first, last) if part)
        for field, lower in (("firstName", "firstNameLowerCase"), ("lastName", "lastNameLowerCase"),
                             ("name", "fullNameLowerCase"), ("email", "emailLowerCase")):
            if isinstance(contact.get(field), str):
                contact[lower] = contact[field].lower()
            else:
                contact.pop(lower, None)

    def create_contact(self, body: dict[str, Any], now_ms: int, lag_ms: float) -> dict[str, Any]:
        """Create a contact from a validated body.

        Raises DuplicateContact when the location forbids duplicates and one matches.
        """
        if not self.allow_duplicates:
            duplicate = self.find_duplicate(body.get("email"), body.get("phone"))
            if duplicate is not None:
                raise duplicate
        now_iso = format_iso(now_ms / 1000)
        contact: dict[str, Any] = {
            "id": self.new_id(self.contacts), "locationId": self.id, "type": "lead", "dnd": False,
            "tags": [], "customFields": [], "dateAdded": now_iso, "dateUpdated": now_iso,
        }
        self.apply_contact_fields(contact, body)
        self.contacts[contact["id"]] = contact
        self.reindex(contact["id"], now_ms, lag_ms)
        return contact

    def update_contact(self, contact: dict[str, Any], body: dict[str, Any], now_ms: int,
                       lag_ms: float) -> dict[str, Any]:
        """Store a changed copy of a contact, with its dateUpdated bumped, and return it.

        Raises DuplicateContact when a new email or phone matches another contact and the
        location forbids duplicates.
        """
        if not self.allow_duplicates and ("email" in body or "phone" in body):
            duplicate = self.find_duplicate(body.get("email"), body.get("phone"), exclude_id=contact["id"])
            if duplicate is not None:
                raise duplicate
        changed = copy_json(contact)
        self.apply_contact_fields(changed, body)
        return self.store(changed, now_ms, lag_ms)

    def delete_contact(self, contact_id: str, now_ms: int, lag_ms: float) -> None:
        """Delete a contact with its tasks, notes and appointments."""
        self.contacts.pop(contact_id, None)
        for kind in ("tasks", "notes", "appointments"):
            removed = self.children[kind].pop(contact_id, {})
            if kind == "appointments":
                for appointment_id in removed:
                    self.appointment_owner.pop(appointment_id, None)
        self.reindex(contact_id, now_ms, lag_ms)

    # -- search --------------------------------------------------------------------------------

    def _sorted_matches(self, request: SearchRequest, now_ms: int) -> tuple[list[Any], list[Any]]:
        """Return matching contacts in ascending (sort value, id) order, and their keys."""
        settled = self.index.refresh(now_ms)
        cache_key = (request.cache_key, request.sort_field, self.index.version)
        if settled and cache_key in self._search_cache:
            self._search_cache.move_to_end(cache_key)
            return self._search_cache[cache_key]
        matches = [contact for contact in self.index.visible.values() if request.predicate(contact)]
        pairs = sorted(((sort_key(contact, request.sort_field), contact) for contact in matches),
                       key=lambda pair: pair[0])
        result = ([key for key, _ in pairs], [contact for _, contact in pairs])
        if settled:
            self._search_cache[cache_key] = result
            while len(self._search_cache) > SEARCH_CACHE_SIZE:
                self._search_cache.popitem(last=False)
        return result

    def search(self, request: SearchRequest, now_ms: int) -> tuple[list[dict[str, Any]], int]:
        """Return one page of search results (search-side copies with searchAfter) and the total."""
        keys, contacts = self._sorted_matches(request, now_ms)
        limit = request.page_limit
        if request.search_after is not None:
            if request.descending:
                end = bisect.bisect_left(keys, request.search_after)
                selected = list(zip(keys[max(0, end - limit):end], contacts[max(0, end - limit):end]))[::-1]
            else:
                start = bisect.bisect_right(keys, request.search_after)
                selected = list(zip(keys[start:start + limit], contacts[start:start + limit]))
        else:
            offset = ((request.page or 1) - 1) * limit
            if request.descending:
                end = max(0, len(keys) - offset)
                selected = list(zip(keys[max(0, end - limit):end], contacts[max(0, end - limit):end]))[::-1]
            else:
                selected = list(zip(keys[offset:offset + limit], contacts[offset:offset + limit]))
        page = []
        for key, contact in selected:
            record = search_record(contact)
            record["searchAfter"] = [key[0], key[1]]
            page.append(record)
        return page, len(keys)

    def list_page(self, *, limit: int, start_after: tuple[int, str] | None, query: str | None,
                  now_ms: int) -> tuple[list[dict[str, Any]], int, int, bool]:
        """Return one page of the deprecated contact list, ordered by dateAdded then id.

        Returns the records, the total, the number of contacts before the page and whether more follow.
        """
        self.index.refresh(now_ms)
        text = query.lower() if query else None
        rows = sorted(
            (sort_key(contact, "dateAdded"), contact) for contact in self.index.visible.values()
            if text is None or any(isinstance(contact.get(f), str) and text in contact[f].lower()
                                   for f in ("name", "email", "phone", "companyName"))
        )
        keys = [key for key, _ in rows]
        start = bisect.bisect_right(keys, start_after) if start_after is not None else 0
        selected = rows[start:start + limit]
        records = [search_record(contact) for _, contact in selected]
        return records, len(rows), start, start + limit < len(rows)


def search_record(contact: dict[str, Any]) -> dict[str, Any]:
    """Return the search-side copy of a contact: every field of a GET but dndSettings."""
    record = dict(contact)
    record.pop("dndSettings", None)
    return record
