"""The mapping file, and the desired Memberstack state it derives from parsed GHL frames.

``load_mapping`` reads and validates ``include/mapping.yaml`` (or another file) into a ``Mapping``.
``build_desired`` applies it to the frames built by ``ghl_memberstack.models.frame`` and returns
a ``DesiredState`` in the shape described in ``ghl_memberstack.state``.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from collections.abc import Iterable
from collections.abc import Mapping as MappingABC
from typing import Annotated, Any, Literal

import pandas as pd
import phonenumbers
import yaml
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from ghl_memberstack import models
from ghl_memberstack.state import DesiredState, QuarantineEntry

log = logging.getLogger(__name__)

DEFAULT_MAPPING_PATH = pathlib.Path(__file__).resolve().parent.parent / "mapping.yaml"

REASON_MISSING_EMAIL = "missing_email"
REASON_INVALID_EMAIL = "invalid_email"
REASON_DUPLICATE_EMAIL = "duplicate_email"
REASON_CONTACT_QUARANTINED = "contact_quarantined"
REASON_UNKNOWN_CONTACT = "unknown_contact"
REASON_MISSING_CONTACT_ID = models.REASON_MISSING_CONTACT_ID

STATUS_ACTIVE = "active"
STATUS_DELETED = "deleted"

# Memberstack custom fields every member gets, whatever the mapping file lists.
BUILTIN_MEMBER_FIELDS = ("first-name", "last-name", "phone", "ghl-tags", "ghl-status")
CUSTOM_FIELD_PREFIX = "cf:"

ENTITY_TABLES = {"tasks": "ghl_tasks", "notes": "ghl_notes", "appointments": "ghl_appointments"}
TABLE_ID_FIELDS = {
    "ghl_tasks": "ghl_task_id",
    "ghl_notes": "ghl_note_id",
    "ghl_appointments": "ghl_appointment_id",
}
# Member json key that contains the subtree of entities targeting json, as in {"ghl": {"tasks": [...]}}.
JSON_ROOT_KEY = "ghl"

# Memberstack Data Table field key to field type, per table. The loader's preflight compares these
# with the tables of the app.
TABLE_FIELD_TYPES: dict[str, dict[str, str]] = {
    "ghl_tasks": {
        "ghl_task_id": "TEXT_UNIQUE",
        "ghl_contact_id": "TEXT_FILTERABLE",
        "ghl_location_id": "TEXT_FILTERABLE",
        "member": "MEMBER_REFERENCE",
        "title": "TEXT",
        "body": "TEXT",
        "due_date": "DATE",
        "completed": "BOOLEAN",
    },
    "ghl_notes": {
        "ghl_note_id": "TEXT_UNIQUE",
        "ghl_contact_id": "TEXT_FILTERABLE",
        "ghl_location_id": "TEXT_FILTERABLE",
        "member": "MEMBER_REFERENCE",
        "body": "TEXT",
        "date_added": "DATE",
    },
    "ghl_appointments": {
        "ghl_appointment_id": "TEXT_UNIQUE",
        "ghl_contact_id": "TEXT_FILTERABLE",
        "ghl_location_id": "TEXT_FILTERABLE",
        "member": "MEMBER_REFERENCE",
        "title": "TEXT",
        "status": "TEXT",
        "start_time": "DATE",
        "end_time": "DATE",
    },
}

# Record frame column to GHL parsed-row column, per table. The record frames leave out `member`.
_RECORD_SOURCES: dict[str, dict[str, str]] = {
    "ghl_tasks": {"title": "title", "body": "body", "due_date": "due_date", "completed": "completed"},
    "ghl_notes": {"body": "body", "date_added": "date_added"},
    "ghl_appointments": {
        "title": "title",
        "status": "appointment_status",
        "start_time": "start_time",
        "end_time": "end_time",
    },
}
_TEXT_FIELD_TYPES = {"TEXT", "TEXT_FILTERABLE", "TEXT_UNIQUE"}


class MappingError(ValueError):
    """An invalid mapping file, naming the file, the key and the problem."""

    def __init__(self, path: str | pathlib.Path, key: str | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f" key '{key}':" if key else ""
        super().__init__(f"invalid mapping file {self.path}:{where} {problem}")


def normalize_tag(tag: str) -> str:
    """Trim a tag, collapse its inner whitespace to single spaces and case-fold it."""
    return " ".join(tag.split()).casefold()


def tag_set(tags: Iterable[str] | str | None) -> set[str]:
    """Return the normalised tags of a contact, with tags containing commas split into several."""
    if tags is None:
        return set()
    if isinstance(tags, str):
        tags = [tags]
    result = set()
    for tag in tags:
        for part in str(tag).split(","):
            normalized = normalize_tag(part)
            if normalized:
                result.add(normalized)
    return result


def normalize_tags(tags: Iterable[str] | str | None) -> str:
    """Return the ``ghl-tags`` value: normalised, de-duplicated tags sorted by code point, joined by ","."""
    return ",".join(sorted(tag_set(tags)))


def canonical_email(value: object) -> str | None:
    """Trim and lower-case an email, or return None when it is missing or blank."""
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    return email or None


def is_valid_email(email: str) -> bool:
    """Check an email's syntax with email-validator, without any DNS lookup."""
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def mask_email(email: object) -> str:
    """Mask an email for reports and logs as its first character, ``***`` and the domain."""
    if not isinstance(email, str):
        return "***"
    local, _, domain = email.strip().rpartition("@")
    if not local or not domain:
        return "***"
    return f"{local[0]}***@{domain}"


