"""Domain errors raised by services.

Services raise these and never know about HTTP; `orchestrator.api.exception_handler`
maps them to status codes (400, 403, 404, 409) and the console shows their message.
"""


class DomainError(Exception):
    code = "domain_error"

    def __init__(self, message, *, details=None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ValidationFailed(DomainError):
    """Input broke a rule. `details` maps each field to the rules it broke."""

    code = "validation_error"

    def __init__(self, message=None, *, field=None, rule=None, errors=None):
        errors = dict(errors or {})
        if field is not None:
            errors.setdefault(field, []).append(rule or message)
        if message is None:
            message = "; ".join(f"{name}: {' '.join(rules)}" for name, rules in errors.items())
        super().__init__(message, details=errors)
        self.errors = errors


class NotFound(DomainError):
    code = "not_found"


class PermissionRefused(DomainError):
    code = "permission_denied"


class Conflict(DomainError):
    """The request is valid but the current state of the data refuses it (409)."""

    code = "conflict"


class TransitionRefused(Conflict):
    """A state machine refused a transition; names the current state and what is allowed."""

    code = "transition_refused"

    def __init__(self, *, kind, current, attempted, allowed, message=None):
        allowed = sorted(allowed)
        message = message or (
            f"Cannot {attempted} a {kind} that is {current}; "
            f"allowed from {current}: {', '.join(allowed) if allowed else 'nothing (terminal)'}"
        )
        super().__init__(
            message, details={"current": current, "attempted": attempted, "allowed": allowed}
        )
        self.current = current
        self.attempted = attempted
        self.allowed = allowed


class StaleVersion(Conflict):
    code = "stale_version"

    def __init__(self, *, expected, current, message=None):
        message = message or f"Version {expected} is stale; the current version is {current}"
        super().__init__(message, details={"expected_version": expected, "current_version": current})
        self.expected = expected
        self.current = current
