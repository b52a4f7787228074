"""The query parameters of the sessions list and the approvals inbox, read the same way by the API
(sessions/api.py) and the console's pages (sessions/fleet_views.py): status, type, priority, agent,
repository, tag, text, creation dates, parent, keyset cursor and page size. A bad value raises ValidationFailed naming
the parameter and its rule (400 in the API, a notice on the page).
"""

from orchestrator.errors import ValidationFailed
from orchestrator.inputs import datetime_param, id_param, int_param
from sessions import rules, selectors
from sessions.models import SessionStatus


def csv_param(params, name: str) -> list[str]:
    """The comma-separated values of a parameter given once or more."""
    values = []
    for raw in params.getlist(name):
        values.extend(part.strip() for part in raw.split(",") if part.strip())
    return values


def parse_list_params(params) -> tuple[selectors.SessionFilters, int | None, int]:
    """Query parameters -> (SessionFilters, cursor, page_size); ValidationFailed names the parameter."""
    errors = {}
    statuses = csv_param(params, "status")
    bad = [value for value in statuses if value not in SessionStatus.values]
    if bad:
        errors["status"] = [f"unknown status {', '.join(bad)}; one of {', '.join(SessionStatus.values)}"]
    types = csv_param(params, "session_type") or csv_param(params, "type")
    if any(value not in rules.SESSION_TYPES for value in types):
        errors["session_type"] = [f"must be one of {', '.join(rules.SESSION_TYPES)}"]
    priorities = []
    for value in csv_param(params, "priority"):
        try:
            priorities.append(rules.parse_priority(value))
        except ValueError as exc:
            errors["priority"] = [str(exc)]
    if errors:
        raise ValidationFailed(errors=errors)
    page_size = int_param(params, "page_size", minimum=1) or selectors.PAGE_SIZE_DEFAULT
    if page_size > selectors.PAGE_SIZE_MAX:
        raise ValidationFailed(field="page_size", rule=f"must be at most {selectors.PAGE_SIZE_MAX}")
    filters = selectors.SessionFilters(
        status=tuple(statuses),
        session_type=tuple(types),
        priority=tuple(priorities),
        agent_id=id_param(params, "agent"),
        repository=params.get("repository") or None,
        tag=params.get("tag") or None,
        search=(params.get("search") or params.get("q") or "").strip() or None,
        created_after=datetime_param(params, "created_after"),
        created_before=datetime_param(params, "created_before"),
        parent_id=id_param(params, "parent"),
    )
    return filters, id_param(params, "cursor"), page_size


def parse_approval_params(params):
    """Query parameters of the approvals inbox -> (ApprovalFilters, cursor, page_size)."""
    permission = (params.get("permission") or "").strip() or None
    if permission is not None and not rules.TOOL_NAME.match(permission):
        raise ValidationFailed(field="permission", rule="must be a tool name (letters, digits, _ . * -, 1-100)")
    repository = (params.get("repository") or "").strip() or None
    if repository is not None and len(repository) > rules.REPOSITORY_MAX:
        raise ValidationFailed(field="repository", rule=f"must be at most {rules.REPOSITORY_MAX} characters")
    page_size = int_param(params, "page_size", minimum=1) or selectors.PAGE_SIZE_DEFAULT
    if page_size > selectors.PAGE_SIZE_MAX:
        raise ValidationFailed(field="page_size", rule=f"must be at most {selectors.PAGE_SIZE_MAX}")
    filters = selectors.ApprovalFilters(
        session_id=id_param(params, "session"),
        permission=permission,
        agent_id=id_param(params, "agent"),
        repository=repository,
    )
    return filters, id_param(params, "cursor"), page_size
