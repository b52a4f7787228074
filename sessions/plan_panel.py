"""The plan panel of the session monitor: what it shows, for the page, the htmx swap and the push.

One partial (templates/sessions/plan_review.html#plan) rendered from `plan_context`: by the plan
views (sessions/plan_review.py), embedded in the monitor page (`plan_panel`) and pushed by the
console consumer on plan.* events (`plan_fragment`, through sessions/panels.py). Nothing here
handles a request.
"""

import re

from django.middleware.csrf import get_token
from django.template.loader import render_to_string

from sessions.models import CodingSession
from sessions.planning import selectors as plan_selectors
from sessions.planning import services as planning
from sessions.planning.options import options_of
from tasks.plans import ESTIMATE_POINTS

PAGE = "sessions/plan_review.html"
PANEL = f"{PAGE}#plan"
FIELD_INDEX = re.compile(r"^tasks\[(\d+)\]")


def _row(task: dict, *, index: int, findings: list | None = None) -> dict:
    """A task of the plan as the form shows it (lists as text, one estimate point per field)."""
    estimate = task.get("estimate_hours") if isinstance(task.get("estimate_hours"), dict) else {}
    return {
        "index": index, "key": task.get("key") or "", "title": task.get("title") or "",
        "prompt": task.get("prompt") or "", "acceptance": task.get("acceptance") or "",
        "capabilities": ", ".join(str(v) for v in task.get("capabilities") or []),
        "files": "\n".join(str(v) for v in task.get("files") or []),
        "after": ", ".join(str(v) for v in task.get("after") or []),
        "estimate": [(point, "" if estimate.get(point) is None else estimate.get(point)) for point in ESTIMATE_POINTS],
        "findings": findings or [],
    }


def _attach(findings: list[dict], tasks: list[dict]) -> tuple[list, list]:
    """(rows, findings about the whole plan): each finding under the task its field indexes, else
    under each task whose key it names."""
    by_index = {index: [] for index in range(len(tasks))}
    keys = {task.get("key"): index for index, task in enumerate(tasks) if isinstance(task, dict)}
    general = []
    for finding in findings:
        match = FIELD_INDEX.match(finding.get("field") or "")
        targets = [int(match.group(1))] if match and int(match.group(1)) in by_index else \
            [keys[key] for key in finding.get("tasks") or [] if key in keys]
        for index in targets:
            by_index[index].append(finding)
        if not targets:
            general.append(finding)
    rows = [_row(task if isinstance(task, dict) else {}, index=index, findings=by_index[index])
            for index, task in enumerate(tasks)]
    return rows, general


def plan_context(session: CodingSession, *, is_operator: bool, submitted: dict | None = None,
                 findings: list | None = None, notice: str | None = None, notice_level: str = "error") -> dict:
    """What the plan partial shows: the current version (or, after a refused edit, the plan as
    submitted with its findings), the check's findings and adjustments, the graph's critical path
    and estimates, and whether an operator may act (the session waits in plan_review)."""
    view = plan_selectors.plan_view(session=session)
    current = view["plan"]
    shown = submitted if submitted is not None else (current["plan"] if current else None)
    tasks = list((shown or {}).get("tasks") or []) if isinstance(shown, dict) else []
    rows, general = _attach(list(findings or []), tasks)
    nodes = {node.get("key"): node for node in view["graph"]["nodes"] if node.get("key")}
    for row in rows:
        node = nodes.get(row["key"]) if submitted is None else None
        row["status"] = node.get("status") if node else None
        row["expected_hours"] = node["estimate"]["expected_hours"] if node else None
        row["critical"] = row["key"] in view["graph"]["critical_path_keys"] and submitted is None
    editable = bool(is_operator and view["waiting_for_review"] and current and current["status"] == "proposed")
    return {
        "session": session, "is_operator": is_operator, "plan_view": view, "current": current,
        "mode": view["planning"]["mode"],
        "summary": (shown or {}).get("summary", "") if isinstance(shown, dict) else "",
        "rows": rows, "new_row": _row({}, index=len(rows)), "row_count": len(rows) + 1,
        "general_findings": general, "refused": findings is not None,
        "critical_path": [key for key in view["graph"]["critical_path_keys"] if key],
        "waiting_for_review": view["waiting_for_review"], "editable": editable,
        "notice": notice, "notice_level": notice_level, "comment_max": planning.COMMENT_MAX,
    }


def plan_panel(request, session: CodingSession, *, is_operator: bool, tasks: list | None = None) -> str:
    """The panel as the monitor page embeds it. With the session's `tasks` (already read by the
    page) and none of them from a plan, there is no plan to show: no query is made for one (every
    stored plan version has made its tasks, and a session waits in review only on a stored one)."""
    if tasks is not None and not any(task.plan_key for task in tasks):
        context = {"session": session, "is_operator": is_operator, "current": None, "refused": False,
                   "mode": options_of(session.metadata).mode}
    else:
        context = plan_context(session, is_operator=is_operator)
    # Without the request: its context processors are the page's, already run once (a query each);
    # the forms need only the CSRF token.
    return render_to_string(PANEL, {**context, "csrf_token": get_token(request)})


def plan_fragment(*, session: CodingSession, is_operator: bool) -> str:
    """The panel for a WebSocket push (hx-swap-oob, no request: htmx sends the CSRF header); reads
    the database."""
    return render_to_string(PANEL, {**plan_context(session, is_operator=is_operator), "push_plan": True})
