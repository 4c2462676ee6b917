"""Error bodies of the GHL emulator."""

from __future__ import annotations

from typing import Any

from sandbox.core import ApiError, Reply, json_reply

REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error"}


def ghl_error(status: int, message: str | list[str], **extra: Any) -> Reply:
    """Build a GHL error body; 422 carries a list of messages, other codes one string."""
    if status == 422 and isinstance(message, str):
        message = [message]
    payload: dict[str, Any] = {"statusCode": status, "message": message}
    if status in REASONS:
        payload["error"] = REASONS[status]
    payload.update(extra)
    return json_reply(status, payload)


def oauth_error(status: int, code: str, description: str) -> ApiError:
    """Build a token endpoint error in the OAuth shape, with the GHL fields beside it."""
    return ApiError(json_reply(status, {"error": code, "error_description": description,
                                        "statusCode": status, "message": description}))


def unprocessable(messages: list[str]) -> ApiError:
    """Build a 422 error."""
    return ApiError(ghl_error(422, messages))


def not_found(message: str) -> ApiError:
    """Build the 400 that GHL sends for an unknown id."""
    return ApiError(ghl_error(400, message))
