"""GHL routes for tasks, notes, appointments, custom field definitions, tags and locations.

`ActivityRoutes` is a mixin of `sandbox.ghl.GhlServer`, whose lookups (`contact_for`,
`location_for`, `json_object`, `now_ms`, `lag_ms`) the handlers use.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sandbox.core import Call, Reply, format_iso, json_reply, parse_iso_ms
from sandbox.ghl_errors import not_found, unprocessable
from sandbox.ghl_store import LocationState

TASK_KEYS = {"title", "body", "dueDate", "completed", "assignedTo"}
NOTE_KEYS = {"userId", "body", "title", "color", "pinned"}
APPOINTMENT_KEYS = {"calendarId", "locationId", "contactId", "startTime", "endTime", "title",
                    "appointmentStatus", "assignedUserId", "address", "notes", "groupId", "users"}
APPOINTMENT_STATUSES = {"new", "confirmed", "cancelled", "showed", "noshow", "invalid", "active", "completed"}
MAX_TASK_SEARCH_LIMIT = 100
DEFAULT_TASK_SEARCH_LIMIT = 25
CUSTOM_FIELD_MODELS = ("contact", "opportunity", "all")

TASKS_READ = ("contacts.readonly", "contacts.write")
CONTACTS_WRITE = ("contacts.write",)
CALENDAR_READ = ("calendars/events.readonly", "calendars/events.write")
CALENDAR_WRITE = ("calendars/events.write",)


def _is_iso(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_iso_ms(value)
    except ValueError:
        return False
    return True


def _check_optional_strings(body: dict[str, Any], keys: tuple[str, ...], errors: list[str]) -> None:
    for key in keys:
        if body.get(key) is not None and not isinstance(body[key], str):
            errors.append(f"{key} must be a string")


def check_task_body(body: dict[str, Any], *, create: bool) -> None:
    """Validate a task body; raise 422 listing every problem."""
    errors = [f"property {key} should not exist" for key in body if key not in TASK_KEYS]
    if create:
        errors += [f"{key} should not be empty" for key in ("title", "dueDate") if not body.get(key)]
        if "completed" not in body:
            errors.append("completed must be a boolean value")
    if "title" in body and (not isinstance(body["title"], str) or not body["title"].strip()):
        errors.append("title must be a non-empty string")
    if "dueDate" in body and body["dueDate"] and not _is_iso(body["dueDate"]):
        errors.append("dueDate must be a valid ISO 8601 date string")
    if "completed" in body and not isinstance(body["completed"], bool):
        errors.append("completed must be a boolean value")
    _check_optional_strings(body, ("body", "assignedTo"), errors)
    if errors:
        raise unprocessable(errors)


def check_note_body(body: dict[str, Any], *, create: bool) -> None:
    """Validate a note body; raise 422 listing every problem."""
    errors = [f"property {key} should not exist" for key in body if key not in NOTE_KEYS]
    if create and not body.get("body"):
        errors.append("body should not be empty")
    if "body" in body and (not isinstance(body["body"], str) or not body["body"]):
        errors.append("body must be a non-empty string")
    if body.get("pinned") is not None and not isinstance(body["pinned"], bool):
        errors.append("pinned must be a boolean value")
    _check_optional_strings(body, ("userId", "title", "color"), errors)
    if errors:
        raise unprocessable(errors)


def check_appointment_body(body: dict[str, Any], *, create: bool) -> None:
    """Validate an appointment body; raise 422 listing every problem."""
    allowed = APPOINTMENT_KEYS if create else APPOINTMENT_KEYS - {"locationId", "contactId"}
    errors = [f"property {key} should not exist" for key in body if key not in allowed]
    if create:
        errors += [f"{key} should not be empty" for key in ("calendarId", "locationId", "contactId", "startTime")
                   if not body.get(key)]
    for key in ("startTime", "endTime"):
        if body.get(key) is not None and not _is_iso(body[key]):
            errors.append(f"{key} must be a valid ISO 8601 date string")
    status = body.get("appointmentStatus")
    if status is not None and status not in APPOINTMENT_STATUSES:
        errors.append(f"appointmentStatus must be one of: {', '.join(sorted(APPOINTMENT_STATUSES))}")
    if body.get("users") is not None and not (isinstance(body["users"], list)
                                              and all(isinstance(user, str) for user in body["users"])):
        errors.append("users must be an array of strings")
    _check_optional_strings(body, ("calendarId", "title", "assignedUserId", "address", "notes", "groupId"), errors)
    if errors:
        raise unprocessable(errors)


def _apply(item: dict[str, Any], body: dict[str, Any]) -> None:
    for key, value in body.items():
        if value is None:
            item.pop(key, None)
        else:
            item[key] = value


def _tag_id(location_id: str, name: str) -> str:
    return hashlib.sha1(f"{location_id}/{name}".encode()).hexdigest()[:20]


class ActivityRoutes:
    """Handlers for the routes around contacts: tasks, notes, appointments and location data."""

    def register_activity_routes(self) -> None:
        """Add the task, note, appointment and location routes."""
        add = self.router.add
        add("POST", "/locations/{locationId}/tasks/search", self.search_location_tasks,
            scope=("locations/tasks.readonly",))
        add("GET", "/contacts/{contactId}/tasks", self.list_tasks, scope=TASKS_READ)
        add("POST", "/contacts/{contactId}/tasks", self.create_task, scope=CONTACTS_WRITE)
        add("PUT", "/contacts/{contactId}/tasks/{taskId}/completed", self.complete_task, scope=CONTACTS_WRITE)
        add("GET", "/contacts/{contactId}/tasks/{taskId}", self.get_task, scope=TASKS_READ)
        add("PUT", "/contacts/{contactId}/tasks/{taskId}", self.update_task, scope=CONTACTS_WRITE)
        add("DELETE", "/contacts/{contactId}/tasks/{taskId}", self.delete_task, scope=CONTACTS_WRITE)
        add("GET", "/contacts/{contactId}/notes", self.list_notes, scope=TASKS_READ)
        add("POST", "/contacts/{contactId}/notes", self.create_note, scope=CONTACTS_WRITE)
        add("GET", "/contacts/{contactId}/notes/{id}", self.get_note, scope=TASKS_READ)
        add("PUT", "/contacts/{contactId}/notes/{id}", self.update_note, scope=CONTACTS_WRITE)
        add("DELETE", "/contacts/{contactId}/notes/{id}", self.delete_note, scope=CONTACTS_WRITE)
        add("GET", "/contacts/{contactId}/appointments", self.list_contact_appointments, scope=TASKS_READ)
        add("GET", "/calendars/events", self.list_calendar_events, scope=CALENDAR_READ)
        add("POST", "/calendars/events/appointments", self.create_appointment, scope=CALENDAR_WRITE)
        add("GET", "/calendars/events/appointments/{eventId}", self.get_appointment, scope=CALENDAR_READ)
        add("PUT", "/calendars/events/appointments/{eventId}", self.update_appointment, scope=CALENDAR_WRITE)
        add("DELETE", "/calendars/events/{eventId}", self.delete_appointment, scope=CALENDAR_WRITE)
        add("GET", "/locations/{locationId}/customFields", self.list_custom_fields,
            scope=("locations/customFields.readonly",))
        add("GET", "/locations/{locationId}/customFields/{id}", self.get_custom_field,
            scope=("locations/customFields.readonly",))
        add("GET", "/locations/{locationId}/tags", self.list_location_tags, scope=("locations/tags.readonly",))
        add("GET", "/locations/{locationId}", self.get_location, scope=("locations.readonly",))

    def _child_changed(self, location: LocationState, contact: dict[str, Any]) -> None:
        """Bump the contact after a task, note or appointment change only when configured to."""
        if self.config["child_changes_bump_contact"]:
            location.touch(contact, self.now_ms(), self.lag_ms())

    def _child(self, call: Call, kind: str, param: str,
               label: str) -> tuple[LocationState, dict[str, Any], dict[str, Any]]:
        location, contact = self.contact_for(call)
        child_id = call.params[param]
        item = location.child(kind, contact["id"], child_id)
        if item is None:
            raise not_found(f"{label} with id {child_id} not found")
        return location, contact, item

    # -- tasks ---------------------------------------------------------------------------------

    def list_tasks(self, call: Call) -> Reply:
        """GET /contacts/{contactId}/tasks (not paginated)."""
        location, contact = self.contact_for(call)
        tasks = location.children["tasks"].get(contact["id"], {})
        return json_reply(200, {"tasks": list(tasks.values())})

    def create_task(self, call: Call) -> Reply:
        """POST /contacts/{contactId}/tasks: 201 with the task."""
        location, contact = self.contact_for(call)
        body = self.json_object(call)
        check_task_body(body, create=True)
        tasks = location.children["tasks"].setdefault(contact["id"], {})
        task = {"id": location.new_id(tasks), "contactId": contact["id"]}
        _apply(task, body)
        tasks[task["id"]] = task
        self._child_changed(location, contact)
        return json_reply(201, {"task": task})

    def get_task(self, call: Call) -> Reply:
        """GET /contacts/{contactId}/tasks/{taskId}."""
        _, _, task = self._child(call, "tasks", "taskId", "Task")
        return json_reply(200, {"task": task})

    def update_task(self, call: Call) -> Reply:
        """PUT /contacts/{contactId}/tasks/{taskId}: any of the create fields."""
        location, contact, task = self._child(call, "tasks", "taskId", "Task")
        body = self.json_object(call)
        check_task_body(body, create=False)
        _apply(task, body)
        self._child_changed(location, contact)
        return json_reply(200, {"task": task})

    def complete_task(self, call: Call) -> Reply:
        """PUT /contacts/{contactId}/tasks/{taskId}/completed with `{"completed": bool}`."""
        location, contact, task = self._child(call, "tasks", "taskId", "Task")
        body = self.json_object(call)
        extra = [f"property {key} should not exist" for key in body if key != "completed"]
        if not isinstance(body.get("completed"), bool) or extra:
            raise unprocessable(extra or ["completed must be a boolean value"])
        task["completed"] = body["completed"]
        self._child_changed(location, contact)
        return json_reply(200, {"task": task})

    def delete_task(self, call: Call) -> Reply:
        """DELETE /contacts/{contactId}/tasks/{taskId}."""
        location, contact, task = self._child(call, "tasks", "taskId", "Task")
        del location.children["tasks"][contact["id"]][task["id"]]
        self._child_changed(location, contact)
        return json_reply(200, {"succeded": True})

    def search_location_tasks(self, call: Call) -> Reply:
        """POST /locations/{locationId}/tasks/search: offset pages of the location's tasks."""
        location = self.location_for(call, call.params["locationId"])
        body = self.json_object(call)
        allowed = {"contactId", "completed", "assignedTo", "query", "limit", "skip", "businessId"}
        errors = [f"property {key} should not exist" for key in body if key not in allowed]
        limit, skip = body.get("limit", DEFAULT_TASK_SEARCH_LIMIT), body.get("skip", 0)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TASK_SEARCH_LIMIT:
            errors.append(f"limit must be an integer between 1 and {MAX_TASK_SEARCH_LIMIT}")
        if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
            errors.append("skip must be an integer of at least 0")
        for key in ("contactId", "assignedTo"):
            value = body.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                errors.append(f"{key} must be an array of strings")
        if body.get("completed") is not None and not isinstance(body["completed"], bool):
            errors.append("completed must be a boolean value")
        if errors:
            raise unprocessable(errors)
        tasks = [task for task in location.all_children("tasks") if _task_matches(task, body)]
        return json_reply(200, {"tasks": tasks[skip:skip + limit]})

    # -- notes ---------------------------------------------------------------------------------

    def list_notes(self, call: Call) -> Reply:
        """GET /contacts/{contactId}/notes (not paginated)."""
        location, contact = self.contact_for(call)
        notes = location.children["notes"].get(contact["id"], {})
        return json_reply(200, {"notes": list(notes.values())})

    def create_note(self, call: Call) -> Reply:
        """POST /contacts/{contactId}/notes: 201 with the note."""
        location, contact = self.contact_for(call)
        body = self.json_object(call)
        check_note_body(body, create=True)
        notes = location.children["notes"].setdefault(contact["id"], {})
        note = {"id": location.new_id(notes), "contactId": contact["id"],
                "dateAdded": format_iso(self.now_ms() / 1000)}
        _apply(note, body)
        notes[note["id"]] = note
        self._child_changed(location, contact)
        return json_reply(201, {"note": note})

    def get_note(self, call: Call) -> Reply:
        """GET /contacts/{contactId}/notes/{id}."""
        _, _, note = self._child(call, "notes", "id", "Note")
        return json_reply(200, {"note": note})

    def update_note(self, call: Call) -> Reply:
        """PUT /contacts/{contactId}/notes/{id}: any of the create fields."""
        location, contact, note = self._child(call, "notes", "id", "Note")
        body = self.json_object(call)
        check_note_body(body, create=False)
        _apply(note, body)
        self._child_changed(location, contact)
        return json_reply(200, {"note": note})

    def delete_note(self, call: Call) -> Reply:
        """DELETE /contacts/{contactId}/notes/{id}."""
        location, contact, note = self._child(call, "notes", "id", "Note")
        del location.children["notes"][contact["id"]][note["id"]]
        self._child_changed(location, contact)
        return json_reply(200, {"succeded": True})

    # -- appointments --------------------------------------------------------------------------

    def list_contact_appointments(self, call: Call) -> Reply:
        """GET /contacts/{contactId}/appointments (not paginated)."""
        location, contact = self.contact_for(call)
        events = location.children["appointments"].get(contact["id"], {})
        return json_reply(200, {"events": list(events.values())})

    def list_calendar_events(self, call: Call) -> Reply:
        """GET /calendars/events: a location's appointments in a time range, by calendar, user or group."""
        query = call.query
        errors = [f"{key} should not be empty" for key in ("locationId", "startTime", "endTime") if not query.get(key)]
        selectors = [key for key in ("calendarId", "userId", "groupId") if query.get(key)]
        if len(selectors) != 1:
            errors.append("exactly one of calendarId, userId or groupId is required")
        for key in ("startTime", "endTime"):
            if query.get(key) and not query[key].isdigit():
                errors.append(f"{key} must be epoch milliseconds")
        if errors:
            raise unprocessable(errors)
        location = self.location_for(call, query["locationId"])
        start, end = int(query["startTime"]), int(query["endTime"])
        field = {"calendarId": "calendarId", "userId": "assignedUserId", "groupId": "groupId"}[selectors[0]]
        selector_value = query[selectors[0]]
        events = [event for event in location.all_children("appointments")
                  if event.get(field) == selector_value and _overlaps(event, start, end)]
        return json_reply(200, {"events": events})

    def _appointment(self, call: Call) -> tuple[LocationState, dict[str, Any], dict[str, Any]]:
        event_id = call.params["eventId"]
        for location in self.locations.values():
            contact_id = location.appointment_owner.get(event_id)
            if contact_id is not None:
                self.location_for(call, location.id)
                event = location.children["appointments"][contact_id][event_id]
                return location, location.contacts[contact_id], event
        raise not_found(f"Appointment with id {event_id} not found")

    def get_appointment(self, call: Call) -> Reply:
        """GET /calendars/events/appointments/{eventId}."""
        _, _, event = self._appointment(call)
        return json_reply(200, {"event": event})

    def create_appointment(self, call: Call) -> Reply:
        """POST /calendars/events/appointments: 201 with the appointment at the top level."""
        body = self.json_object(call)
        check_appointment_body(body, create=True)
        location = self.location_for(call, body["locationId"])
        contact = location.contacts.get(body["contactId"])
        if contact is None:
            raise not_found(f"Contact with id {body['contactId']} not found")
        events = location.children["appointments"].setdefault(contact["id"], {})
        now_iso = format_iso(self.now_ms() / 1000)
        event = {"id": location.new_id(location.appointment_owner), "appointmentStatus": "new",
                 "dateAdded": now_iso, "dateUpdated": now_iso}
        _apply(event, body)
        events[event["id"]] = event
        location.appointment_owner[event["id"]] = contact["id"]
        self._child_changed(location, contact)
        return json_reply(201, event)

    def update_appointment(self, call: Call) -> Reply:
        """PUT /calendars/events/appointments/{eventId}: the appointment at the top level."""
        location, contact, event = self._appointment(call)
        body = self.json_object(call)
        check_appointment_body(body, create=False)
        _apply(event, body)
        event["dateUpdated"] = format_iso(self.now_ms() / 1000)
        self._child_changed(location, contact)
        return json_reply(200, event)

    def delete_appointment(self, call: Call) -> Reply:
        """DELETE /calendars/events/{eventId}."""
        location, contact, event = self._appointment(call)
        del location.children["appointments"][contact["id"]][event["id"]]
        del location.appointment_owner[event["id"]]
        self._child_changed(location, contact)
        return json_reply(200, {"succeeded": True})

    # -- location data -------------------------------------------------------------------------

    def list_custom_fields(self, call: Call) -> Reply:
        """GET /locations/{locationId}/customFields?model=contact|opportunity|all."""
        location = self.location_for(call, call.params["locationId"])
        model = call.query.get("model", "all")
        if model not in CUSTOM_FIELD_MODELS:
            raise unprocessable([f"model must be one of the following values: {', '.join(CUSTOM_FIELD_MODELS)}"])
        fields = [definition for definition in location.custom_fields
                  if model == "all" or definition.get("model", "contact") == model]
        return json_reply(200, {"customFields": fields})

    def get_custom_field(self, call: Call) -> Reply:
        """GET /locations/{locationId}/customFields/{id}; the id may also be a fieldKey."""
        location = self.location_for(call, call.params["locationId"])
        reference = call.params["id"]
        definition = next((d for d in location.custom_fields
                           if reference in (d.get("id"), d.get("fieldKey"))), None)
        if definition is None:
            raise not_found(f"Custom field with id {reference} not found")
        return json_reply(200, {"customField": definition})

    def list_location_tags(self, call: Call) -> Reply:
        """GET /locations/{locationId}/tags: every tag used by the location's contacts."""
        location = self.location_for(call, call.params["locationId"])
        names = sorted({tag for contact in location.contacts.values() for tag in contact.get("tags", [])})
        tags = [{"id": _tag_id(location.id, name), "name": name, "locationId": location.id} for name in names]
        return json_reply(200, {"tags": tags})

    def get_location(self, call: Call) -> Reply:
        """GET /locations/{locationId}."""
        location = self.location_for(call, call.params["locationId"])
        return json_reply(200, {"location": {"id": location.id, "name": location.name,
                                             "timezone": location.timezone, "companyId": location.company_id}})


def _task_matches(task: dict[str, Any], body: dict[str, Any]) -> bool:
    if body.get("contactId") and task.get("contactId") not in body["contactId"]:
        return False
    if body.get("assignedTo") and task.get("assignedTo") not in body["assignedTo"]:
        return False
    if body.get("completed") is not None and bool(task.get("completed")) != body["completed"]:
        return False
    text = body.get("query")
    if isinstance(text, str) and text:
        haystack = f"{task.get('title', '')} {task.get('body', '')}".lower()
        return text.lower() in haystack
    return True


def _overlaps(event: dict[str, Any], start_ms: int, end_ms: int) -> bool:
    try:
        event_start = parse_iso_ms(event["startTime"])
        event_end = parse_iso_ms(event.get("endTime") or event["startTime"])
    except (KeyError, TypeError, ValueError):
        return False
    return event_start <= end_ms and event_end >= start_ms
