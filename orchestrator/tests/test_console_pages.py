"""The console's fleet pages: the overview at /, the sessions list's filters and pages, the
approvals inbox and GET /api/v1/approvals, the agents page's current tasks, and a context's
diff between two versions."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from contexts import documents
from contexts.services import context_create, context_set
from orchestrator.testing import make_git_repository
from sessions import permissions, services
from sessions.models import CodingSession, PermissionRequest
from sessions.tests.factories import CodingSessionFactory
from tasks.tests.factories import AgentFactory, TaskFactory

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def ask(session, opencode_id, permission="bash", patterns=("make test",), task=None):
    return permissions.permission_request_record(
        session_id=session.pk, task_id=task.pk if task else None, opencode_session_id="ses_1",
        request={"id": opencode_id, "permission": permission, "patterns": list(patterns)},
    )


# --- overview --------------------------------------------------------------------------------


def test_home_is_the_overview_and_needs_a_signed_in_user(client, viewer_user):
    assert client.get("/").status_code == 302
    client.force_login(viewer_user)
    response = client.get("/")
    assert response.status_code == 200 and "<title>Overview" in response.content.decode()


def test_overview_shows_counts_running_work_queue_approvals_and_failures(
    client, viewer_user, django_assert_max_num_queries
):
    agent = AgentFactory(name="AGENT-BUSY", current_load=2, max_concurrent_tasks=4)
    running = CodingSessionFactory(status="running", title="Port the scheduler")
    TaskFactory(session=running, title="Rewrite the cron parser", status="in_progress", assigned_agent=agent)
    CodingSessionFactory(status="queued", priority=0)
    CodingSessionFactory(status="queued", priority=0)
    failed = CodingSessionFactory(status="failed", error={"type": "provider_error", "message": "rate limited"})
    ask(running, "per_1")
    client.force_login(viewer_user)
    # session, user, role, then one query per part of the overview (11) and the newest event id.
    with django_assert_max_num_queries(14):
        body = client.get("/").content.decode()
    assert (
        f'href="{reverse("sessions:list")}?status=queued" id="count-queued" class="badge status-queued" data-count="2"'
        in body
    )
    assert running.reference in body and "Rewrite the cron parser" in body and "AGENT-BUSY" in body
    assert "<strong>1</strong> pending approval" in body
    assert "provider_error: rate limited" in body and failed.reference in body
    assert "width: 50%" in body  # AGENT-BUSY's load bar
    assert '<td><a href="/sessions/?status=queued&amp;priority=0">Critical</a></td><td>2</td>' in body


def test_overview_names_the_limit_holding_queued_sessions(client, viewer_user, settings):
    settings.SESSION_LIMIT_GLOBAL = 1
    CodingSessionFactory(status="running")
    CodingSessionFactory(status="queued")
    client.force_login(viewer_user)
    body = client.get("/").content.decode()
    assert "global limit of 1 running sessions: 1 session" in body


# --- sessions list ---------------------------------------------------------------------------


def test_list_filters_by_type_priority_agent_repository_tag_and_text(client, viewer_user):
    agent = AgentFactory(name="AGENT-FILTER")
    wanted = CodingSessionFactory(
        status="running", session_type="review", priority=1, agent=agent, repository="/srv/repos/api",
        tags=["backend"], title="Review the payments module",
    )
    others = [
        CodingSessionFactory(
            session_type="debug", priority=1, agent=agent, repository="/srv/repos/api", tags=["backend"]
        ),
        CodingSessionFactory(
            session_type="review", priority=3, agent=agent, repository="/srv/repos/api", tags=["backend"]
        ),
        CodingSessionFactory(session_type="review", priority=1, repository="/srv/repos/api", tags=["backend"]),
        CodingSessionFactory(
            session_type="review", priority=1, agent=agent, repository="/srv/repos/web", tags=["backend"]
        ),
        CodingSessionFactory(session_type="review", priority=1, agent=agent, repository="/srv/repos/api", tags=["ui"]),
    ]
    client.force_login(viewer_user)
    query = {"session_type": "review", "priority": "1", "agent": agent.pk, "repository": "/srv/repos/api",
             "tag": "backend", "search": "payments"}
    body = client.get(reverse("sessions:list"), query).content.decode()
    assert f'id="session-row-{wanted.pk}"' in body
    assert not [other for other in others if f'id="session-row-{other.pk}"' in body]
    # The form keeps what was chosen.
    assert f'<option value="{agent.pk}" selected>' in body and 'value="payments"' in body


def test_list_pages_with_a_cursor_and_keeps_the_filters(client, viewer_user):
    sessions = [CodingSessionFactory(status="queued") for _ in range(3)]
    client.force_login(viewer_user)
    first = client.get(reverse("sessions:list"), {"status": "queued", "page_size": 2}).content.decode()
    assert f'session-row-{sessions[2].pk}"' in first and f'session-row-{sessions[0].pk}"' not in first
    assert f'?status=queued&amp;page_size=2&amp;cursor={sessions[1].pk}' in first
    second = client.get(reverse("sessions:list"), {"status": "queued", "page_size": 2, "cursor": sessions[1].pk})
    body = second.content.decode()
    assert f'session-row-{sessions[0].pk}"' in body and f'session-row-{sessions[1].pk}"' not in body
    assert "← Newest" in body and "Older sessions" not in body


def test_list_shows_a_bad_filter_as_an_error_not_a_500(client, viewer_user):
    client.force_login(viewer_user)
    response = client.get(reverse("sessions:list"), {"status": "sleeping"})
    assert response.status_code == 400 and "unknown status sleeping" in response.content.decode()


# --- new session --------------------------------------------------------------------------------


def test_new_session_takes_budgets_concurrency_and_a_policy_per_tool(client, operator_user, tmp_path, settings):
    settings.REPOSITORY_ROOTS = [tmp_path]
    make_git_repository(tmp_path / "demo")
    client.force_login(operator_user)
    response = client.post(reverse("sessions:create"), {
        "title": "Add a changelog", "initial_prompt": "Write CHANGELOG.md", "repository_choice": str(tmp_path / "demo"),
        "session_type": "execution", "priority": "2", "task_concurrency": "3", "max_duration_seconds": "900",
        "token_budget_soft": "1000", "token_budget_hard": "5000", "cost_budget_soft": "0.5", "cost_budget_hard": "2",
        "bash_permission": "ask", "edit_permission": "allow",
    })
    session = CodingSession.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("sessions:detail", args=[session.pk])
    assert session.repository == str(tmp_path / "demo") and session.status == "pending"
    assert (session.token_budget_soft, session.token_budget_hard) == (1000, 5000)
    assert (str(session.cost_budget_soft), str(session.cost_budget_hard)) == ("0.5000", "2.0000")
    assert session.metadata["task_concurrency"] == 3 and session.max_duration_seconds == 900
    assert session.metadata["planning"]["task_concurrency"] == 3
    assert session.permission_policy == {"bash": "ask", "edit": "allow"}


def test_new_session_shows_each_error_next_to_its_field(client, operator_user, tmp_path, settings):
    settings.REPOSITORY_ROOTS = [tmp_path]
    client.force_login(operator_user)
    response = client.post(reverse("sessions:create"), {
        "title": "Add a changelog", "initial_prompt": "Write it", "repository_choice": "/etc",
        "task_concurrency": "99", "token_budget_soft": "9", "token_budget_hard": "5", "priority": "2",
    }, **HTMX)
    body = response.content.decode()
    assert response.status_code == 200 and 'role="alert"' in body
    assert 'data-field="repository_choice"' in body and "Select a valid choice" in body
    assert 'data-field="task_concurrency"' in body and "less than or equal to 16" in body
    assert not CodingSession.objects.exists()
    # The service's own rules come back next to their fields too.
    response = client.post(
        reverse("sessions:create"),
        {
            "title": "Add a changelog",
            "initial_prompt": "Write it",
            "repository": str(make_git_repository(tmp_path / "x")),
            "token_budget_soft": "9",
            "token_budget_hard": "5",
            "priority": "2",
        },
        **HTMX,
    )
    body = response.content.decode()
    assert 'data-field="token_budget_soft"' in body and "must not exceed token_budget_hard" in body


# --- approvals inbox ---------------------------------------------------------------------------


def test_inbox_lists_pending_requests_oldest_first_with_time_left(client, viewer_user, settings):
    settings.PERMISSION_TIMEOUT_SECONDS = 300
    agent = AgentFactory(name="AGENT-ASKER")
    first = CodingSessionFactory(status="running", title="Upgrade the ORM")
    second = CodingSessionFactory(status="running")
    task = TaskFactory(session=second, title="Bump the driver", assigned_agent=agent, status="in_progress")
    older = ask(first, "per_a", patterns=["rm -rf build"])
    PermissionRequest.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(seconds=200))
    newer = ask(second, "per_b", permission="edit", patterns=["src/db.py"], task=task)
    answered = ask(second, "per_c")
    permissions.permission_request_reply(session=second, request_id=answered.pk, reply="once", actor=None)
    client.force_login(viewer_user)
    body = client.get(reverse("approvals:inbox")).content.decode()
    assert body.index(f'id="approval-{older.pk}"') < body.index(f'id="approval-{newer.pk}"')
    assert f'id="approval-{answered.pk}"' not in body
    assert "rm -rf build" in body and "Bump the driver" in body and "AGENT-ASKER" in body
    assert "100 s left" in body or "99 s left" in body
    # A viewer reads; only operators get the buttons.
    assert reverse("approvals:reply", args=[older.pk]) not in body
    assert 'id="nav-approvals" class="count pending" aria-label="2 pending">2<' in body


def test_operator_answers_from_the_inbox_through_the_service(client, operator_user):
    session = CodingSessionFactory(status="running")
    first, second = ask(session, "per_1"), ask(session, "per_2")
    client.force_login(operator_user)
    page = client.get(reverse("approvals:inbox")).content.decode()
    assert reverse("approvals:reply", args=[first.pk]) in page and 'value="always"' in page
    body = client.post(reverse("approvals:reply", args=[first.pk]), {"reply": "always"}, **HTMX).content.decode()
    first.refresh_from_db()
    assert (first.status, first.reply, first.answered_by) == ("answered", "always", operator_user)
    assert session.events.filter(type="permission.answered").count() == 1
    assert f'id="approval-{first.pk}"' not in body and f'id="approval-{second.pk}"' in body
    assert "Always allow" in body
    # Answering again is refused with the reason, never a 500.
    again = client.post(reverse("approvals:reply", args=[first.pk]), {"reply": "reject"}, **HTMX).content.decode()
    assert "already answered" in again
    # Without htmx: redirected back to the inbox.
    response = client.post(reverse("approvals:reply", args=[second.pk]), {"reply": "reject"})
    assert response.status_code == 302 and response["Location"] == reverse("approvals:inbox")


def test_viewer_cannot_answer_by_a_forged_post(client, viewer_user):
    session = CodingSessionFactory(status="running")
    request = ask(session, "per_1")
    client.force_login(viewer_user)
    assert client.post(reverse("approvals:reply", args=[request.pk]), {"reply": "once"}).status_code == 403
    request.refresh_from_db()
    assert request.status == "pending"


def test_api_lists_pending_approvals_filtered_and_paginated(api_client):
    agent = AgentFactory(name="AGENT-API")
    one = CodingSessionFactory(status="running", repository="/srv/repos/a")
    two = CodingSessionFactory(status="running", repository="/srv/repos/b")
    task = TaskFactory(session=two, assigned_agent=agent, status="in_progress")
    requests = [ask(one, "p1"), ask(two, "p2", permission="edit", task=task), ask(two, "p3")]
    body = api_client.get("/api/v1/approvals", {"page_size": 2}).json()
    assert [item["id"] for item in body["results"]] == [requests[0].pk, requests[1].pk]
    assert body["results"][1]["session"]["reference"] == two.reference
    assert body["results"][1]["agent"] == {"id": agent.pk, "name": "AGENT-API"}
    assert 0 < body["results"][0]["seconds_left"] <= 300
    rest = api_client.get("/api/v1/approvals", {"page_size": 2, "cursor": body["next_cursor"]}).json()
    assert [item["id"] for item in rest["results"]] == [requests[2].pk] and rest["next_cursor"] is None
    assert [i["id"] for i in api_client.get("/api/v1/approvals", {"permission": "edit"}).json()["results"]] == [
        requests[1].pk
    ]
    assert [i["id"] for i in api_client.get("/api/v1/approvals", {"agent": agent.pk}).json()["results"]] == [
        requests[1].pk
    ]
    by_repository = api_client.get("/api/v1/approvals", {"repository": "/srv/repos/a"}).json()["results"]
    assert [i["id"] for i in by_repository] == [requests[0].pk]
    by_session = api_client.get("/api/v1/approvals", {"session": two.pk}).json()["results"]
    assert [i["id"] for i in by_session] == [requests[1].pk, requests[2].pk]


@pytest.mark.parametrize(("params", "field", "rule"), [
    ({"page_size": "0"}, "page_size", "must be at least 1"),
    ({"page_size": "101"}, "page_size", "must be at most 100"),
    ({"cursor": "x"}, "cursor", "must be an integer"),
    ({"session": "-3"}, "session", "must be at least 1"),
    ({"permission": "no spaces"}, "permission", "must be a tool name"),
])
def test_api_approvals_refuses_bad_input_with_the_error_shape(api_client, params, field, rule):
    response = api_client.get("/api/v1/approvals", params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error" and rule in error["details"][field][0]


def test_api_approvals_needs_a_signed_in_user(anonymous_client):
    response = anonymous_client.get("/api/v1/approvals")
    assert response.status_code in (401, 403) and "error" in response.json()


# --- agents -------------------------------------------------------------------------------------


def test_agents_page_shows_each_agents_current_tasks(client, viewer_user):
    agent = AgentFactory(name="AGENT-WORKING", current_load=1)
    session = CodingSessionFactory(status="running")
    root = TaskFactory(session=session, title="Draw the schema", assigned_agent=agent, status="in_progress")
    TaskFactory(session=session, parent=root, title="Finished work", assigned_agent=agent, status="completed")
    client.force_login(viewer_user)
    body = client.get(reverse("agents:list")).content.decode()
    row = body[body.index(f'id="agent-{agent.pk}"'):]
    row = row[: row.index("</tr>")]
    assert "Draw the schema" in row and session.reference in row and "Finished work" not in row


# --- contexts -----------------------------------------------------------------------------------


def test_context_page_diffs_any_two_versions(client, viewer_user):
    context = context_create(scope="global", name="team", data={"model": "a", "limits": {"tokens": 10}})
    context = context_set(context=context, changes={"model": "b"}, expected_version=1, actor=None)
    context = context_set(context=context, changes={"limits.tokens": 20, "owner": "ops"}, expected_version=2,
                          actor=None)
    context = context_set(context=context, changes={"model": documents.DELETE}, expected_version=3, actor=None)
    client.force_login(viewer_user)
    url = reverse("contexts:detail", args=[context.pk])
    body = client.get(url, {"from": 1, "to": 4}).content.decode()
    table = body[body.index('class="diff-table"'):body.index("</table>", body.index('class="diff-table"'))]
    assert '<tr class="removed-row"><td><code>model</code></td><td>removed</td><td>&quot;a&quot;</td>' in table
    assert '<tr class="changed-row"><td><code>limits.tokens</code></td><td>changed</td><td>10</td><td>20</td>' in table
    assert '<tr class="added-row"><td><code>owner</code></td><td>added</td><td></td><td>&quot;ops&quot;</td>' in table
    middle = client.get(url, {"from": 2, "to": 3}).content.decode()
    assert "<code>model</code>" not in middle[middle.index("diff-title"):middle.index("<h2>History")]
    bad = client.get(url, {"from": 9}).content.decode()
    assert "version: must be between 1 and 4" in bad


def test_api_approvals_answers_with_a_trailing_slash_and_is_listed_at_the_root(api_client):
    assert api_client.get("/api/v1/approvals/").status_code == 200
    assert api_client.get("/api/v1/").json()["approvals"].endswith("/api/v1/approvals")
    refused = api_client.post("/api/v1/approvals", {}, format="json")
    assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"


def test_overview_shows_a_stalled_session_with_the_reason_it_degraded(client, viewer_user):
    session = CodingSessionFactory(status="running")
    services.session_degrade(session=session, reason="no OpenCode events for 120 s")
    client.force_login(viewer_user)
    body = client.get("/").content.decode()
    assert '<span class="badge status-degraded">degraded</span> no OpenCode events for 120 s' in body
