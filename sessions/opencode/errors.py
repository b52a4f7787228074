"""Typed errors of the OpenCode adapter.

Each carries the HTTP status (None when no answer came), OpenCode's error `name`
(`NotFoundError`, `UnknownError`, `BadRequestError`, ...) and its message, so callers can record
exactly what the server said.
"""


class OpenCodeError(Exception):
    """Any failure talking to an OpenCode server."""

    def __init__(self, message, *, status=None, name=None, method=None, path=None, body=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.name = name
        self.method = method
        self.path = path
        self.body = body

    def __str__(self):
        where = f"{self.method} {self.path}: " if self.method else ""
        status = f"HTTP {self.status} " if self.status is not None else ""
        name = f"{self.name}: " if self.name else ""
        return f"{where}{status}{name}{self.message}"


class NotFound(OpenCodeError):
    """404: the session, message or permission request does not exist (`NotFoundError`)."""


class BadRequest(OpenCodeError):
    """400: the body or a parameter was refused."""


class Unauthorized(OpenCodeError):
    """401/403: the Basic-auth password is missing or wrong."""


class Conflict(OpenCodeError):
    """409: refused in the current state (for example a revert while the session is busy)."""


class ServerError(OpenCodeError):
    """5xx, including `UnknownError` for malformed ids."""


class Unreachable(OpenCodeError):
    """No answer: connection refused or reset, or a timeout."""


class UnexpectedResponse(OpenCodeError):
    """An answer of the wrong shape, such as the web UI's HTML (status 200) for an unknown path."""


def error_for_status(status):
    """The error class for an HTTP error status."""
    if status == 404:
        return NotFound
    if status == 400:
        return BadRequest
    if status in (401, 403):
        return Unauthorized
    if status == 409:
        return Conflict
    if status >= 500:
        return ServerError
    return OpenCodeError
