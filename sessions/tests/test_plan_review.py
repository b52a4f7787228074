"""Plan review on the session monitor (sessions/plan_review.py) through Django's test client: the
panel, an operator's edit (re-checked by plan_replace, findings inline by task), approval, send-back,
and the refusals (a viewer's forged POST, the wrong state), with htmx and without JavaScript."""

import pytest
from django.urls import reverse

from sessions import services
from sessions.models import CodingSession, SessionEvent
from sessions.planning import services as planning
from sessions.services import Actor
from tasks.models import PlanStatus, SessionPlan, TaskDependency

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
POINTS = ("optimistic", "likely", "pessimistic")


def task(key, *, after=(), files=(), capabilities=("code_generation",), hours=(0.5, 1, 2), **extra):
    return {"key": key, "title": f"Do {key}", "prompt": f"Implement {key}.", "capabilities": list(capabilities),
            "files": list(files), "estimate_hours": dict(zip(POINTS, hours, strict=True)),
            "after": list(after), **extra}


BOOKS = {"summary": "Books in three steps", "tasks": [
    task("schema", files=["books/models.py"], capabilities=["system_design"], hours=(1, 2, 3)),
    task("api", after=["schema"], files=["books/api.py"], acceptance="python -m pytest books -q"),
    task("docs", files=["docs/books.md"], capabilities=["documentation"], hours=(0.25, 0.5, 1)),
]}


def in_review(user, body=BOOKS):
    """A session with a proposed plan, claimed by a worker and paused in plan_review."""
    session = planning.session_create_planned(
        actor=Actor.of_user(user), planning={"mode": "template", "plan_approval": "required"}, plan=body,
        title="Add books", initial_prompt="Add books.", repository="/srv/repos/library")
    services.session_start(session=session, immediate=True, worker_id="worker-1")
    planning.plan_await_review(session=CodingSession.objects.get(pk=session.pk), actor=Actor.worker("worker-1"))
    return CodingSession.objects.get(pk=session.pk)


def form_of(plan, *, version, extra_row=None, remove=()):
    """The POST an operator's browser sends for `plan` (the edit form's fields), one empty row to add."""
    data = {"version": str(version), "summary": plan["summary"], "task_count": str(len(plan["tasks"]) + 1)}
    rows = list(plan["tasks"]) + [extra_row or {}]
    for index, row in enumerate(rows):
        prefix = f"tasks-{index}-"
        estimate = row.get("estimate_hours") or {}
        data.update({
            prefix + "key": row.get("key", ""), prefix + "title": row.get("title", ""),
            prefix + "prompt": row.get("prompt", ""), prefix + "acceptance": row.get("acceptance", ""),
            prefix + "capabilities": ", ".join(row.get("capabilities") or []),
            prefix + "files": "\n".join(row.get("files") or []), prefix + "after": ", ".join(row.get("after") or []),
            **{f"{prefix}estimate-{point}": str(estimate.get(point, "")) for point in POINTS},
        })
        if row.get("key") in remove:
            data[prefix + "remove"] = "1"
    return data


def edges(session):
    return sorted(TaskDependency.objects.filter(dependent__session=session)
                  .values_list("prerequisite__plan_key", "dependent__plan_key"))


def url(name, session):
    return reverse(f"sessions:{name}", args=[session.pk])


def test_the_monitor_shows_the_plan_its_tasks_and_critical_path_and_operators_get_the_form(
        client, operator_user, viewer_user):
    session = in_review(operator_user)
    client.force_login(viewer_user)
    page = client.get(url("detail", session)).content.decode()
    assert 'id="session-plan"' in page and "Books in three steps" in page and "version 1" in page
    assert 'id="plan-task-schema"' in page and "python -m pytest books -q" in page and "system_design" in page
    assert "Critical path:" in page and "<code>schema</code> → <code>api</code>" in page
    assert "plan_review" in page
    assert url("plan-edit", session) not in page and url("plan-approve", session) not in page
    client.force_login(operator_user)
    page = client.get(url("detail", session)).content.decode()
    assert f'action="{url("plan-edit", session)}"' in page and f'action="{url("plan-approve", session)}"' in page
    assert '<label for="tasks-1-after">' in page and 'value="schema"' in page
    # The same panel on a page of its own.
    assert 'id="session-plan"' in client.get(url("plan", session)).content.decode()


