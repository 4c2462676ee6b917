"""Deterministic generator of sandbox seeds: GHL locations and Memberstack apps with realistic data.

The same arguments give the same seed, byte for byte once serialised, on the same Python minor
version and tz database. Each location draws from its own random stream, so adding contacts to
one location leaves the locations before it unchanged (later ones reuse a few of its emails).

Records have the shapes the emulated APIs return: contacts as ``GET /contacts/{id}`` with
``dndSettings``, tasks, notes and appointments as the per-contact GET routes with a
``contactId``, custom field definitions as ``GET /locations/{id}/customFields`` and members as
``GET /members/{id}``. Optional GHL values are left out rather than set to null, except
``attributionSource.mediumId``, which the GHL OpenAPI spec marks nullable.

The data is messy on purpose, because the pipeline must cope with what real sub-accounts contain.
Names are often non-ASCII. Emails come with capitals and spaces, and a few are missing, invalid or
duplicated. Phones are in E.164 and in loose national formats, and tags in several cases and
spacings. Custom field values are strings, numbers or lists, and some note bodies are HTML.

Command line: ``python -m sandbox.seedgen --out FILE [--contacts N] [--random-seed N]``.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import logging
import random
import string
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

# Demo credentials and ids. They are placeholders that only the sandbox accepts, safe to commit.
DEMO_LOCATION_A_ID = "DemoLocationPit00001"
DEMO_LOCATION_A_PIT = "pit-sandbox-demo-location-a"
DEMO_LOCATION_B_ID = "DemoLocationOAuth001"
DEMO_OAUTH_CLIENT_ID = "sandbox-demo-client"
DEMO_OAUTH_CLIENT_SECRET = "sandbox-demo-client-secret"
DEMO_REFRESH_TOKEN_B = "sandbox-demo-refresh-b"
DEMO_AUTHORIZATION_CODE_B = "sandbox-demo-code-b"
DEMO_MEMBERSTACK_KEY_A = "sk_sb_demo_app_a"
DEMO_MEMBERSTACK_KEY_B = "sk_sb_demo_app_b"

MEMBERSHIP_TIER_FIELD_KEY = "contact.membership_tier"
LOYALTY_POINTS_FIELD_KEY = "contact.loyalty_points"
INTERESTS_FIELD_KEY = "contact.interests"
MEMBERSHIP_TIERS = ("Bronze", "Silver", "Gold", "Platinum")
INTERESTS = ("yoga", "running", "nutrition", "cycling", "meditation", "strength")

PLAN_VIP_FREE = "pln_vip-free"
PLAN_MEMBERS_FREE = "pln_members-free"
PLAN_PREMIUM_PAID = "pln_premium-paid"
MEMBERSTACK_PLANS = (
    {"id": PLAN_VIP_FREE, "name": "VIP", "type": "FREE"},
    {"id": PLAN_MEMBERS_FREE, "name": "Members", "type": "FREE"},
    {"id": PLAN_PREMIUM_PAID, "name": "Premium", "type": "PAID"},
)
MEMBERSTACK_CUSTOM_FIELDS = (
    "first-name",
    "last-name",
    "phone",
    "ghl-tags",
    "ghl-status",
    "membership-tier",
)

# Data Tables of each app: key -> (name, ((field key, type, required), ...)).
DATA_TABLES: dict[str, tuple[str, tuple[tuple[str, str, bool], ...]]] = {
    "ghl_tasks": (
        "GHL tasks",
        (
            ("ghl_task_id", "TEXT_UNIQUE", True),
            ("ghl_contact_id", "TEXT_FILTERABLE", True),
            ("ghl_location_id", "TEXT_FILTERABLE", True),
            ("member", "MEMBER_REFERENCE", False),
            ("title", "TEXT", False),
            ("body", "TEXT", False),
            ("due_date", "DATE", False),
            ("completed", "BOOLEAN", False),
        ),
    ),
    "ghl_notes": (
        "GHL notes",
        (
            ("ghl_note_id", "TEXT_UNIQUE", True),
            ("ghl_contact_id", "TEXT_FILTERABLE", True),
            ("ghl_location_id", "TEXT_FILTERABLE", True),
            ("member", "MEMBER_REFERENCE", False),
            ("body", "TEXT", False),
            ("date_added", "DATE", False),
        ),
    ),
    "ghl_appointments": (
        "GHL appointments",
        (
            ("ghl_appointment_id", "TEXT_UNIQUE", True),
            ("ghl_contact_id", "TEXT_FILTERABLE", True),
            ("ghl_location_id", "TEXT_FILTERABLE", True),
            ("member", "MEMBER_REFERENCE", False),
            ("title", "TEXT", False),
            ("status", "TEXT", False),
            ("start_time", "DATE", False),
            ("end_time", "DATE", False),
        ),
    ),
}

# Every generated timestamp lies before this instant, so seeds do not depend on the wall clock.
REFERENCE_TIME = datetime(2025, 6, 1, tzinfo=UTC)
_REFERENCE_MS = int(REFERENCE_TIME.timestamp() * 1000)
_DAY_MS = 86_400_000
_EARLIEST_ADDED_MS = int(datetime(2023, 1, 1, tzinfo=UTC).timestamp() * 1000)

# How many tasks, notes or appointments one contact gets: an exact count, an inclusive
# (low, high) range drawn uniformly, or a {count: weight} table.
CountSpec = int | tuple[int, int] | Mapping[int, float]

# Weights of 0 to 5 objects per contact in the demo seed, about 1.6 on average.
DEMO_OBJECT_COUNT_WEIGHTS: Mapping[int, float] = {0: 30, 1: 25, 2: 20, 3: 12, 4: 8, 5: 5}

# Shares of the messy cases, per contact.
_MISSING_EMAIL_SHARE = 0.03
_INVALID_EMAIL_SHARE = 0.02
_DUPLICATE_EMAIL_SHARE = 0.02
_CROSS_LOCATION_EMAIL_SHARE = 0.01
_CAPITALISED_EMAIL_SHARE = 0.15
_SPACED_EMAIL_SHARE = 0.05

# Base64 of random bytes with "+" and "/" mapped to letters gives GHL-like alphanumeric ids quickly.
_ID_LETTERS = str.maketrans("+/", "Xq")
_MEMBER_ID_ALPHABET = string.ascii_lowercase + string.digits

_FIRST_NAMES = (
    "Ada", "José", "Zoë", "Björn", "Łukasz", "François", "Søren", "Ngọc Anh", "Siobhán", "Chloé",
    "Íñigo", "Дмитрий", "Αλέξανδρος", "美咲", "Jürgen", "Ayşe", "Oluwaseun", "Priya", "Renée",
    "Andrés", "Małgorzata", "Zoltán", "Ingrid", "Ji-woo", "Liam", "Olivia", "Noah", "Emma",
    "Mohammed", "Fatima", "Wei", "Kwame", "Thandiwe", "Mary Ann", "Jean-Luc", "Aoife", "Matteo",
    "Sofía", "Hannah", "Lucas", "Amélie", "Þóra", "Nikolaj", "Carmen", "Grace", "Ahmed", "Yuki",
)
_LAST_NAMES = (
    "Lovelace", "García", "Müller", "Núñez", "O'Brien", "Åberg", "Dvořák", "Nguyễn", "Kowalczyk",
    "Śliwińska", "Østergaard", "Þórsdóttir", "Ibáñez", "Иванов", "Παπαδόπουλος", "山田", "Smith",
    "Johnson", "van der Berg", "de la Cruz", "McAllister", "Okafor", "Yılmaz", "Çelik", "Schäfer",
    "Lefèvre", "Fernández", "Kim", "Chen", "Patel", "Brown", "Rossi", "Dubois", "Nowak", "Jensen",
    "Walker", "Santos", "Moreau", "Wagner", "Tanaka", "Mensah", "Murphy", "Silva", "Hoffmann",
)
# Letters that NFKD does not decompose into ASCII.
_ASCII_FOLDS = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "đ": "d", "þ": "th",
                              "Þ": "Th", "ß": "ss", "æ": "ae", "Æ": "Ae", "ı": "i"})
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com",
                  "post.example.org", "inbox.example.net")

_BASE_TAGS = ("newsletter", "lead", "customer", "webinar 2024", "black friday", "referral",
              "churn risk", "event:summit")
_TAG_VIP = "vip"
_TAG_MEMBER = "member"

_TASK_TITLES = ("Call back", "Send welcome pack", "Follow up on invoice", "Book onboarding session",
                "Renewal reminder", "Vertrag prüfen", "Confirmar cita", "Check-in after first class",
                "Collect feedback", "Update billing address")
_TASK_BODIES = ("Asked to be called after 5pm.", "Re: invoice #1042", "Wants the annual plan.",
                "Prefers WhatsApp.", "Rückruf wegen Kündigung.", "Send the PDF again, first one bounced.")
_NOTE_TEXTS = (
    "Prefers email over phone.",
    "Met at the spring open day.",
    "Asked about family discounts.",
    "Möchte nur montags trainieren.",
    "Llamar por la mañana.",
    "Injured knee, avoid high-impact classes 🏃",
    "Paid cash at the front desk.",
    "Referred by a friend, see tag referral.",
)
_NOTE_HTML = (
    "<p>Called <b>twice</b>, no answer.</p>",
    "<ul><li>Wants yoga</li><li>Evenings only</li></ul>",
    "Line one<br>Line two<br/>Line three",
    '<p>Signed up via <a href="https://www.example.com/promo?a=1&amp;b=2">the promo page</a>.</p>',
    "<div style=\"color:red\">Overdue &amp; unreachable</div>",
    "<script>alert('note')</script><p>Pasted from a form &lt;raw&gt;</p>",
)
_NOTE_TITLES = ("Summary", "Call log", "Front desk", "Billing")
_NOTE_COLOURS = ("#FFAA00", "#4CAF50", "#2196F3")
_APPOINTMENT_TITLES = ("Intro call", "Personal training", "Nutrition consult", "Membership review",
                       "Probetraining", "Clase de prueba")
_APPOINTMENT_STATUSES = ("confirmed", "showed", "new", "cancelled", "noshow", "invalid")
_APPOINTMENT_STATUS_CUMULATIVE = (45, 65, 77, 87, 95, 100)
_PHONE_STYLES = ("e164", "national", "spaced", "double_zero", "padded", "extension", "garbage")
_PHONE_STYLE_CUMULATIVE = (50, 77, 87, 91, 95, 98, 100)
_SOURCES = ("public api", "form", "import", "zapier", "facebook lead ad", "manual")
_COMPANIES = ("Analytical Ltd", "Müller & Söhne GmbH", "Acme Fitness", "Café Lumière", "Nordlys AS",
              "Example Holdings")

# Per country: calling code, time zone, (city, state, postal code) choices and street names.
_COUNTRIES: dict[str, tuple[str, str, tuple[tuple[str, str, str], ...], tuple[str, ...]]] = {
    "US": ("1", "America/New_York", (("New York", "NY", "10001"), ("Chicago", "IL", "60601"),
                                     ("San Francisco", "CA", "94103")), ("Market St", "Main St")),
    "GB": ("44", "Europe/London", (("London", "LDN", "N1 9GU"), ("Leeds", "WYK", "LS1 4AP")),
           ("High Street", "Station Road")),
    "DE": ("49", "Europe/Berlin", (("Berlin", "BE", "10115"), ("München", "BY", "80331")),
           ("Hauptstraße", "Bahnhofstraße")),
    "FR": ("33", "Europe/Paris", (("Paris", "IDF", "75001"), ("Lyon", "ARA", "69001")),
           ("Rue de Rivoli", "Avenue Jean Jaurès")),
    "AU": ("61", "Australia/Sydney", (("Sydney", "NSW", "2000"), ("Melbourne", "VIC", "3000")),
           ("George St", "Collins St")),
    "ES": ("34", "Europe/Madrid", (("Madrid", "MD", "28001"), ("Sevilla", "AN", "41001")),
           ("Calle Mayor", "Gran Vía")),
}

# Per generated location: id, name, time zone, country weights.
_DEMO_LOCATION_PROFILES = (
    (DEMO_LOCATION_A_ID, "Demo Studio Berlin", "Europe/Berlin",
     {"DE": 40, "GB": 15, "FR": 15, "ES": 10, "US": 10, "AU": 5, "": 5}),
    (DEMO_LOCATION_B_ID, "Demo Gym New York", "America/New_York",
     {"US": 60, "GB": 10, "AU": 10, "DE": 5, "FR": 5, "ES": 5, "": 5}),
)
_EXTRA_LOCATION_TIMEZONES = ("Australia/Sydney", "Europe/London", "Europe/Madrid", "Europe/Paris")


def generate_demo_seed(contacts: int = 2000, random_seed: int = 7) -> dict[str, Any]:
    """Generate the demo seed: about ``contacts`` contacts over locations A (55 %) and B (45 %).

    Location A authenticates with a Private Integration Token and location B with an OAuth grant.
    Each location has its Memberstack app with the custom fields, plans and Data Tables that the
    default mapping needs, and no members yet.
    """
    contacts_a = (contacts * 11 + 19) // 20
    return generate_seed(
        contacts_per_location=(contacts_a, contacts - contacts_a),
        random_seed=random_seed,
    )


def generate_seed(
    contacts_per_location: Sequence[int] = (1100, 900),
    *,
    tasks: CountSpec = DEMO_OBJECT_COUNT_WEIGHTS,
    notes: CountSpec = DEMO_OBJECT_COUNT_WEIGHTS,
    appointments: CountSpec = DEMO_OBJECT_COUNT_WEIGHTS,
    same_date_updated_share: float = 0.1,
    same_date_updated_values: int = 3,
    members_per_app: int = 0,
    random_seed: int = 7,
) -> dict[str, Any]:
    """Generate a seed with one GHL location and one Memberstack app per entry of ``contacts_per_location``.

    The first location is demo location A (Private Integration Token), the second demo location B
    (OAuth grant, plus one unused authorization code), and any further ones get their own Private
    Integration Token ``pit-sandbox-location-<n>`` and app key ``sk_sb_app_<n>``.

    ``tasks``, ``notes`` and ``appointments`` set how many objects each contact gets (see
    ``CountSpec``). A ``same_date_updated_share`` of the contacts share one of
    ``same_date_updated_values`` dateUpdated instants, as after a bulk import, so equal
    timestamps straddle search page boundaries. ``members_per_app`` members, not linked to any
    contact, are put in every app; a tenth of them hold the paid plan.
    """
    _check_arguments(contacts_per_location, same_date_updated_share, same_date_updated_values,
                     members_per_app)
    counts = {"tasks": tasks, "notes": notes, "appointments": appointments}
    for name, spec in counts.items():
        _check_count_spec(name, spec)

    locations = []
    apps = []
    earlier_emails: list[str] = []
    for index, contact_count in enumerate(contacts_per_location):
        rng = random.Random(f"sandbox-seed:{random_seed}:location:{index}")
        location = _location_shell(index)
        builder = _LocationBuilder(rng, index, location, counts, same_date_updated_share,
                                   same_date_updated_values)
        builder.add_contacts(contact_count, earlier_emails)
        earlier_emails.extend(builder.valid_emails())
        locations.append(location)

        app_rng = random.Random(f"sandbox-seed:{random_seed}:app:{index}")
        apps.append(_memberstack_app(app_rng, _app_key(index), members_per_app))

    log.info("Generated a seed with %d locations and %d contacts", len(locations),
             sum(contacts_per_location))
    return {
        "ghl": {
            "oauth_clients": [{"client_id": DEMO_OAUTH_CLIENT_ID,
                               "client_secret": DEMO_OAUTH_CLIENT_SECRET}],
            "locations": locations,
        },
        "memberstack": {"apps": apps},
    }


def count_objects(seed: Mapping[str, Any]) -> dict[str, int]:
    """Count the contacts, tasks, notes, appointments, members and records of a seed."""
    totals = dict.fromkeys(("contacts", "tasks", "notes", "appointments", "members", "records"), 0)
    for location in seed["ghl"]["locations"]:
        for entity in ("contacts", "tasks", "notes", "appointments"):
            totals[entity] += len(location[entity])
    for app in seed["memberstack"]["apps"]:
        totals["members"] += len(app["members"])
        totals["records"] += sum(len(table["records"]) for table in app["data_tables"])
    return totals


def _check_arguments(contacts_per_location: Sequence[int], share: float, shared_values: int,
                     members_per_app: int) -> None:
    if not contacts_per_location:
        raise ValueError("contacts_per_location is empty; give at least one location")
    if any(count < 0 for count in contacts_per_location):
        raise ValueError(f"contacts_per_location must not be negative: {tuple(contacts_per_location)}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"same_date_updated_share must be between 0 and 1, got {share}")
    if shared_values < 1:
        raise ValueError(f"same_date_updated_values must be at least 1, got {shared_values}")
    if members_per_app < 0:
        raise ValueError(f"members_per_app must not be negative, got {members_per_app}")


def _check_count_spec(name: str, spec: CountSpec) -> None:
    if isinstance(spec, bool):
        raise ValueError(f"{name}: expected a count, a (low, high) range or a weight table, got {spec!r}")
    if isinstance(spec, int):
        valid = spec >= 0
    elif isinstance(spec, tuple):
        valid = len(spec) == 2 and 0 <= spec[0] <= spec[1]
    elif isinstance(spec, Mapping):
        valid = bool(spec) and all(k >= 0 for k in spec) and all(w >= 0 for w in spec.values()) \
            and sum(spec.values()) > 0
    else:
        valid = False
    if not valid:
        raise ValueError(f"{name}: expected a count >= 0, a (low, high) range with 0 <= low <= high "
                         f"or a {{count: weight}} table with positive total weight, got {spec!r}")


class _CountDrawer:
    """Random source of per-contact object counts for one ``CountSpec``."""

    def __init__(self, spec: CountSpec) -> None:
        self.spec = spec
        if isinstance(spec, Mapping):
            self.counts = list(spec.keys())
            self.cumulative = list(itertools.accumulate(spec.values()))

    def draw(self, rng: random.Random) -> int:
        spec = self.spec
        if isinstance(spec, int):
            return spec
        if isinstance(spec, tuple):
            return rng.randint(spec[0], spec[1])
        return rng.choices(self.counts, cum_weights=self.cumulative)[0]


def _location_shell(index: int) -> dict[str, Any]:
    """Build location ``index`` with its credentials, settings and empty object lists."""
    if index < len(_DEMO_LOCATION_PROFILES):
        location_id, name, timezone, _ = _DEMO_LOCATION_PROFILES[index]
    else:
        number = index + 1
        location_id = f"DemoLocationExtra{number:03d}"
        name = f"Demo Location {number}"
        timezone = _EXTRA_LOCATION_TIMEZONES[index % len(_EXTRA_LOCATION_TIMEZONES)]

    pits: list[str] = []
    grants: list[dict[str, str]] = []
    codes: list[dict[str, str]] = []
    if index == 0:
        pits = [DEMO_LOCATION_A_PIT]
    elif index == 1:
        grants = [{"client_id": DEMO_OAUTH_CLIENT_ID, "refresh_token": DEMO_REFRESH_TOKEN_B}]
        codes = [{"client_id": DEMO_OAUTH_CLIENT_ID, "code": DEMO_AUTHORIZATION_CODE_B}]
    else:
        pits = [f"pit-sandbox-location-{index + 1}"]

    return {
        "id": location_id,
        "name": name,
        "timezone": timezone,
        "active": True,
        # Location A rejects duplicate contacts on create. Its seed still contains a few, as an
        # import made before the setting changed would.
        "allow_duplicate_contacts": index != 0,
        "private_integration_tokens": pits,
        "oauth_grants": grants,
        "authorization_codes": codes,
        "custom_fields": [],
        "contacts": [],
        "tasks": [],
        "notes": [],
        "appointments": [],
    }


def _country_weights(index: int) -> dict[str, float]:
    if index < len(_DEMO_LOCATION_PROFILES):
        return _DEMO_LOCATION_PROFILES[index][3]
    return {country: 1 for country in _COUNTRIES} | {"": 0.3}


def _app_key(index: int) -> str:
    if index == 0:
        return DEMO_MEMBERSTACK_KEY_A
    if index == 1:
        return DEMO_MEMBERSTACK_KEY_B
    return f"sk_sb_app_{index + 1}"


def _random_id(rng: random.Random, length: int) -> str:
    """Return ``length`` random letters and digits (a multiple of 4 keeps base64 free of padding)."""
    raw = rng.getrandbits(length * 6).to_bytes(length * 3 // 4, "big")
    return base64.b64encode(raw).decode("ascii").translate(_ID_LETTERS)


def _iso_ms(epoch_ms: int) -> str:
    """Format epoch milliseconds as GHL does: ``2024-03-05T10:00:00.000Z``."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{epoch_ms % 1000:03d}Z"


