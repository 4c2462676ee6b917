"""The GoHighLevel API v2 emulator: OAuth token endpoint, contacts, tags, search and limits.

Task, note, appointment and location routes live in `sandbox.ghl_activities`.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode

from sandbox.core import (
    BEFORE_PROCESSING_FAULTS,
    ApiError,
    Call,
    Reply,
    Route,
    encode_json,
    json_reply,
    scaled_limit,
    text_reply,
)
from sandbox.ghl_activities import ActivityRoutes
from sandbox.ghl_errors import ghl_error, not_found, oauth_error, unprocessable
from sandbox.ghl_auth import REFRESH_TOKEN_LIFETIME_MS, Credentials, Grant, LimitState, RateLimiter, TokenError
from sandbox.ghl_search import SearchError, parse_search, sort_key
from sandbox.ghl_store import (
    CONTACT_CREATE_KEYS,
    CONTACT_UPDATE_KEYS,
    CONTACT_UPSERT_KEYS,
    DuplicateContact,
    LocationState,
    ValidationFailed,
)
from sandbox.seeding import SeedError
from sandbox.server import EmulatorServer

ACCEPTED_VERSIONS = frozenset({"2021-04-15", "2021-07-28", "2023-02-21", "v3"})
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20
# Encoded GET replies of this many contacts are kept; a stored contact never changes in place,
# so an entry is valid while it refers to the contact version now stored.
ENCODED_CONTACT_CACHE_SIZE = 5000

CONTACTS_READ = ("contacts.readonly", "contacts.write")
CONTACTS_WRITE = ("contacts.write",)


class GhlServer(ActivityRoutes, EmulatorServer):
    """ASGI app emulating the GHL API v2 for the locations of a seed."""

    name = "ghl"
    counter_groups = {"refresh": ("granted", "rejected")}

    # -- state ---------------------------------------------------------------------------------

    def load_state(self, part: dict[str, Any]) -> None:
        now_ms = self.clock.now_ms()
        credentials = Credentials()
        for client in part.get("oauth_clients", []):
            if client["client_id"] in credentials.clients:
                raise SeedError(f"OAuth client {client['client_id']} appears twice")
            credentials.clients[client["client_id"]] = client["client_secret"]
        locations: dict[str, LocationState] = {}
        contact_ids: set[str] = set()
        for raw in part.get("locations", []):
            if raw["id"] in locations:
                raise SeedError(f"location {raw['id']} appears twice")
            location = LocationState(raw, self.ids, now_ms)
            duplicated = contact_ids & set(location.contacts)
            if duplicated:
                raise SeedError(f"contact id {sorted(duplicated)[0]} appears in more than one location")
            contact_ids |= set(location.contacts)
            self._load_credentials(raw, location.id, credentials, now_ms)
            locations[location.id] = location
        self.credentials = credentials
        self.locations = locations
        self.limiter = RateLimiter()
        self._encoded_contacts: dict[str, tuple[dict[str, Any], bytes]] = {}
        # The encoded body of the latest contact search, which `search_repeat_cursor` replays.
        self._last_search_reply: bytes | None = None

    @staticmethod
    def _load_credentials(raw: dict[str, Any], location_id: str, credentials: Credentials, now_ms: int) -> None:
        for token in raw.get("private_integration_tokens", []):
            if token in credentials.pits:
                raise SeedError(f"a Private Integration Token of location {location_id} is also used elsewhere")
            credentials.pits[token] = location_id
        for entry in raw.get("oauth_grants", []):
            if entry["client_id"] not in credentials.clients:
                raise SeedError(f"OAuth grant of location {location_id} names unknown client {entry['client_id']}")
            access = {item["token"]: item["expires_at"] for item in entry.get("access_tokens", [])}
            expires = entry.get("refresh_token_expires_at", now_ms + REFRESH_TOKEN_LIFETIME_MS)
            credentials.add_grant(Grant(entry["client_id"], location_id, entry["refresh_token"], expires,
                                        entry.get("scope"), access))
        for entry in raw.get("authorization_codes", []):
            if entry["client_id"] not in credentials.clients:
                raise SeedError(f"authorization code of location {location_id} names unknown client "
                                f"{entry['client_id']}")
            credentials.codes[entry["code"]] = (entry["client_id"], location_id, entry.get("scope"))

    def dump_state(self) -> dict[str, Any]:
        credentials = self.credentials
        locations = []
        for location in self.locations.values():
            grants = [grant.dump() for grant in credentials.grants if grant.location_id == location.id]
            pits = [token for token, owner in credentials.pits.items() if owner == location.id]
            codes = []
            for code, (client_id, owner, scope) in credentials.codes.items():
                if owner == location.id:
                    codes.append({"client_id": client_id, "code": code, **({"scope": scope} if scope else {})})
            locations.append(location.dump(grants, pits, codes))
        clients = [{"client_id": client_id, "client_secret": secret}
                   for client_id, secret in credentials.clients.items()]
        return {"oauth_clients": clients, "locations": locations}

    # -- pipeline hooks ------------------------------------------------------------------------

    def error_reply(self, status: int, message: str) -> Reply:
        return ghl_error(status, message)

    def fault_reply(self, kind: str, call: Call) -> Reply:
        if kind == "429":
            return json_reply(429, {"statusCode": 429, "message": "Too Many Requests"})
        if kind == "500":
            return ghl_error(500, "Internal server error")
        # Gateways send 502 and 503 pages as HTML, not as the API's JSON.
        phrase = "Bad Gateway" if kind == "502" else "Service Unavailable"
        return text_reply(int(kind), f"<html><body><h1>{kind} {phrase}</h1></body></html>",
                          "text/html; charset=utf-8")

    def allowed_faults(self, route: Route) -> tuple[str, ...]:
        # A lost token reply would strand a client with a consumed refresh token.
        if not route.options.get("bearer", True):
            return BEFORE_PROCESSING_FAULTS
        return BEFORE_PROCESSING_FAULTS + ("timeout_after",)

    def on_config_change(self, changed: dict[str, Any]) -> None:
        if "random_seed" in changed:
            self.fault_injector.reseed(changed["random_seed"])

    def _limits(self) -> tuple[int, int]:
        scale = self.config["rate_limit_scale"]
        return (scaled_limit(self.config["ghl_burst_limit"], scale),
                scaled_limit(self.config["ghl_daily_limit"], scale))

    def gate_before_faults(self, route: Route, call: Call) -> Reply | None:
        if not route.options.get("bearer", True):
            return None
        version = call.headers.get("version")
        if version is None:
            return ghl_error(401, "version header was not found.")
        if version not in ACCEPTED_VERSIONS:
            return ghl_error(401, "version header is invalid")
        try:
            identity = self.credentials.identify(call.headers.get("authorization"), self.clock.now_ms())
        except TokenError as error:
            return ghl_error(401, error.message)
        call.auth = identity
        scopes = route.options.get("scope", ())
        if identity.scopes is not None and scopes and not identity.scopes & set(scopes):
            return ghl_error(401, "The token is not authorized for this scope.")
        if not self.locations[identity.location_id].active:
            return ghl_error(400, "Location is not active")
        return None

    def gate_after_faults(self, route: Route, call: Call) -> Reply | None:
        if call.auth is None:
            return None
        burst, daily = self._limits()
        admitted, state = self.limiter.admit(call.auth.bucket, self.clock.now(), burst, daily,
                                             self.config["rate_limits"])
        call.limit_state = state
        if not admitted:
            return json_reply(429, {"statusCode": 429, "message": "Too Many Requests"})
        return None

    def decorate(self, route: Route | None, call: Call | None, reply: Reply) -> None:
        if route is None or call is None or not route.options.get("bearer", True):
            return
        state = call.limit_state
        burst, daily = self._limits()
        if state is None and call.auth is not None:
            state = self.limiter.peek(call.auth.bucket, self.clock.now(), burst, daily)
        if state is None:
            state = LimitState(burst, burst, daily, daily)
        reply.headers.extend(state.headers())

    # -- shared lookups ------------------------------------------------------------------------

    def now_ms(self) -> int:
        """Return the sandbox time in epoch milliseconds."""
        return self.clock.now_ms()

    def lag_ms(self) -> float:
        """Return how long a write stays invisible to search."""
        return self.config["search_lag_ms"]

    def location_for(self, call: Call, location_id: Any) -> LocationState:
        """Return the location a request names; raise 403 when the token belongs to another one."""
        if location_id != call.auth.location_id or location_id not in self.locations:
            raise ApiError(ghl_error(403, "The token does not have access to this location."))
        return self.locations[location_id]

    def contact_for(self, call: Call) -> tuple[LocationState, dict[str, Any]]:
        """Return the location and contact of the `contactId` path parameter.

        Raises 400 for an unknown contact and 403 for a contact of another location.
        """
        contact_id = call.params["contactId"]
        for location in self.locations.values():
            contact = location.contacts.get(contact_id)
            if contact is not None:
                self.location_for(call, location.id)
                return location, contact
        raise not_found(f"Contact with id {contact_id} not found")

    def json_object(self, call: Call) -> dict[str, Any]:
        """Return the JSON body, raising 422 unless it is an object."""
        body = call.json(default={})
        if not isinstance(body, dict):
            raise unprocessable(["request body must be a JSON object"])
        return body

    # -- routes --------------------------------------------------------------------------------

    def register_routes(self) -> None:
        add = self.router.add
        add("POST", "/oauth/token", self.oauth_token, bearer=False)
        add("POST", "/contacts/search", self.search_contacts, scope=CONTACTS_READ)
        add("POST", "/contacts/upsert", self.upsert_contact, scope=CONTACTS_WRITE)
        add("GET", "/contacts/", self.list_contacts, aliases=("/contacts",), scope=CONTACTS_READ)
        add("POST", "/contacts/", self.create_contact, aliases=("/contacts",), scope=CONTACTS_WRITE)
        add("GET", "/contacts/{contactId}", self.get_contact, scope=CONTACTS_READ)
        add("PUT", "/contacts/{contactId}", self.update_contact, scope=CONTACTS_WRITE)
        add("DELETE", "/contacts/{contactId}", self.delete_contact, scope=CONTACTS_WRITE)
        add("POST", "/contacts/{contactId}/tags", self.add_tags, scope=CONTACTS_WRITE)
        add("DELETE", "/contacts/{contactId}/tags", self.remove_tags, scope=CONTACTS_WRITE)
        self.register_activity_routes()

    # -- OAuth ---------------------------------------------------------------------------------

    def oauth_token(self, call: Call) -> Reply:
        """Exchange a refresh token or an authorization code for a new token pair."""
        if not call.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise oauth_error(400, "invalid_request",
                              "Invalid request: send the body as application/x-www-form-urlencoded")
        form = {key: values[-1] for key, values in parse_qs(call.body.decode("utf-8", "replace")).items()}

        def field(snake: str, camel: str) -> str | None:
            return form.get(snake) or form.get(camel) or None

        grant_type = field("grant_type", "grantType")
        client_id = field("client_id", "clientId")
        client_secret = field("client_secret", "clientSecret")
        for name, value in (("client_id", client_id), ("client_secret", client_secret),
                            ("grant_type", grant_type)):
            if value is None:
                raise oauth_error(400, "invalid_request", f"Missing parameter: {name}")
        if self.credentials.clients.get(client_id) != client_secret:
            raise oauth_error(401, "invalid_client", "Invalid client: client credentials are invalid")
        user_type = field("user_type", "userType")
        if user_type not in (None, "Location"):
            raise oauth_error(400, "invalid_request", "Invalid parameter: user_type (only Location tokens "
                              "are issued)")
        if grant_type == "refresh_token":
            return self._refresh(field("refresh_token", "refreshToken"), client_id)
        if grant_type == "authorization_code":
            return self._redeem_code(field("code", "code"), client_id)
        raise oauth_error(400, "unsupported_grant_type", "Unsupported grant type: grant_type is invalid")

    def _refresh(self, refresh_token: str | None, client_id: str) -> Reply:
        try:
            if refresh_token is None:
                raise oauth_error(400, "invalid_request", "Missing parameter: refresh_token")
            grant = self.credentials.grant_for_refresh(refresh_token, client_id, self.now_ms())
            if grant is None:
                raise oauth_error(400, "invalid_grant", "Invalid grant: refresh token is invalid")
            if not self.locations[grant.location_id].active:
                raise ApiError(json_reply(400, {"statusCode": 400, "message": "Location is not active"}))
        except ApiError:
            self.stats.count("refresh", "rejected")
            raise
        self.stats.count("refresh", "granted")
        return self._token_reply(grant)

    def _redeem_code(self, code: str | None, client_id: str) -> Reply:
        if code is None:
            raise oauth_error(400, "invalid_request", "Missing parameter: code")
        entry = self.credentials.codes.get(code)
        if entry is not None and entry[0] == client_id and not self.locations[entry[1]].active:
            raise ApiError(json_reply(400, {"statusCode": 400, "message": "Location is not active"}))
        grant = self.credentials.redeem_code(code, client_id, self.now_ms())
        if grant is None:
            raise oauth_error(400, "invalid_grant", "Invalid grant: authorization code is invalid")
        return self._token_reply(grant)

    def _token_reply(self, grant: Grant) -> Reply:
        ttl = self.config["access_token_ttl_s"]
        access_token, refresh_token = self.credentials.rotate(grant, self.now_ms(), ttl)
        location = self.locations[grant.location_id]
        return json_reply(200, {
            "access_token": access_token, "token_type": "Bearer", "expires_in": ttl,
            "refresh_token": refresh_token, "scope": " ".join(sorted(grant.scopes())),
            "userType": "Location", "locationId": location.id, "companyId": location.company_id,
            "userId": "SandboxInstallUser01", "isBulkInstallation": False,
        })

    # -- contacts ------------------------------------------------------------------------------

    def search_contacts(self, call: Call) -> Reply:
        """POST /contacts/search: filtered, sorted pages by page number or searchAfter."""
        try:
            request = parse_search(call.json())
        except SearchError as error:
            raise unprocessable(error.messages) from None
        location = self.location_for(call, request.location_id)
        previous = self._last_search_reply
        repeat = self.config["search_repeat_cursor"] > 0
        if request.search_after is not None and previous is not None and repeat:
            # Test hook: replay the page before, so the client receives a cursor a second time.
            self.config["search_repeat_cursor"] -= 1
            self.stats.faults["search_repeat_cursor"] += 1
            return Reply(200, previous)
        contacts, total = location.search(request, self.now_ms())
        reply = json_reply(200, {"contacts": contacts, "total": total, "traceId": str(uuid.uuid4())})
        self._last_search_reply = reply.body
        return reply

    def _list_query(self, call: Call) -> tuple[str, int, tuple[int, str] | None, str | None]:
        errors = []
        location_id = call.query.get("locationId")
        if not location_id:
            errors.append("locationId should not be empty")
        limit_text = call.query.get("limit", str(DEFAULT_LIST_LIMIT))
        limit = int(limit_text) if limit_text.isdigit() else -1
        if limit < 1:
            errors.append("limit must be a positive integer")
        elif limit > MAX_LIST_LIMIT:
            errors.append(f"limit must not be greater than {MAX_LIST_LIMIT}")
        start_after_text, start_after_id = call.query.get("startAfter"), call.query.get("startAfterId")
        cursor = None
        if start_after_text is not None and not start_after_text.isdigit():
            errors.append("startAfter must be a number (epoch milliseconds)")
        elif start_after_text and start_after_id:
            # Only the pair advances the list; either one alone starts from the beginning again.
            cursor = (int(start_after_text), start_after_id)
        if errors:
            raise unprocessable(errors)
        return location_id, limit, cursor, call.query.get("query") or None

    def list_contacts(self, call: Call) -> Reply:
        """GET /contacts/ (deprecated): pages ordered by dateAdded, advanced by startAfter + startAfterId."""
        location_id, limit, cursor, query = self._list_query(call)
        location = self.location_for(call, location_id)
        records, total, before, more = location.list_page(limit=limit, start_after=cursor, query=query,
                                                          now_ms=self.now_ms())
        last = records[-1] if records else None
        last_ms = location_key_ms(last)
        current_page = before // limit + 1
        next_url = None
        if more and last is not None:
            next_query = urlencode({"locationId": location_id, "limit": limit, "startAfter": last_ms,
                                    "startAfterId": last["id"], **({"query": query} if query else {})})
            next_url = f"{call.base_url()}/contacts/?{next_query}"
        meta = {
            "total": total, "nextPageUrl": next_url,
            "startAfterId": last["id"] if last else None, "startAfter": last_ms,
            "currentPage": current_page, "nextPage": current_page + 1 if more else None,
            "prevPage": current_page - 1 if current_page > 1 else None,
        }
        return json_reply(200, {"contacts": records, "count": total, "meta": meta})

    def _contact_body(self, location: LocationState, call: Call, allowed: set[str]) -> dict[str, Any]:
        try:
            return location.check_contact_body(call.json(default={}), allowed)
        except ValidationFailed as error:
            raise unprocessable(error.messages) from None

    @staticmethod
    def _duplicate_error(duplicate: DuplicateContact) -> ApiError:
        contact = duplicate.contact
        meta = {"contactId": contact["id"], "contactName": contact.get("name", ""),
                "matchingField": duplicate.field}
        return ApiError(json_reply(400, {"statusCode": 400, "message": "This location does not allow "
                                         "duplicated contacts.", "meta": meta}))

    def _body_location(self, call: Call) -> LocationState:
        location_id = self.json_object(call).get("locationId")
        if not location_id:
            raise unprocessable(["locationId should not be empty"])
        return self.location_for(call, location_id)

    def create_contact(self, call: Call) -> Reply:
        """POST /contacts/: 201 with the new contact, 400 with `meta` for a forbidden duplicate."""
        location = self._body_location(call)
        body = self._contact_body(location, call, CONTACT_CREATE_KEYS)
        try:
            contact = location.create_contact(body, self.now_ms(), self.lag_ms())
        except DuplicateContact as duplicate:
            raise self._duplicate_error(duplicate) from None
        return json_reply(201, {"contact": contact})

    def upsert_contact(self, call: Call) -> Reply:
        """POST /contacts/upsert: update the contact matching email (then phone), else create one."""
        location = self._body_location(call)
        body = self._contact_body(location, call, CONTACT_UPSERT_KEYS)
        fields = {key: value for key, value in body.items()
                  if key not in ("locationId", "createNewIfDuplicateAllowed")}
        always_create = bool(body.get("createNewIfDuplicateAllowed")) and location.allow_duplicates
        match = None if always_create else location.find_duplicate(body.get("email"), body.get("phone"))
        try:
            if match is None:
                contact = location.create_contact(fields, self.now_ms(), self.lag_ms())
            else:
                contact = location.update_contact(match.contact, fields, self.now_ms(), self.lag_ms())
        except DuplicateContact as duplicate:
            raise self._duplicate_error(duplicate) from None
        return json_reply(200, {"new": match is None, "contact": contact,
                                "traceId": str(uuid.uuid4())})

    def get_contact(self, call: Call) -> Reply:
        """GET /contacts/{contactId}."""
        _, contact = self.contact_for(call)
        cached = self._encoded_contacts.get(contact["id"])
        if cached is not None and cached[0] is contact:
            return Reply(200, cached[1])
        body = encode_json({"contact": contact})
        if len(self._encoded_contacts) >= ENCODED_CONTACT_CACHE_SIZE:
            self._encoded_contacts.pop(next(iter(self._encoded_contacts)))
        self._encoded_contacts[contact["id"]] = (contact, body)
        return Reply(200, body)

    def update_contact(self, call: Call) -> Reply:
        """PUT /contacts/{contactId}: tags replace the list, custom fields merge by id."""
        location, contact = self.contact_for(call)
        body = self._contact_body(location, call, CONTACT_UPDATE_KEYS)
        try:
            contact = location.update_contact(contact, body, self.now_ms(), self.lag_ms())
        except DuplicateContact as duplicate:
            raise self._duplicate_error(duplicate) from None
        return json_reply(200, {"succeded": True, "contact": contact})

    def delete_contact(self, call: Call) -> Reply:
        """DELETE /contacts/{contactId}, with its tasks, notes and appointments."""
        location, contact = self.contact_for(call)
        location.delete_contact(contact["id"], self.now_ms(), self.lag_ms())
        return json_reply(200, {"succeded": True})

    def _tags_body(self, call: Call) -> list[str]:
        tags = self.json_object(call).get("tags")
        if not isinstance(tags, list) or not tags:
            raise unprocessable(["tags must be a non-empty array"])
        if not all(isinstance(tag, str) and tag.strip() for tag in tags):
            raise unprocessable(["each value in tags must be a non-empty string"])
        return tags

    def add_tags(self, call: Call) -> Reply:
        """POST /contacts/{contactId}/tags: 201 with the contact's tags after the change."""
        location, contact = self.contact_for(call)
        tags = [*contact.get("tags", []), *self._tags_body(call)]
        contact = location.set_tags(contact, tags, self.now_ms(), self.lag_ms())
        return json_reply(201, {"tags": contact["tags"]})

    def remove_tags(self, call: Call) -> Reply:
        """DELETE /contacts/{contactId}/tags (with a body): the contact's tags after the change."""
        location, contact = self.contact_for(call)
        removed = set(self._tags_body(call))
        tags = [tag for tag in contact.get("tags", []) if tag not in removed]
        contact = location.set_tags(contact, tags, self.now_ms(), self.lag_ms())
        return json_reply(200, {"tags": contact["tags"]})


def location_key_ms(record: dict[str, Any] | None) -> int | None:
    """Return a list record's dateAdded in epoch ms, the deprecated list's `startAfter`."""
    return sort_key(record, "dateAdded")[0] if record is not None else None