def test_an_operator_removes_a_task_adds_one_and_a_dependency_and_the_edit_is_rechecked(client, operator_user):
    session = in_review(operator_user)
    client.force_login(operator_user)
    edited = {"summary": "Books, tested", "tasks": [
        BOOKS["tasks"][0], BOOKS["tasks"][1], {**BOOKS["tasks"][2], "after": ["api"]}]}
    added = task("tests", after=["api"], files=["books/tests/"], capabilities=["test_generation"])
    response = client.post(url("plan-edit", session), form_of(edited, version=1, extra_row=added, remove=("docs",)),
                           **HTMX)
    assert response.status_code == 200, response.content.decode()
    body = response.content.decode()
    assert "Plan saved as version 2" in body and 'id="session-plan"' in body
    current = SessionPlan.objects.get(session=session, version=2)
    assert current.status == PlanStatus.PROPOSED and current.source == "api"
    assert [t["key"] for t in current.submitted["tasks"]] == ["schema", "api", "tests"]
    assert current.submitted["summary"] == "Books, tested"
    assert SessionPlan.objects.get(session=session, version=1).status == PlanStatus.SUPERSEDED
    assert edges(session) == [("api", "tests"), ("schema", "api")]
    assert SessionEvent.objects.filter(session=session, type="plan.proposed").count() == 2


def test_a_plan_with_findings_is_not_saved_and_each_finding_shows_beside_its_task(client, operator_user):
    session = in_review(operator_user)
    client.force_login(operator_user)
    broken = {"summary": "x", "tasks": [BOOKS["tasks"][0], {**BOOKS["tasks"][1], "after": ["nowhere"]},
                                        {**BOOKS["tasks"][2], "estimate_hours": {"optimistic": "soon", "likely": 1,
                                                                                 "pessimistic": 2}}]}
    for headers in (HTMX, {}):
        response = client.post(url("plan-edit", session), form_of(broken, version=1), **headers)
        assert response.status_code == 400
        body = response.content.decode()
        assert "The plan was not saved" in body
        # Each finding inside the fieldset of the task it names, as submitted.
        api_row = body[body.index('id="plan-row-1"'):body.index('id="plan-row-2"')]
        assert "nowhere" in api_row and 'value="nowhere"' in api_row
        docs_row = body[body.index('id="plan-row-2"'):body.index('id="plan-row-3"')]
        assert "invalid_estimate" in docs_row and 'value="soon"' in docs_row
    assert SessionPlan.objects.filter(session=session).count() == 1


def test_an_operator_approves_and_the_session_resumes(client, operator_user):
    session = in_review(operator_user)
    client.force_login(operator_user)
    response = client.post(url("plan-approve", session), **HTMX)
    assert response.status_code == 200 and "Plan approved" in response.content.decode()
    session.refresh_from_db()
    assert session.status == "queued" and "paused_reason" not in session.metadata
    assert SessionPlan.objects.get(session=session).status == PlanStatus.APPROVED
    # Without JavaScript: a redirect to the monitor, which says it.
    again = in_review(operator_user)
    response = client.post(url("plan-approve", again), follow=True)
    assert response.redirect_chain[-1][0] == url("detail", again) and "Plan approved" in response.content.decode()


def test_an_operator_sends_the_plan_back_with_a_comment_and_a_comment_is_required(client, operator_user):
    session = in_review(operator_user)
    client.force_login(operator_user)
    refused = client.post(url("plan-revise", session), {"comment": "  "}, **HTMX)
    assert refused.status_code == 400 and "comment: is required" in refused.content.decode()
    response = client.post(url("plan-revise", session), {"comment": "Split the api task"}, **HTMX)
    assert response.status_code == 200 and "Plan sent back" in response.content.decode()
    row = SessionPlan.objects.get(session=session)
    assert (row.status, row.comment, row.revision_requested) == (PlanStatus.SENT_BACK, "Split the api task", True)
    assert "Split the api task" in response.content.decode()


def test_a_viewers_forged_posts_are_refused_with_403(client, operator_user, viewer_user):
    session = in_review(operator_user)
    client.force_login(viewer_user)
    for name, data in (("plan-edit", form_of(BOOKS, version=1)), ("plan-approve", {}),
                       ("plan-revise", {"comment": "no"})):
        assert client.post(url(name, session), data, **HTMX).status_code == 403
        assert client.post(url(name, session), data).status_code == 403
    assert SessionPlan.objects.get(session=session).status == PlanStatus.PROPOSED