def phone_region(country: object, default_region: str) -> str:
    """Return the contact's country when phonenumbers supports it as a region, else the default."""
    if isinstance(country, str):
        region = country.strip().upper()
        if region in phonenumbers.SUPPORTED_REGIONS:
            return region
    return default_region


def normalize_phone(value: object, region: str) -> tuple[str, bool]:
    """Format a phone number as E.164 and return it with True, or trimmed with False when unparseable.

    A leading ``00`` is read as the international prefix ``+``. A number phonenumbers parses but
    rejects as impossible for its region counts as unparseable.
    """
    if not isinstance(value, str):
        return "", True
    text = value.strip()
    if not text:
        return "", True
    candidate = "+" + text[2:] if text.startswith("00") else text
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return text, False
    if not phonenumbers.is_possible_number(number):
        return text, False
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), True


def custom_field_text(value: Any) -> str:
    """Convert a GHL custom field value to Memberstack text.

    Lists are joined with ",", numbers become their shortest text (``3.0`` becomes ``3``),
    booleans ``true`` or ``false``, objects (file uploads) compact JSON, and null "".
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join(custom_field_text(item) for item in value if item is not None)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _check_field_key(key: str) -> str:
    if not key or key != key.strip() or any(char.isspace() for char in key):
        raise ValueError("must be a non-empty key without whitespace")
    return key


def _check_plan_id(plan_id: str) -> str:
    if plan_id.startswith("prc_"):
        raise ValueError(
            f"'{plan_id}' is a price id of a paid plan, and only free plans (pln_ ids) can be managed"
        )
    if not plan_id.startswith("pln_") or len(plan_id) == len("pln_") or any(c.isspace() for c in plan_id):
        raise ValueError(
            f"'{plan_id}' is not a Memberstack plan id. Use a free plan id such as pln_members-free"
        )
    return plan_id


def _check_tag(tag: str) -> str:
    if "," in tag:
        raise ValueError("a tag cannot contain a comma, because contact tags are split on commas")
    if not normalize_tag(tag):
        raise ValueError("a tag cannot be empty")
    return tag


FieldKey = Annotated[str, AfterValidator(_check_field_key)]
PlanId = Annotated[str, AfterValidator(_check_plan_id)]
TagName = Annotated[str, AfterValidator(_check_tag)]
Target = Literal["data_table", "json"]


class EntityTargets(BaseModel):
    """Targets of the GHL record types: Data Table records or the member's json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: Target = "data_table"
    notes: Target = "data_table"
    appointments: Target = "data_table"


