"""Errors raised by the GoHighLevel and Memberstack hooks.

Messages name the connection id, the HTTP method, the route template (``/contacts/{contactId}``, never
the URL, which can hold an email), the status and the next step. They never contain a token, a key
or a personal value.

::

    GoHighLevelError
    ├── GoHighLevelAuthError              credentials rejected; re-authorise or fix the token
    │   └── TokenStoreError               the token store could not be read, written or verified
    ├── GoHighLevelLocationInactiveError  the sub-account is suspended; the sync skips it
    ├── GoHighLevelConfigError            the connection or the app installation is wrong
    ├── GoHighLevelBudgetExhaustedError   the daily request budget share is used up
    ├── GoHighLevelCursorError            contact search returned a cursor it had returned before
    └── GoHighLevelRequestError           any other failed request, with its HTTP status
    MemberstackError
    ├── MemberstackConfigError            wrong key, wrong environment or bad connection
    └── MemberstackRequestError           any other failed request, with its HTTP status
"""

from __future__ import annotations


class _PicklableError(Exception):
    """Exception whose keyword attributes survive pickling (Airflow and process pools pickle errors)."""

    def __reduce__(self):  # noqa: ANN204
        return (self.__class__, self.args, self.__dict__)


class GoHighLevelError(_PicklableError):
    """Base class of every GoHighLevel hook error."""


class GoHighLevelAuthError(GoHighLevelError):
    """GoHighLevel rejected the credentials; the message explains how to re-authorise."""


class TokenStoreError(GoHighLevelAuthError):
    """The OAuth token store could not be read, written or verified."""


class GoHighLevelLocationInactiveError(GoHighLevelError):
    """GoHighLevel reports the location (sub-account) as not active."""

    def __init__(self, message: str, *, location_id: str = "") -> None:
        super().__init__(message)
        self.location_id = location_id


class GoHighLevelConfigError(GoHighLevelError):
    """The connection settings or the app installation do not allow the request."""


class GoHighLevelBudgetExhaustedError(GoHighLevelError):
    """The share of the daily request limit that this project may use is used up."""

    def __init__(
        self, message: str, *, location_id: str = "", daily_remaining: int = 0, reserve: int = 0
    ) -> None:
        super().__init__(message)
        self.location_id = location_id
        self.daily_remaining = daily_remaining
        self.reserve = reserve


class GoHighLevelCursorError(GoHighLevelError):
    """Contact search returned a ``searchAfter`` cursor that an earlier page had already returned."""


class GoHighLevelRequestError(GoHighLevelError):
    """A GoHighLevel request failed with an HTTP status, or with no response when ``status`` is None.

    ``outcome_unknown`` is True when the server may have applied a write although the client saw an
    error (a timeout or a 5xx after the request was sent). ``detail`` is the server's message with
    personal values redacted.
    """

    def __init__(
        self, message: str, *, status: int | None = None, outcome_unknown: bool = False, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome_unknown = outcome_unknown
        self.detail = detail


class MemberstackError(_PicklableError):
    """Base class of every Memberstack hook error."""


class MemberstackConfigError(MemberstackError):
    """The secret key, its environment or the connection settings are wrong."""


class MemberstackRequestError(MemberstackError):
    """A Memberstack request failed with an HTTP status, or with no response when ``status`` is None.

    ``outcome_unknown`` is True when the server may have applied a write although the client saw an
    error (a timeout or a 5xx after the request was sent). ``code`` is the error code of the body
    (such as ``generic-message``) and ``detail`` its message with personal values redacted.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome_unknown: bool = False,
        code: str | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome_unknown = outcome_unknown
        self.code = code
        self.detail = detail