def test_actions_outside_plan_review_are_refused_409_for_htmx_and_shown_on_the_monitor(client, operator_user):
    session = in_review(operator_user)
    client.force_login(operator_user)
    assert client.post(url("plan-approve", session), **HTMX).status_code == 200  # now queued, not in review
    for name, data in (("plan-edit", form_of(BOOKS, version=1)), ("plan-approve", {}),
                       ("plan-revise", {"comment": "late"})):
        response = client.post(url(name, session), data, **HTMX)
        assert response.status_code == 409
        assert "plan_review" in response.content.decode() and 'id="session-plan"' in response.content.decode()
        page = client.post(url(name, session), data, follow=True)
        assert page.redirect_chain[-1][0] == url("detail", session)
        assert "only while the session waits in plan_review" in page.content.decode()
    # The form is gone once the plan is approved.
    assert url("plan-edit", session) not in client.get(url("detail", session)).content.decode()


def test_an_edit_of_a_version_replaced_meanwhile_is_refused(client, operator_user):
    session = in_review(operator_user)
    planning.plan_replace(session=session, plan=BOOKS, actor=Actor.of_user(operator_user))
    client.force_login(operator_user)
    response = client.post(url("plan-edit", session), form_of(BOOKS, version=1), **HTMX)
    assert response.status_code == 409 and "changed meanwhile" in response.content.decode()
    assert SessionPlan.objects.filter(session=session).count() == 2


def test_a_form_with_a_bad_row_count_is_a_400(client, operator_user):
    session = in_review(operator_user)
    client.force_login(operator_user)
    for count in ("many", "-1", "1000"):
        response = client.post(url("plan-edit", session), {"task_count": count, "version": "1"}, **HTMX)
        assert response.status_code == 400 and "task_count" in response.content.decode()


def test_plan_events_push_the_panel(operator_user):
    from sessions.monitor import live_fragment

    session = in_review(operator_user)
    event = SessionEvent.objects.filter(session=session, type="plan.proposed").latest("id")
    html = live_fragment(session_id=session.pk, event={"id": event.pk, "type": event.type, "payload": event.payload,
                                                       "created_at": event.created_at}, is_operator=False)
    assert 'id="session-plan" hx-swap-oob="outerHTML"' in html and "Books in three steps" in html
    assert url("plan-edit", session) not in html  # a viewer gets no form


def test_the_forms_on_the_monitor_work_without_javascript_under_csrf_checks(operator_user):
    from django.test import Client

    session = in_review(operator_user)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(operator_user)
    page = browser.get(url("detail", session)).content.decode()
    marker = 'name="csrfmiddlewaretoken" value="'
    start = page.index(marker, page.index('id="session-plan"')) + len(marker)
    token = page[start:page.index('"', start)]
    response = browser.post(url("plan-approve", session), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert SessionPlan.objects.get(session=session).status == PlanStatus.APPROVED


@pytest.mark.django_db(transaction=True)
def test_a_plan_saved_elsewhere_is_pushed_to_the_monitors_watchers(operator_user, viewer_user):
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from orchestrator.asgi import application
    from orchestrator.testing import api_token
    from sessions.tests.test_monitor_live import TIMEOUT, run

    session = in_review(operator_user)
    token = api_token(viewer_user)
    edited = {"summary": "Pushed summary", "tasks": BOOKS["tasks"][:2]}

    async def scenario():
        watcher = WebsocketCommunicator(application, f"/ws/console/sessions/{session.pk}?token={token.key}")
        assert (await watcher.connect(timeout=TIMEOUT))[0]
        await database_sync_to_async(planning.plan_replace)(session=session, plan=edited,
                                                             actor=Actor.of_user(operator_user))
        frames = []
        while not any('id="session-plan"' in frame for frame in frames):
            frames.append(await watcher.receive_from(timeout=TIMEOUT))
        await watcher.disconnect()
        return "".join(frames)

    pushed = run(scenario)
    panel = pushed[pushed.index('id="session-plan"') - 40:]
    assert 'hx-swap-oob="outerHTML"' in panel and "Pushed summary" in panel and "version 2" in panel
    assert url("plan-edit", session) not in panel  # pushed to a viewer: no form