class Mapping(BaseModel):
    """A validated mapping file. Keys missing from the file take the defaults below."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # GHL fieldKey to Memberstack custom field key.
    custom_fields: dict[FieldKey, FieldKey] = Field(default_factory=dict)
    # Normalised GHL tag to free plan id.
    tag_plans: dict[TagName, PlanId] = Field(default_factory=dict)
    default_region: str = "US"
    delete_policy: Literal["deactivate", "delete", "ignore"] = "deactivate"
    entities: EntityTargets = Field(default_factory=EntityTargets)
    _source: str = PrivateAttr(default="<defaults>")

    @field_validator("custom_fields")
    @classmethod
    def _check_custom_fields(cls, value: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for field_key, member_key in value.items():
            if member_key in BUILTIN_MEMBER_FIELDS:
                raise ValueError(
                    f"'{member_key}' (from '{field_key}') is a field the sync always writes itself"
                )
            if member_key in seen:
                raise ValueError(f"'{seen[member_key]}' and '{field_key}' both map to '{member_key}'")
            seen[member_key] = field_key
        return value

    @field_validator("tag_plans")
    @classmethod
    def _normalize_tag_plans(cls, value: dict[str, str]) -> dict[str, str]:
        normalized: dict[str, str] = {}
        originals: dict[str, str] = {}
        for tag, plan_id in value.items():
            key = normalize_tag(tag)
            if key in normalized:
                raise ValueError(f"tags '{originals[key]}' and '{tag}' are the same tag after normalisation")
            normalized[key] = plan_id
            originals[key] = tag
        return normalized

    @field_validator("default_region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"'{value}' is not a region phonenumbers supports. Use an ISO 3166-1 code such as US"
            )
        return region

    @property
    def source(self) -> str:
        """Path of the file this mapping was loaded from, or ``<defaults>``."""
        return self._source

    @property
    def member_fields(self) -> tuple[str, ...]:
        """Memberstack custom field keys the sync writes, built-in ones first."""
        return BUILTIN_MEMBER_FIELDS + tuple(self.custom_fields.values())

    @property
    def managed_plans(self) -> tuple[str, ...]:
        """Sorted free plan ids that the sync adds and removes. The diff plans no change to other plans."""
        return tuple(sorted(set(self.tag_plans.values())))

    def target(self, entity: str) -> Target:
        """Return ``data_table`` or ``json`` for ``tasks``, ``notes`` or ``appointments``."""
        return getattr(self.entities, entity)

    @property
    def json_entities(self) -> tuple[str, ...]:
        """Entities written to the member's json instead of a Data Table."""
        return tuple(entity for entity in ENTITY_TABLES if self.target(entity) == "json")

    @property
    def table_entities(self) -> tuple[str, ...]:
        """Entities written as Data Table records."""
        return tuple(entity for entity in ENTITY_TABLES if self.target(entity) == "data_table")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a mapping with the same key twice."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _error_key(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location if part != "[key]")


def _error_problem(item: dict[str, Any]) -> str:
    if item["type"] == "extra_forbidden":
        model = EntityTargets if item["loc"][0] == "entities" else Mapping
        return f"unknown key; expected one of {', '.join(model.model_fields)}"
    message = item["msg"]
    return message.removeprefix("Value error, ")


def _first_mapping_error(path: pathlib.Path, error: ValidationError) -> MappingError:
    items = error.errors(include_url=False)
    first = items[0]
    problem = _error_problem(first)
    if len(items) > 1:
        others = ", ".join(f"'{_error_key(item['loc'])}'" for item in items[1:])
        problem = f"{problem} (more problems at {others})"
    return MappingError(path, _error_key(first["loc"]), problem)