class _LocationBuilder:
    """Builder of one location's contacts, custom field definitions, tasks, notes and appointments."""

    def __init__(self, rng: random.Random, index: int, location: dict[str, Any],
                 counts: Mapping[str, CountSpec], same_date_updated_share: float,
                 same_date_updated_values: int) -> None:
        self.rng = rng
        self.location = location
        self.location_id: str = location["id"]
        self.zone = ZoneInfo(location["timezone"])
        self.counts = {name: _CountDrawer(spec) for name, spec in counts.items()}
        self.share = same_date_updated_share
        country_weights = _country_weights(index)
        self.countries = list(country_weights)
        self.country_cumulative = list(itertools.accumulate(country_weights.values()))
        self.used_ids: set[str] = set()
        # Unique, valid addresses before any capitals or spaces were added.
        self.used_emails: set[str] = set()
        self.other_locations_emails: set[str] = set()
        self.users = [self._ghl_id() for _ in range(4)]
        self.calendars = [self._ghl_id() for _ in range(3)]
        # Bulk-import instants in the last ten days before the reference time.
        self.shared_instants = sorted(
            _REFERENCE_MS - rng.randint(1, 10 * _DAY_MS) for _ in range(same_date_updated_values)
        )
        self.field_ids = self._add_custom_field_definitions()

    def valid_emails(self) -> list[str]:
        """Return the valid emails that this location's contacts hold, trimmed, lower-cased and sorted."""
        held_emails = {_normalise(contact.get("email", "")) for contact in self.location["contacts"]}
        return sorted(held_emails & self.used_emails)

    def add_contacts(self, count: int, earlier_emails: Sequence[str]) -> None:
        """Add ``count`` contacts with their objects, reusing a few of ``earlier_emails`` on purpose.

        Apart from those, emails are unique across locations, as separate sub-accounts rarely
        share people.
        """
        self.other_locations_emails = set(earlier_emails)
        contacts = self.location["contacts"]
        for number in range(count):
            added_ms = self.rng.randint(_EARLIEST_ADDED_MS, _REFERENCE_MS - 30 * _DAY_MS)
            contact = self._contact(number, added_ms)
            contacts.append(contact)
            self._add_tasks(contact, added_ms)
            self._add_notes(contact, added_ms)
            self._add_appointments(contact, added_ms)
        self._add_duplicate_emails(contacts)
        self._add_cross_location_emails(contacts, earlier_emails)

    # Ids and definitions

    def _ghl_id(self) -> str:
        while True:
            candidate = _random_id(self.rng, 20)
            if candidate not in self.used_ids:
                self.used_ids.add(candidate)
                return candidate

    def _add_custom_field_definitions(self) -> dict[str, str]:
        definitions = (
            ("Membership tier", MEMBERSHIP_TIER_FIELD_KEY, "SINGLE_OPTIONS", list(MEMBERSHIP_TIERS)),
            ("Loyalty points", LOYALTY_POINTS_FIELD_KEY, "NUMERICAL", []),
            ("Interests", INTERESTS_FIELD_KEY, "MULTIPLE_OPTIONS", list(INTERESTS)),
        )
        field_ids = {}
        for position, (name, key, data_type, options) in enumerate(definitions):
            field_id = self._ghl_id()
            field_ids[key] = field_id
            self.location["custom_fields"].append({
                "id": field_id,
                "name": name,
                "fieldKey": key,
                "placeholder": name,
                "dataType": data_type,
                "position": position * 50,
                "picklistOptions": options,
                "isAllowedCustomOption": False,
                "isMultiFileAllowed": False,
                "maxFileLimit": 0,
                "locationId": self.location_id,
                "model": "contact",
            })
        return field_ids

    # Contacts

    def _contact(self, number: int, added_ms: int) -> dict[str, Any]:
        rng = self.rng
        first, last = self._names()
        country = rng.choices(self.countries, cum_weights=self.country_cumulative)[0]
        contact: dict[str, Any] = {"id": self._ghl_id(), "locationId": self.location_id}

        if first is not None:
            contact["firstName"] = first
            contact["firstNameLowerCase"] = first.lower()
        if last is not None:
            contact["lastName"] = last
            contact["lastNameLowerCase"] = last.lower()
        full_name = " ".join(part.strip() for part in (first, last) if part)
        if full_name:
            contact["name"] = full_name
            contact["fullNameLowerCase"] = full_name.lower()

        email = self._email(first, last, number)
        if email is not None:
            contact["email"] = email
            contact["emailLowerCase"] = email.lower()
        phone = self._phone(country)
        if phone is not None:
            contact["phone"] = phone

        self._add_profile(contact, country)
        contact["tags"] = self._tags()
        contact["dateAdded"] = _iso_ms(added_ms)
        contact["dateUpdated"] = _iso_ms(self._date_updated_ms(added_ms))
        if rng.random() < 0.6:
            contact["lastActivity"] = _iso_ms(rng.randint(added_ms, _REFERENCE_MS - 1))
        contact["customFields"] = self._custom_field_values()
        contact["attributionSource"] = {
            "url": f"https://www.example.com/{rng.choice(('join', 'trial', 'promo', 'contact'))}",
            "medium": rng.choice(("form", "survey", "chat_widget", "manual")),
            "mediumId": None,
        }
        return contact

    def _names(self) -> tuple[str | None, str | None]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.01:
            return None, None
        first = rng.choice(_FIRST_NAMES)
        last: str | None = rng.choice(_LAST_NAMES)
        if roll < 0.04:
            last = None
        style = rng.random()
        if style < 0.05:
            first = first.lower()
        elif style < 0.08 and last is not None:
            last = last.upper()
        elif style < 0.12:
            first = f"  {first} "
        elif style < 0.13 and " " in first:
            first = first.replace(" ", "  ")
        return first, last

    def _email(self, first: str | None, last: str | None, number: int) -> str | None:
        rng = self.rng
        roll = rng.random()
        if roll < _MISSING_EMAIL_SHARE:
            return None
        local = self._email_local_part(first, last, number)
        domain = rng.choice(_EMAIL_DOMAINS)
        if roll < _MISSING_EMAIL_SHARE + _INVALID_EMAIL_SHARE:
            return self._invalid_email(local, domain)

        address = f"{local}@{domain}"
        suffix = 2
        while address in self.used_emails or address in self.other_locations_emails:
            address = f"{local}{suffix}@{domain}"
            suffix += 1
        self.used_emails.add(address)
        return self._decorate_email(address)

    def _email_local_part(self, first: str | None, last: str | None, number: int) -> str:
        first_ascii = _ascii_word(first or "")
        last_ascii = _ascii_word(last or "")
        if not first_ascii and not last_ascii:
            return f"contact{number}"
        if not last_ascii:
            return first_ascii
        if not first_ascii:
            return last_ascii
        pattern = self.rng.randrange(4)
        if pattern == 0:
            return f"{first_ascii}.{last_ascii}"
        if pattern == 1:
            return f"{first_ascii}{last_ascii}"
        if pattern == 2:
            return f"{first_ascii[0]}.{last_ascii}"
        return f"{first_ascii}_{last_ascii}{self.rng.randint(1, 99)}"

    def _invalid_email(self, local: str, domain: str) -> str:
        patterns = (
            f"{local}@",
            f"{local}.{domain}",
            f"{local}@@{domain}",
            f"{local}@{domain.split('.')[0]}",
            f"{local}@exa mple.com",
            "n/a",
            f"{local}@{domain}.",
        )
        return self.rng.choice(patterns)

    def _decorate_email(self, address: str) -> str:
        """Add the capitals and surrounding spaces of hand-typed emails to some addresses."""
        rng = self.rng
        if rng.random() < _CAPITALISED_EMAIL_SHARE:
            local, domain = address.split("@")
            variant = rng.randrange(3)
            if variant == 0:
                address = f"{local.title()}@{domain}"
            elif variant == 1:
                address = address.upper()
            else:
                address = f"{local}@{domain.capitalize()}"
        if rng.random() < _SPACED_EMAIL_SHARE:
            address = rng.choice((f" {address}", f"{address}  ", f"  {address} "))
        return address

    def _phone(self, country: str) -> str | None:
        rng = self.rng
        if rng.random() < 0.10:
            return None
        phone_country = country or rng.choice(list(_COUNTRIES))
        calling_code = _COUNTRIES[phone_country][0]
        subscriber, national = _phone_number(rng, phone_country)
        e164 = f"+{calling_code}{subscriber}"
        style = rng.choices(_PHONE_STYLES, cum_weights=_PHONE_STYLE_CUMULATIVE)[0]
        if style == "national":
            return national
        if style == "spaced":
            return f"+{calling_code} {_group_digits(subscriber)}"
        if style == "double_zero":
            return f"00{calling_code}{subscriber}"
        if style == "padded":
            return f"  {e164} "
        if style == "extension":
            return f"{e164} ext. {rng.randint(10, 999)}"
        if style == "garbage":
            return rng.choice(("n/a", "call after 5pm", "12345", "+1 (555)", "--"))
        return e164

    def _add_profile(self, contact: dict[str, Any], country: str) -> None:
        """Add the company, address, time zone, DND and other profile fields to a contact."""
        rng = self.rng

        if country:
            _, timezone, places, streets = _COUNTRIES[country]
            contact["country"] = country
            if rng.random() < 0.8:
                contact["timezone"] = timezone
            if rng.random() < 0.6:
                city, state, postal_code = rng.choice(places)
                contact["address1"] = f"{rng.randint(1, 240)} {rng.choice(streets)}"
                contact["city"] = city
                contact["state"] = state
                contact["postalCode"] = postal_code
        if rng.random() < 0.25:
            contact["companyName"] = rng.choice(_COMPANIES)
        if rng.random() < 0.1:
            contact["website"] = f"https://www.example.org/{rng.randint(100, 999)}"
        if rng.random() < 0.3:
            birth = datetime(1950, 1, 1) + timedelta(days=rng.randint(0, 20_000))
            contact["dateOfBirth"] = f"{birth:%Y-%m-%d}"

        dnd = rng.random() < 0.05
        contact["dnd"] = dnd
        channel_status = "active" if dnd else "inactive"
        contact["dndSettings"] = {
            channel: {"status": channel_status, "message": "", "code": ""}
            for channel in ("Call", "Email", "SMS")
        }
        contact["type"] = "lead" if rng.random() < 0.6 else "customer"
        contact["source"] = rng.choice(_SOURCES)
        contact["assignedTo"] = rng.choice(self.users)

    def _tags(self) -> list[str]:
        """Draw a contact's tags, with the case, spacing and comma variants people type."""
        rng = self.rng
        chosen: list[str] = []
        if rng.random() < 0.25:
            chosen.append(_TAG_VIP)
        if rng.random() < 0.5:
            chosen.append(_TAG_MEMBER)
        chosen.extend(rng.sample(_BASE_TAGS, k=rng.randint(0, 3)))
        tags: list[str] = []
        for tag in chosen:
            variant = _tag_variant(rng, tag)
            if variant not in tags:
                tags.append(variant)
        if rng.random() < 0.02:
            tags.append(f"{_TAG_VIP}, {_TAG_MEMBER}")
        if rng.random() < 0.02 and tags:
            # The same tag twice in different cases.
            tags.append(tags[0].upper() if tags[0] != tags[0].upper() else tags[0].lower())
        return tags

    def _custom_field_values(self) -> list[dict[str, Any]]:
        rng = self.rng
        values: list[dict[str, Any]] = []
        if rng.random() < 0.65:
            tier = rng.choices(MEMBERSHIP_TIERS, cum_weights=(45, 75, 93, 100))[0]
            values.append({"id": self.field_ids[MEMBERSHIP_TIER_FIELD_KEY], "value": tier})
        if rng.random() < 0.35:
            points: int | float = rng.randint(0, 5000)
            if rng.random() < 0.1:
                points += 0.5
            values.append({"id": self.field_ids[LOYALTY_POINTS_FIELD_KEY], "value": points})
        if rng.random() < 0.25:
            picked = rng.sample(INTERESTS, k=rng.randint(1, 3))
            values.append({"id": self.field_ids[INTERESTS_FIELD_KEY], "value": picked})
        return values

    def _date_updated_ms(self, added_ms: int) -> int:
        rng = self.rng
        if rng.random() < self.share:
            return rng.choice(self.shared_instants)
        if rng.random() < 0.3:
            return added_ms
        return rng.randint(added_ms, _REFERENCE_MS - 11 * _DAY_MS)

    def _add_duplicate_emails(self, contacts: list[dict[str, Any]]) -> None:
        """Give some contacts the email of an earlier contact, in another case or spacing.

        The first duplicate also copies the original's dateAdded, so the tie on dateAdded has to
        be broken by id.
        """
        rng = self.rng
        with_email = [c for c in contacts if _normalise(c.get("email", "")) in self.used_emails]
        first_copy = True
        for index, contact in enumerate(contacts):
            if index == 0 or rng.random() >= _DUPLICATE_EMAIL_SHARE:
                continue
            original = rng.choice(with_email[: max(1, len(with_email) // 2)])
            if original is contact:
                continue
            _set_email(contact, _email_variant(rng, original["email"].strip()))
            if first_copy:
                contact["dateAdded"] = original["dateAdded"]
                if contact["dateUpdated"] < contact["dateAdded"]:
                    contact["dateUpdated"] = contact["dateAdded"]
                first_copy = False

    def _add_cross_location_emails(self, contacts: list[dict[str, Any]],
                                   earlier_emails: Sequence[str]) -> None:
        """Give some contacts an email used in an earlier location: one person in two sub-accounts."""
        if not earlier_emails:
            return
        for contact in contacts:
            if self.rng.random() < _CROSS_LOCATION_EMAIL_SHARE:
                _set_email(contact, self.rng.choice(earlier_emails))

    # Tasks, notes and appointments

    def _add_tasks(self, contact: dict[str, Any], added_ms: int) -> None:
        rng = self.rng
        for _ in range(self.counts["tasks"].draw(rng)):
            due_ms = added_ms + rng.randint(1, 400) * _DAY_MS
            due_ms -= due_ms % 3_600_000
            task: dict[str, Any] = {"id": self._ghl_id(), "title": rng.choice(_TASK_TITLES)}
            if rng.random() < 0.7:
                task["body"] = rng.choice(_TASK_BODIES)
            task["assignedTo"] = rng.choice(self.users)
            task["dueDate"] = _iso_ms(due_ms)
            task["completed"] = due_ms < _REFERENCE_MS and rng.random() < 0.6
            task["contactId"] = contact["id"]
            self.location["tasks"].append(task)

    def _add_notes(self, contact: dict[str, Any], added_ms: int) -> None:
        rng = self.rng
        for _ in range(self.counts["notes"].draw(rng)):
            note: dict[str, Any] = {
                "id": self._ghl_id(),
                "body": self._note_body(),
                "userId": rng.choice(self.users),
                "dateAdded": _iso_ms(rng.randint(added_ms, _REFERENCE_MS - 1)),
                "contactId": contact["id"],
            }
            if rng.random() < 0.3:
                note["title"] = rng.choice(_NOTE_TITLES)
                note["color"] = rng.choice(_NOTE_COLOURS)
            note["pinned"] = rng.random() < 0.1
            self.location["notes"].append(note)

    def _note_body(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.25:
            return rng.choice(_NOTE_HTML)
        if roll < 0.26:
            return " ".join(rng.choice(_NOTE_TEXTS) for _ in range(60))
        return rng.choice(_NOTE_TEXTS)

    def _add_appointments(self, contact: dict[str, Any], added_ms: int) -> None:
        rng = self.rng
        for _ in range(self.counts["appointments"].draw(rng)):
            start_ms = added_ms + rng.randint(1, 500) * _DAY_MS + rng.randint(28, 76) * 900_000
            start_ms -= start_ms % 900_000
            end_ms = start_ms + rng.choice((15, 30, 45, 60)) * 60_000
            booked_ms = rng.randint(added_ms, min(start_ms, _REFERENCE_MS) - 1)
            status = rng.choices(_APPOINTMENT_STATUSES, cum_weights=_APPOINTMENT_STATUS_CUMULATIVE)[0]
            calendar_id = rng.choice(self.calendars)
            user_id = rng.choice(self.users)
            appointment: dict[str, Any] = {
                "id": self._ghl_id(),
                "calendarId": calendar_id,
                "status": "cancelled" if status == "cancelled" else "booked",
                "title": f"{rng.choice(_APPOINTMENT_TITLES)} - {contact.get('name', 'Guest')}",
                "assignedUserId": user_id,
                "startTime": self._local_time(start_ms),
                "endTime": self._local_time(end_ms),
                "locationId": self.location_id,
                "contactId": contact["id"],
                "appointmentStatus": status,
                "users": [user_id],
                "dateAdded": _iso_ms(booked_ms),
                "dateUpdated": _iso_ms(rng.randint(booked_ms, max(booked_ms, _REFERENCE_MS - 1))),
                "assignedResources": [],
            }
            if rng.random() < 0.3:
                appointment["notes"] = rng.choice(_TASK_BODIES)
            if rng.random() < 0.4:
                appointment["address"] = "Studio 2, first floor"
            self.location["appointments"].append(appointment)

    def _local_time(self, epoch_ms: int) -> str:
        """Format an instant in the location's time zone with its UTC offset: ``2024-05-02T10:00:00+02:00``.

        NOTE: GHL calendar events carry times in this form, but the contacts spec's example for
        ``GET /contacts/{id}/appointments`` shows ``2021-07-16 11:00:00`` with no zone. Which one
        that route really returns is not known, and the seed uses the unambiguous form.
        """
        moment = datetime.fromtimestamp(epoch_ms / 1000, UTC).astimezone(self.zone)
        return moment.isoformat(timespec="seconds")


def _normalise(address: str) -> str:
    return address.strip().lower()


def _ascii_word(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.strip().translate(_ASCII_FOLDS))
    ascii_chars = [ch for ch in folded.lower() if ch.isascii() and (ch.isalnum() or ch == "-")]
    return "".join(ascii_chars)


def _tag_variant(rng: random.Random, tag: str) -> str:
    roll = rng.random()
    if roll < 0.6:
        return tag
    if roll < 0.72:
        return tag.upper()
    if roll < 0.82:
        return tag.title()
    if roll < 0.9:
        return f" {tag}"
    if roll < 0.96:
        return f"{tag} "
    return tag.replace(" ", "  ") if " " in tag else f"  {tag.capitalize()}"


def _email_variant(rng: random.Random, address: str) -> str:
    variant = rng.randrange(4)
    if variant == 0:
        return address
    if variant == 1:
        return address.upper()
    if variant == 2:
        return f" {address}"
    local, domain = address.split("@")
    return f"{local.capitalize()}@{domain}"


def _set_email(contact: dict[str, Any], address: str) -> None:
    contact["email"] = address
    contact["emailLowerCase"] = address.lower()


def _group_digits(digits: str) -> str:
    return " ".join(digits[i:i + 3] for i in range(0, len(digits), 3))


def _phone_number(rng: random.Random, country: str) -> tuple[str, str]:
    """Return a national significant number and its national written form.

    US 555-01xx and UK 020 7946 0xxx and 07700 900xxx numbers are ranges reserved for fiction.
    The numbers of the other countries are made up and may belong to someone.
    """
    if country == "US":
        area = rng.choice(("212", "312", "415", "617", "646"))
        line = f"01{rng.randint(0, 99):02d}"
        national = rng.choice((f"({area}) 555-{line}", f"{area}-555-{line}", f"{area}.555.{line}",
                               f"1 {area} 555 {line}"))
        return f"{area}555{line}", national
    if country == "GB":
        if rng.random() < 0.5:
            tail = f"{rng.randint(0, 999):03d}"
            return f"2079460{tail}", f"020 7946 0{tail}"
        tail = f"{rng.randint(0, 999):03d}"
        return f"7700900{tail}", f"07700 900{tail}"
    if country == "DE":
        if rng.random() < 0.5:
            tail = f"{rng.randint(0, 9_999_999):07d}"
            return f"30{tail}", f"030 {tail}"
        tail = f"{rng.randint(0, 9_999_999):07d}"
        return f"151{tail}", f"0151 {tail}"
    if country == "FR":
        tail = f"{rng.randint(0, 9999):04d}"
        return f"19900{tail}", f"01 99 00 {tail[:2]} {tail[2:]}"
    if country == "AU":
        tail = f"{rng.randint(0, 999):03d}"
        return f"491570{tail}", f"0491 570 {tail}"
    tail = f"{rng.randint(0, 9_999_999):07d}"
    return f"91{tail}", f"91 {tail[:3]} {tail[3:5]} {tail[5:]}"


def _memberstack_app(rng: random.Random, secret_key: str, member_count: int) -> dict[str, Any]:
    """Build one Memberstack app with the mapping's custom fields, plans, Data Tables and members."""
    tables = []
    for key, (name, fields) in DATA_TABLES.items():
        tables.append({
            "key": key,
            "name": name,
            "fields": [{"key": f, "type": t, "required": r} for f, t, r in fields],
            "records": [],
        })
    members = [_member(rng, secret_key, number) for number in range(member_count)]
    return {
        "secret_key": secret_key,
        "custom_fields": list(MEMBERSTACK_CUSTOM_FIELDS),
        "plans": [dict(plan) for plan in MEMBERSTACK_PLANS],
        "data_tables": tables,
        "members": members,
    }


def _member(rng: random.Random, secret_key: str, number: int) -> dict[str, Any]:
    """Build a member as ``GET /members/{id}`` returns it, linked to no GHL contact."""
    created_ms = rng.randint(_EARLIEST_ADDED_MS, _REFERENCE_MS - _DAY_MS)
    first = rng.choice(_FIRST_NAMES)
    app_tag = secret_key.rsplit("_", 1)[-1]
    member_id = "mem_" + "".join(rng.choices(_MEMBER_ID_ALPHABET, k=25))
    connections = []
    if rng.random() < 0.3:
        connections.append(_plan_connection(rng, MEMBERSTACK_PLANS[1], created_ms))
    if number % 10 == 0:
        connections.append(_plan_connection(rng, MEMBERSTACK_PLANS[2], created_ms))
    return {
        "id": member_id,
        "auth": {"email": f"member{number}.{app_tag}@members.example.net"},
        "verified": rng.random() < 0.7,
        "customFields": {"first-name": first},
        "metaData": {},
        "json": {},
        "loginRedirect": "/dashboard",
        "profileImage": None,
        "stripeCustomerId": None,
        "lastLogin": None,
        "createdAt": _iso_ms(created_ms),
        "permissions": [],
        "planConnections": connections,
    }


def _plan_connection(rng: random.Random, plan: Mapping[str, str], created_ms: int) -> dict[str, Any]:
    payment = None
    if plan["type"] == "PAID":
        billed_ms = created_ms + rng.randint(1, 30) * _DAY_MS
        payment = {
            "amount": 29,
            "currency": "usd",
            "status": "PAID",
            "lastBillingDate": billed_ms // 1000,
            "nextBillingDate": (billed_ms + 30 * _DAY_MS) // 1000,
            "cancelAtDate": None,
            "lastInvoice": None,
            "lastReceipt": None,
            "card": None,
        }
    return {
        "id": "con_" + "".join(rng.choices(_MEMBER_ID_ALPHABET, k=20)),
        "active": True,
        "status": "ACTIVE",
        "planId": plan["id"],
        "planName": plan["name"],
        "type": plan["type"],
        "payment": payment,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write a demo seed as JSON to the file named by ``--out`` (``-`` for standard output)."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.seedgen",
                                     description="Write the demo sandbox seed as JSON.")
    parser.add_argument("--out", required=True, help="output file path, or - for standard output")
    parser.add_argument("--contacts", type=int, default=2000,
                        help="number of contacts over both demo locations (default 2000)")
    parser.add_argument("--random-seed", type=int, default=7,
                        help="seed of the random generator; equal seeds give equal output (default 7)")
    args = parser.parse_args(argv)
    if args.contacts < 0:
        parser.error(f"--contacts must not be negative, got {args.contacts}")

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    seed = generate_demo_seed(contacts=args.contacts, random_seed=args.random_seed)
    text = json.dumps(seed, ensure_ascii=False, indent=1)
    if args.out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    totals = count_objects(seed)
    log.info("Wrote %s: %d contacts, %d tasks, %d notes, %d appointments", args.out,
             totals["contacts"], totals["tasks"], totals["notes"], totals["appointments"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
