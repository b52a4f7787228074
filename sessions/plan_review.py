"""Plan review on the session monitor: an operator's edit, approval or send-back (the views).

The panel they answer with is sessions/plan_panel.py's (one partial for the monitor page, the htmx
swap after an action and the WebSocket push on plan.* events). The edit form is plain
fields per task (key, title, prompt, capabilities, files, estimate, after, acceptance, remove) plus
one empty task to add, so it works without JavaScript. Every write goes through
sessions.planning.services (plan_replace, plan_approve, plan_revise), the services the API uses; a
refused edit is shown again as submitted, each finding beside the task it names.

Refusals: a viewer's POST is 403; an action while the session does not wait in plan_review is the
service's Conflict: 409 with the panel for htmx, a message on the monitor otherwise; a plan with
findings is 400 with the form and its findings (htmx or not).
"""

import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.roles import user_is_operator
from sessions import selectors, services
from sessions.models import CodingSession
from sessions.plan_panel import PAGE, PANEL, plan_context
from sessions.planning import selectors as plan_selectors
from sessions.planning import services as planning
from tasks.plans import ESTIMATE_POINTS, TASKS_MAX

LIST_SPLIT = re.compile(r"[\s,]+")
# Rows a form may post: every task of the largest plan, plus the empty one to add.
ROWS_MAX = TASKS_MAX + 1


# --- the form ------------------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    return [item for item in LIST_SPLIT.split(text or "") if item]


def _number(text: str):
    """A number when the field holds one; the text as typed otherwise (the check names it)."""
    text = (text or "").strip()
    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        return text


def plan_from_form(data) -> dict:
    """The plan JSON an edit form posted: its tasks in order, less those marked removed and the
    empty row left empty. Raises ValidationFailed when the row count is missing or out of bounds."""
    try:
        count = int(data.get("task_count", ""))
    except ValueError:
        raise ValidationFailed(field="task_count", rule="must be a whole number") from None
    if not 0 <= count <= ROWS_MAX:
        raise ValidationFailed(field="task_count", rule=f"must be between 0 and {ROWS_MAX}")
    tasks = []
    for index in range(count):
        def field(name, index=index):
            return data.get(f"tasks-{index}-{name}", "")

        if field("remove"):
            continue
        texts = {name: field(name).strip() for name in ("key", "title", "prompt", "acceptance")}
        lists = {name: field(name) for name in ("capabilities", "files", "after")}
        points = {point: field(f"estimate-{point}").strip() for point in ESTIMATE_POINTS}
        if not any(texts.values()) and not any(value.strip() for value in lists.values()) and not any(points.values()):
            continue  # the empty row to add a task, left empty
        task = {**{name: value for name, value in texts.items() if name != "acceptance"},
                "capabilities": _split(lists["capabilities"]),
                "files": [line.strip() for line in lists["files"].splitlines() if line.strip()],
                "after": _split(lists["after"]),
                "estimate_hours": {point: _number(value) for point, value in points.items()}}
        if texts["acceptance"]:
            task["acceptance"] = texts["acceptance"]
        tasks.append(task)
    return {"summary": data.get("summary", "").strip(), "tasks": tasks}


# --- the views -----------------------------------------------------------------------------------


def _visible(request, session_id: int, *, act: bool) -> CodingSession:
    """The session when the user may see it (404 otherwise); with `act`, only for operators (403)."""
    if act and not user_is_operator(request.user):
        raise PermissionDenied("Only operators can review plans")
    try:
        return selectors.session_get_for_user(request.user, session_id)
    except NotFound:
        raise Http404("No such session") from None


def _answer(request, session, *, notice, level, status, context=None):
    """htmx: the panel with the notice (the given status); a browser: back to the monitor with a message."""
    if request.htmx:
        context = context or plan_context(session, is_operator=True, notice=notice, notice_level=level)
        return render(request, PANEL, context, status=status)
    (messages.success if level == "success" else messages.error)(request, notice)
    return redirect("sessions:detail", session_id=session.pk)


@login_required
@require_GET
def session_plan(request, session_id):
    """The plan on a page of its own (the monitor shows the same panel)."""
    session = _visible(request, session_id, act=False)
    return render(request, PAGE, plan_context(session, is_operator=user_is_operator(request.user)))


@login_required
@require_POST
def session_plan_edit(request, session_id):
    """Replace the plan with the edited one (re-checked by plan_replace)."""
    session = _visible(request, session_id, act=True)
    actor = services.Actor.of_user(request.user)
    try:
        submitted = plan_from_form(request.POST)
        expected = request.POST.get("version", "")
        current = plan_selectors.plan_current(session=session)
        if current is not None and expected and expected != str(current.version):
            raise Conflict(f"The plan changed meanwhile (now version {current.version}); review it again",
                           details={"current_version": current.version, "submitted_version": expected})
        row = planning.plan_replace(session=session, plan=submitted, actor=actor)
    except planning.PlanRefused as refused:
        context = plan_context(session, is_operator=True, submitted=submitted,
                               findings=[finding.as_dict() for finding in refused.findings],
                               notice="The plan was not saved: fix the findings below", notice_level="error")
        return render(request, PANEL if request.htmx else PAGE, context, status=400)
    except ValidationFailed as invalid:
        return _answer(request, session, notice=invalid.message, level="error", status=400)
    except (Conflict, NotFound) as refused:
        return _answer(request, session, notice=refused.message, level="error", status=409)
    return _answer(request, session, notice=f"Plan saved as version {row.version} and checked", level="success",
                   status=200)


@login_required
@require_POST
def session_plan_approve(request, session_id):
    session = _visible(request, session_id, act=True)
    try:
        session = planning.plan_approve(session=session, actor=services.Actor.of_user(request.user))
    except (Conflict, NotFound) as refused:
        return _answer(request, session, notice=refused.message, level="error", status=409)
    return _answer(request, session, notice="Plan approved: the session runs it", level="success", status=200)


@login_required
@require_POST
def session_plan_revise(request, session_id):
    """Send the plan back to the planner with the operator's comment."""
    session = _visible(request, session_id, act=True)
    try:
        session = planning.plan_revise(session=session, comment=request.POST.get("comment", ""),
                                       actor=services.Actor.of_user(request.user))
    except ValidationFailed as invalid:
        return _answer(request, session, notice=invalid.message, level="error", status=400)
    except (Conflict, NotFound) as refused:
        return _answer(request, session, notice=refused.message, level="error", status=409)
    return _answer(request, session, notice="Plan sent back with your comment: the planner revises it",
                   level="success", status=200)