def load_mapping(path: str | pathlib.Path | None = None) -> Mapping:
    """Read and validate a mapping file, by default ``include/mapping.yaml``.

    :raises MappingError: when the file is missing, is not valid YAML, or has an invalid key.
    """
    file_path = pathlib.Path(path) if path is not None else DEFAULT_MAPPING_PATH
    try:
        text = file_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(file_path, None, "file not found") from None
    except OSError as error:
        raise MappingError(file_path, None, f"cannot be read: {error.strerror}") from None
    try:
        content = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise MappingError(file_path, None, f"invalid YAML{where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise MappingError(file_path, None, f"invalid YAML: {error}") from None
    if content is None:
        # An empty file is usually a truncated copy, and loading it would quietly stop managing
        # plans and custom fields. A mapping that means this is written as `{}`.
        raise MappingError(
            file_path, None, "the file is empty; write `{}` for a mapping with only the default fields"
        )
    if not isinstance(content, dict):
        raise MappingError(
            file_path, None, f"expected a YAML mapping at the top, found {type(content).__name__}"
        )
    try:
        mapping = Mapping.model_validate(content)
    except ValidationError as error:
        raise _first_mapping_error(file_path, error) from None
    mapping._source = str(file_path)
    return mapping


def member_columns(mapping: Mapping) -> list[str]:
    """Return the columns of a desired members frame, in order."""
    fields = [CUSTOM_FIELD_PREFIX + key for key in mapping.member_fields]
    return ["email", *fields, "plans", "status", "json", "date_updated"]


def record_columns(table: str) -> list[str]:
    """Return the columns of a desired record frame for one Data Table, in order."""
    return ["contact_id", *(key for key in TABLE_FIELD_TYPES[table] if key != "member")]


def _record_dtype(table: str, column: str) -> str:
    return "boolean" if TABLE_FIELD_TYPES[table].get(column) == "BOOLEAN" else "string"


def field_keys_by_id(custom_field_defs: Any) -> dict[str, str]:
    """Return custom field id to fieldKey from definitions in any of the shapes the pipeline keeps.

    Accepts a frame of parsed definitions, a dict of id to fieldKey, or raw or parsed definition
    dicts (``fieldKey`` or ``field_key``).
    """
    if custom_field_defs is None:
        return {}
    if isinstance(custom_field_defs, pd.DataFrame):
        if custom_field_defs.empty:
            return {}
        ids = custom_field_defs["id"].astype(object).tolist()
        keys = custom_field_defs["field_key"].astype(object).tolist()
        return {
            str(i): str(k)
            for i, k in zip(ids, keys, strict=True)
            if isinstance(i, str) and isinstance(k, str)
        }
    if isinstance(custom_field_defs, MappingABC):
        return {str(i): str(k) for i, k in custom_field_defs.items()}
    result = {}
    for definition in custom_field_defs:
        field_key = definition.get("fieldKey", definition.get("field_key"))
        if definition.get("id") and field_key:
            result[str(definition["id"])] = str(field_key)
    return result


def _resolve_field_key(name: str, keys_by_id: dict[str, str], known_keys: set[str]) -> str | None:
    """Return the fieldKey a contact's custom field entry names, or None for an unknown field id.

    Contacts name a field by its id, or by its fieldKey (which contains a dot, as in
    ``contact.tier``) when the record carries no id.
    """
    field_key = keys_by_id.get(name)
    if field_key is not None:
        return field_key
    if name in known_keys or "." in name:
        return name
    return None


def unknown_custom_field_ids(contacts: pd.DataFrame, custom_field_defs: Any) -> set[str]:
    """Return custom field ids used by contacts that the definitions do not list.

    A non-empty result means the cached definitions are out of date and worth re-reading.
    """
    keys_by_id = field_keys_by_id(custom_field_defs)
    known_keys = set(keys_by_id.values())
    unknown: set[str] = set()
    for text in _column(contacts, "custom_fields"):
        if not text:
            continue
        for name in json.loads(text):
            if _resolve_field_key(name, keys_by_id, known_keys) is None:
                unknown.add(name)
    return unknown


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    """Return a column as a list with None for missing values."""
    series = frame[name]
    values = series.astype(object).tolist()
    missing = series.isna().tolist()
    return [None if is_missing else value for value, is_missing in zip(values, missing, strict=True)]


def _latest_per_contact(contacts: pd.DataFrame) -> pd.DataFrame:
    duplicated = contacts["id"].duplicated(keep=False)
    if not duplicated.any():
        return contacts
    log.warning(
        "The extract contains %d rows of contacts read more than once, so each keeps its latest dateUpdated",
        int(duplicated.sum()),
    )
    ordered = contacts.sort_values("date_updated_ms", kind="stable", na_position="first")
    return ordered.drop_duplicates("id", keep="last").sort_index()


class _ContactRow:
    """Plain attributes of one contact while the members frame is built."""

    __slots__ = ("contact_id", "email", "date_added_ms", "position")

    def __init__(self, contact_id: str, email: str, date_added_ms: int | None, position: int) -> None:
        self.contact_id = contact_id
        self.email = email
        self.date_added_ms = date_added_ms
        self.position = position

    def priority(self) -> tuple[float, str]:
        # The earliest dateAdded wins. A contact without dateAdded loses to any that has one.
        added = self.date_added_ms if self.date_added_ms is not None else math.inf
        return (added, self.contact_id)


def _select_identities(contacts: pd.DataFrame) -> tuple[list[_ContactRow], list[QuarantineEntry]]:
    """Return the contacts that keep their email, and quarantine entries for the others."""
    # NOTE: email-validator takes about 55 µs per address on a 2-core VM, the largest share of
    # build_desired's time, which comes to about 7,000 contacts/s with phones to format.
    quarantine: list[QuarantineEntry] = []
    winners: dict[str, _ContactRow] = {}
    losers: list[_ContactRow] = []
    ids = _column(contacts, "id")
    emails = _column(contacts, "email")
    added = _column(contacts, "date_added_ms")

    for position, (contact_id, raw_email, date_added_ms) in enumerate(zip(ids, emails, added, strict=True)):
        email = canonical_email(raw_email)
        if email is None:
            quarantine.append(
                QuarantineEntry("contacts", contact_id, REASON_MISSING_EMAIL, "the contact has no email")
            )
            continue
        if not is_valid_email(email):
            quarantine.append(
                QuarantineEntry(
                    "contacts", contact_id, REASON_INVALID_EMAIL, "the email is not a valid address"
                )
            )
            continue
        row = _ContactRow(contact_id, email, date_added_ms, position)
        current = winners.get(email)
        if current is None:
            winners[email] = row
        elif row.priority() < current.priority():
            winners[email] = row
            losers.append(current)
        else:
            losers.append(row)

    for row in losers:
        winner = winners[row.email]
        quarantine.append(
            QuarantineEntry(
                "contacts",
                row.contact_id,
                REASON_DUPLICATE_EMAIL,
                f"contact {winner.contact_id} has the same email and was added first",
            )
        )
    identities = sorted(winners.values(), key=lambda row: row.position)
    return identities, quarantine


def _custom_field_values(
    texts: list[str | None], mapping: Mapping, keys_by_id: dict[str, str]
) -> tuple[dict[str, list[str]], set[str]]:
    """Return the mapped Memberstack field values per contact, and the unknown field ids seen."""
    targets = mapping.custom_fields
    values: dict[str, list[str]] = {member_key: [""] * len(texts) for member_key in targets.values()}
    unknown: set[str] = set()
    if not targets:
        return values, unknown
    known_keys = set(keys_by_id.values())

    for position, text in enumerate(texts):
        if not text:
            continue
        for name, value in json.loads(text).items():
            field_key = _resolve_field_key(name, keys_by_id, known_keys)
            if field_key is None:
                unknown.add(name)
                continue
            member_key = targets.get(field_key)
            if member_key is not None:
                values[member_key][position] = custom_field_text(value)
    return values, unknown


def _plans(tags: set[str], tag_plans: dict[str, str]) -> str:
    return ",".join(sorted({tag_plans[tag] for tag in tags if tag in tag_plans}))


def _members_frame(
    contacts: pd.DataFrame, identities: list[_ContactRow], mapping: Mapping, keys_by_id: dict[str, str]
) -> pd.DataFrame:
    """Build the members frame for the contacts that keep their email (without the json column)."""
    positions = [row.position for row in identities]
    subset = contacts.iloc[positions]
    contact_ids = [row.contact_id for row in identities]
    first_names = _column(subset, "first_name")
    last_names = _column(subset, "last_name")
    phones = _column(subset, "phone")
    countries = _column(subset, "country")
    tag_texts = _column(subset, "tags")

    phone_values: list[str] = []
    unparsed_phone_ids: list[str] = []
    for contact_id, phone, country in zip(contact_ids, phones, countries, strict=True):
        value, parsed = normalize_phone(phone, phone_region(country, mapping.default_region))
        phone_values.append(value)
        if not parsed:
            unparsed_phone_ids.append(contact_id)
    if unparsed_phone_ids:
        log.warning(
            "Kept %d phone numbers that phonenumbers cannot parse as they are, trimmed (contacts %s%s)",
            len(unparsed_phone_ids),
            ", ".join(unparsed_phone_ids[:10]),
            ", ..." if len(unparsed_phone_ids) > 10 else "",
        )

    tag_sets = [tag_set(json.loads(text)) if text else set() for text in tag_texts]
    mapped, unknown = _custom_field_values(_column(subset, "custom_fields"), mapping, keys_by_id)
    if unknown:
        shown = sorted(unknown)[:10]
        log.warning(
            "Ignored values of %d custom field ids the definitions do not list: %s", len(unknown), shown
        )

    data: dict[str, Any] = {
        "email": [row.email for row in identities],
        "cf:first-name": [name or "" for name in first_names],
        "cf:last-name": [name or "" for name in last_names],
        "cf:phone": phone_values,
        "cf:ghl-tags": [",".join(sorted(tags)) for tags in tag_sets],
        "cf:ghl-status": [STATUS_ACTIVE] * len(identities),
    }
    for member_key, values in mapped.items():
        data[CUSTOM_FIELD_PREFIX + member_key] = values
    data["plans"] = [_plans(tags, mapping.tag_plans) for tags in tag_sets]
    data["status"] = [STATUS_ACTIVE] * len(identities)
    frame = pd.DataFrame(
        {name: pd.array(values, dtype="string") for name, values in data.items()},
        index=pd.Index(contact_ids, dtype="string", name="contact_id"),
    )
    frame["date_updated"] = pd.array(subset["date_updated_ms"].to_numpy(dtype=object), dtype="Int64")
    return frame


def _quarantine_records(entity: str, ids: pd.Series, reason: str, detail: str) -> list[QuarantineEntry]:
    return [QuarantineEntry(entity, ghl_id, reason, detail) for ghl_id in ids.astype(object).tolist()]


def _eligible_records(
    entity: str, frame: pd.DataFrame | None, member_ids: pd.Index, quarantined_ids: set[str]
) -> tuple[pd.DataFrame, list[QuarantineEntry]]:
    """Return the records that belong to a member, and quarantine entries for the others."""
    if frame is None:
        return models.empty_frame(entity), []
    quarantine: list[QuarantineEntry] = []
    missing = frame["contact_id"].isna()
    if missing.any():
        quarantine += _quarantine_records(
            entity, frame.loc[missing, "id"], REASON_MISSING_CONTACT_ID, "the record has no contactId"
        )
        frame = frame[~missing]
    of_quarantined = models.is_member(frame["contact_id"], quarantined_ids)
    if of_quarantined.any():
        quarantine += _quarantine_records(
            entity,
            frame.loc[of_quarantined, "id"],
            REASON_CONTACT_QUARANTINED,
            "the record's contact is quarantined",
        )
    unknown = ~models.is_member(frame["contact_id"], member_ids) & ~of_quarantined
    if unknown.any():
        quarantine += _quarantine_records(
            entity, frame.loc[unknown, "id"], REASON_UNKNOWN_CONTACT, "the record's contact was not extracted"
        )
    frame = frame[~of_quarantined & ~unknown]
    repeated = frame["id"].duplicated(keep="first")
    if repeated.any():
        log.warning("Dropped %d %s records read more than once", int(repeated.sum()), entity)
        frame = frame[~repeated]
    return frame, quarantine


def _record_frame(table: str, records: pd.DataFrame, location_id: str) -> pd.DataFrame:
    """Build the desired record frame of one Data Table from eligible parsed records."""
    count = len(records)
    data: dict[str, Any] = {
        "contact_id": records["contact_id"].to_numpy(dtype=object),
        TABLE_ID_FIELDS[table]: records["id"].to_numpy(dtype=object),
        "ghl_contact_id": records["contact_id"].to_numpy(dtype=object),
        "ghl_location_id": [location_id] * count,
    }
    for column, source in _RECORD_SOURCES[table].items():
        values = records[source]
        if TABLE_FIELD_TYPES[table][column] in _TEXT_FIELD_TYPES:
            # An empty text is written as "", so a missing title or body becomes "".
            values = values.fillna("")
        data[column] = values.to_numpy(dtype=object)
    frame = pd.DataFrame(
        {
            column: pd.array(data[column], dtype=_record_dtype(table, column))
            for column in record_columns(table)
        },
        index=pd.Index(records["id"].to_numpy(dtype=object), dtype="string", name="ghl_id"),
    )
    return frame


def _empty_record_frame(table: str) -> pd.DataFrame:
    return pd.DataFrame(
        {column: pd.array([], dtype=_record_dtype(table, column)) for column in record_columns(table)},
        index=pd.Index([], dtype="string", name="ghl_id"),
    )


def _json_items(table: str, frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Group one table's record fields by contact id for the member's json, sorted by GHL id."""
    columns = [
        key for key in record_columns(table) if key not in ("contact_id", "ghl_contact_id", "ghl_location_id")
    ]
    items: dict[str, list[dict[str, Any]]] = {}
    ordered = frame.sort_index()
    contact_ids = ordered["contact_id"].tolist()
    values = {column: _column(ordered, column) for column in columns}
    for position, contact_id in enumerate(contact_ids):
        item = {column: values[column][position] for column in columns}
        items.setdefault(contact_id, []).append(item)
    return items


def _json_column(member_ids: list[str], subtrees: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    texts = []
    for contact_id in member_ids:
        subtree = {entity: items.get(contact_id, []) for entity, items in subtrees.items()}
        texts.append(json.dumps(subtree, ensure_ascii=False, sort_keys=True, separators=(",", ":")))
    return texts


def _check_columns(entity: str, frame: pd.DataFrame) -> None:
    missing = [column for column in models.ENTITY_COLUMNS[entity] if column not in frame.columns]
    if missing:
        raise ValueError(f"the {entity} frame lacks the columns {missing}; build it with models.frame")


def build_desired(
    contacts: pd.DataFrame | None,
    tasks: pd.DataFrame | None,
    notes: pd.DataFrame | None,
    appointments: pd.DataFrame | None,
    custom_field_defs: Any,
    mapping: Mapping,
    *,
    location_id: str,
    complete: bool,
) -> DesiredState:
    """Derive what Memberstack should hold from parsed GHL frames under the mapping.

    Contacts without a valid email, and all but the earliest-added contact of each email, are
    quarantined with their tasks, notes and appointments. A contact read more than once keeps its
    row with the latest dateUpdated. ``custom_field_defs`` is anything ``field_keys_by_id`` accepts.
    """
    contacts = models.empty_frame("contacts") if contacts is None else contacts
    _check_columns("contacts", contacts)
    contacts = _latest_per_contact(contacts.reset_index(drop=True)).reset_index(drop=True)

    identities, quarantine = _select_identities(contacts)
    members = _members_frame(contacts, identities, mapping, field_keys_by_id(custom_field_defs))
    quarantined_ids = {entry.ghl_id for entry in quarantine}

    records: dict[str, pd.DataFrame] = {}
    subtrees: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for entity, frame in (("tasks", tasks), ("notes", notes), ("appointments", appointments)):
        if frame is not None:
            _check_columns(entity, frame)
        table = ENTITY_TABLES[entity]
        eligible, rejected = _eligible_records(entity, frame, members.index, quarantined_ids)
        quarantine += rejected
        table_frame = _record_frame(table, eligible, location_id)
        if mapping.target(entity) == "json":
            subtrees[entity] = _json_items(table, table_frame)
            records[table] = _empty_record_frame(table)
        else:
            records[table] = table_frame

    if subtrees:
        members["json"] = pd.array(_json_column(members.index.tolist(), subtrees), dtype="string")
    else:
        members["json"] = pd.array([None] * len(members), dtype="string")
    members = members[member_columns(mapping)]

    log.info(
        "Built the desired state of %d members and %s records; quarantined %d objects",
        len(members),
        {table: len(frame) for table, frame in records.items()},
        len(quarantine),
    )
    return DesiredState(members=members, records=records, quarantine=quarantine, complete=complete)
