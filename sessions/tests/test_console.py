"""The sessions console: the "New session" form, operator actions, permission answers,
the detail page's panels and the HTML WebSocket feed."""


from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.urls import reverse

from orchestrator.asgi import application
from orchestrator.testing import api_token
from orchestrator.testing import record_event as record
from orchestrator.testing import run_socket_scenario as run
from sessions import permissions, services, views
from sessions.models import CodingSession, PermissionRequest
from sessions.tests.factories import CodingSessionFactory
from tasks.tests.factories import TaskFactory

HTMX = {"HTTP_HX_REQUEST": "true"}
CONSOLE_REPOSITORY = Path(settings.REPOSITORY_ROOTS[0]) / "api"


@pytest.fixture(autouse=True)
def console_repository():
    """The form checks the repository (sessions.repositories): it must be a real one."""
    from orchestrator.testing import make_git_repository

    if not (CONSOLE_REPOSITORY / ".git").exists():
        make_git_repository(CONSOLE_REPOSITORY)
TIMEOUT = 15


def form_data(**changes):
    data = {
        "title": "Add a health endpoint to the API",
        "initial_prompt": "Add GET /health returning {\"ok\": true}; cover it with a test.",
        "repository": str(CONSOLE_REPOSITORY),
        "priority": "1",
        "max_duration_seconds": "1800",
        "bash_permission": "ask",
        "start": "on",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def action_url(session, action):
    return reverse("sessions:action", args=[session.pk, action])


# --- the new-session form ------------------------------------------------------------------


@pytest.mark.django_db
def test_form_creates_and_starts_a_queued_session(
    client, operator_user, broker_queues, django_capture_on_commit_callbacks
):
    client.force_login(operator_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("sessions:create"), form_data())
    session = CodingSession.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("sessions:detail", args=[session.pk])
    assert session.reference == f"IND-{session.pk:06d}"
    assert (session.status, session.priority, session.max_duration_seconds) == ("queued", 1, 1800)
    assert session.permission_policy == {"bash": "ask"} and session.created_by == operator_user
    jobs = broker_queues.drain()
    assert [(job["queue"], job["kwargs"]) for job in jobs] == [(broker_queues.names[1], {"session_id": session.pk})]


@pytest.mark.django_db
def test_form_without_start_leaves_the_session_pending_and_htmx_is_sent_to_its_page(client, operator_user):
    client.force_login(operator_user)
    response = client.post(reverse("sessions:create"), form_data(start=None, bash_permission=""), **HTMX)
    session = CodingSession.objects.get()
    assert session.status == "pending" and session.permission_policy == {}
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("sessions:detail", args=[session.pk])


@pytest.mark.django_db
def test_form_prefills_the_first_repository_under_the_allowed_root(client, operator_user, settings, tmp_path):
    (tmp_path / "zeta").mkdir()
    (tmp_path / "demo").mkdir()
    settings.REPOSITORY_ROOTS = [tmp_path]
    client.force_login(operator_user)
    body = client.get(reverse("sessions:create")).content.decode()
    assert f'<option value="{tmp_path / "demo"}" selected>' in body
    assert f'<option value="{tmp_path / "zeta"}">' in body
    assert 'name="start"' in body and "checked" in body


@pytest.mark.django_db
def test_validation_errors_render_next_to_their_fields_and_nothing_is_written(client, operator_user):
    client.force_login(operator_user)
    response = client.post(
        reverse("sessions:create"),
        form_data(title="Untitled", initial_prompt="", max_duration_seconds="30"),
        **HTMX,
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert 'data-field="title"' in body and "is too generic: name what the session does" in body
    assert 'data-field="initial_prompt"' in body and "is required (1-100000 characters)" in body
    assert 'data-field="max_duration_seconds"' in body and "must be between 60 and 86400" in body
    # The partial keeps what was typed.
    assert "Add GET /health" not in body and 'value="Untitled"' in body
    assert not CodingSession.objects.exists()


@pytest.mark.django_db
def test_validation_errors_without_htmx_rerender_the_new_session_page(client, operator_user):
    client.force_login(operator_user)
    response = client.post(reverse("sessions:create"), form_data(bash_permission="sometimes"))
    assert response.status_code == 400
    body = response.content.decode()
    assert "<title>New session" in body and 'data-field="bash_permission"' in body
    assert not CodingSession.objects.exists()


@pytest.mark.django_db
def test_viewer_sees_no_form_and_cannot_post_one(client, viewer_user):
    client.force_login(viewer_user)
    page = client.get(reverse("sessions:list")).content.decode()
    assert "New session" not in page and reverse("sessions:create") not in page
    assert client.get(reverse("sessions:create")).status_code == 403
    assert client.post(reverse("sessions:create"), form_data()).status_code == 403
    assert not CodingSession.objects.exists()


# --- operator actions ------------------------------------------------------------------------


@pytest.mark.django_db
def test_pause_of_a_pending_session_shows_the_refusal(client, operator_user):
    client.force_login(operator_user)
    session = CodingSessionFactory(status="pending")
    response = client.post(action_url(session, "pause"), **HTMX)
    body = response.content.decode()
    assert response.status_code == 200
    assert "Cannot pause a session that is pending" in body and 'id="session-header"' in body
    assert CodingSession.objects.get(pk=session.pk).status == "pending"


@pytest.mark.django_db
def test_refusal_without_htmx_is_a_message_on_the_detail_page(client, operator_user):
    client.force_login(operator_user)
    session = CodingSessionFactory(status="completed")
    response = client.post(action_url(session, "retry"), follow=True)
    assert response.status_code == 200
    assert "Cannot retry a session that is completed" in response.content.decode()


@pytest.mark.django_db
def test_cancel_of_a_queued_session_cancels_it(client, operator_user):
    client.force_login(operator_user)
    session = CodingSessionFactory(status="queued")
    body = client.post(action_url(session, "cancel"), **HTMX).content.decode()
    assert CodingSession.objects.get(pk=session.pk).status == "cancelled"
    assert "status-cancelled" in body
    # A cancelled session is terminal: no action buttons remain.
    assert f"sessions/{session.pk}/actions/" not in body


@pytest.mark.django_db
def test_retry_then_starts_the_session(client, operator_user, broker_queues, django_capture_on_commit_callbacks):
    client.force_login(operator_user)
    session = CodingSessionFactory(status="failed")
    with django_capture_on_commit_callbacks(execute=True):
        client.post(action_url(session, "retry"), **HTMX)
    session.refresh_from_db()
    assert (session.status, session.retry_count) == ("queued", 1)
    assert [job["kwargs"] for job in broker_queues.drain()] == [{"session_id": session.pk}]


@pytest.mark.django_db
def test_only_allowed_actions_have_buttons_and_viewers_get_none(client, operator_user, viewer_user):
    session = CodingSessionFactory(status="running")
    client.force_login(operator_user)
    body = client.get(reverse("sessions:detail", args=[session.pk])).content.decode()
    for action in ("pause", "stop"):
        assert action_url(session, action) in body
    for action in ("start", "resume", "cancel", "retry"):
        assert action_url(session, action) not in body
    client.force_login(viewer_user)
    body = client.get(reverse("sessions:detail", args=[session.pk])).content.decode()
    assert "/actions/" not in body
    assert client.post(action_url(session, "pause")).status_code == 403
    assert CodingSession.objects.get(pk=session.pk).status == "running"


# --- permission requests -----------------------------------------------------------------------


def ask(session, opencode_id="per_1", permission="bash", patterns=("rm -rf build",)):
    return permissions.permission_request_record(
        session_id=session.pk, task_id=None, opencode_session_id="ses_1",
        request={"id": opencode_id, "permission": permission, "patterns": list(patterns)},
    )


@pytest.mark.django_db
def test_approve_writes_the_answer_and_refreshes_the_panel(client, operator_user):
    client.force_login(operator_user)
    session = CodingSessionFactory(status="degraded")
    request = ask(session)
    page = client.get(reverse("sessions:detail", args=[session.pk])).content.decode()
    reply_url = reverse("sessions:permission-reply", args=[session.pk, request.pk])
    assert reply_url in page and "rm -rf build" in page
    body = client.post(reply_url, {"reply": "once"}, **HTMX).content.decode()
    request.refresh_from_db()
    assert (request.status, request.reply, request.answered_by) == ("answered", "once", operator_user)
    assert "Nothing waiting for an answer" in body and session.events.filter(type="permission.answered").exists()
    # A second answer is refused with the service's message, not an error page.
    again = client.post(reply_url, {"reply": "reject"}, **HTMX)
    assert again.status_code == 200 and "already answered" in again.content.decode()


@pytest.mark.django_db
def test_viewer_cannot_answer_a_permission_request(client, viewer_user):
    client.force_login(viewer_user)
    session = CodingSessionFactory(status="degraded")
    request = ask(session)
    page = client.get(reverse("sessions:permissions", args=[session.pk])).content.decode()
    assert "rm -rf build" in page and "Approve once" not in page
    reply_url = reverse("sessions:permission-reply", args=[session.pk, request.pk])
    assert client.post(reply_url, {"reply": "always"}).status_code == 403
    assert PermissionRequest.objects.get(pk=request.pk).status == "pending"


# --- detail page ---------------------------------------------------------------------------------




@pytest.mark.django_db
def test_detail_page_shows_events_diff_and_tasks_with_bounded_queries(
    client, viewer_user, django_assert_max_num_queries
):
    session = CodingSessionFactory(status="running", branch_name="orchestrator/ind-1")
    kinds = [
        ("tool.completed", {
            "tool": "bash", "status": "completed", "title": "pytest -q", "input": "{}", "output": "3 passed",
        }),
        ("assistant.text", {"message_id": "m1", "text": "The endpoint is in place."}),
        ("session.transition", {
            "from": "queued", "to": "running", "action": "claim", "actor": {"kind": "worker", "label": "w1"},
            "reason": "claimed by w1",
        }),
        ("opencode.error", {"name": "ProviderAuthError", "message": "bad key"}),
        ("permission.asked", {"id": "per_9", "permission": "edit", "patterns": ["src/app.py"]}),
    ]
    for n in range(50):
        type, payload = kinds[n % len(kinds)]
        record(session, type, **payload)
    record(session, "session.checkpoint", sequence=1, git_ref="refs/orchestrator/1", opencode_message_id="m1")
    record(
        session, "session.diff",
        files=[{"file": "app/health.py", "additions": 12, "deletions": 0, "status": "added"}],
        additions=12, deletions=0, patch="+def health():\n+    return {'ok': True}\n", patch_truncated=False,
    )
    root = TaskFactory(session=session, title="Write the endpoint")
    TaskFactory(session=session, parent=root, title="Add the test")
    ask(session)
    client.force_login(viewer_user)
    # The monitor's parts: events, permissions, tasks, current tasks, transitions, checkpoints,
    # follow-ups; plus the login session, the user, the role and the session itself, and the nav's
    # pending-approvals count. A fixed number: 50 events or 10,000 cost the same.
    with django_assert_max_num_queries(13):
        response = client.get(reverse("sessions:detail", args=[session.pk]))
    body = response.content.decode()
    assert response.status_code == 200
    assert body.count('class="event ') == 52
    assert "pytest -q" in body and "3 passed" in body and "The endpoint is in place." in body
    assert "claimed by w1" in body and "ProviderAuthError: bad key" in body and "refs/orchestrator/1" in body
    # The patch loads on demand (a git diff may be large): the page links to it and htmx fetches it.
    diff_url = reverse("sessions:diff", args=[session.pk])
    assert f'hx-get="{diff_url}" hx-trigger="load"' in body and f'href="{diff_url}"' in body
    patch = client.get(diff_url, **HTMX).content.decode()
    assert "app/health.py" in patch and "return {&#x27;ok&#x27;: True}" in patch
    assert "Write the endpoint" in body and "Add the test" in body
    assert "orchestrator/ind-1" in body and 'class="badge status-running"' in body
    last = session.events.order_by("-pk").first()
    assert f'ws-connect="/ws/console/sessions/{session.pk}?after={last.pk}"' in body


@pytest.mark.django_db
def test_pushes_replace_the_panels_their_event_changes():
    session = CodingSessionFactory(status="degraded")
    ask(session, patterns=["make deploy"])
    asked = services.event_message(record(session, "permission.asked", permission="bash"), session.reference)
    html = views.live_fragment(session_id=session.pk, event=asked["event"], is_operator=False)
    assert 'id="permission-requests" hx-swap-oob="outerHTML"' in html and "make deploy" in html
    assert "Approve once" not in html and 'id="session-header"' not in html
    diff = services.event_message(
        record(session, "session.diff", files=[{"file": "README.md", "additions": 1, "deletions": 2}],
               additions=1, deletions=2, patch="-old\n+new\n"),
        session.reference,
    )
    html = views.live_fragment(session_id=session.pk, event=diff["event"], is_operator=True)
    # The diff push is the panel's shell, which fetches the patch again.
    assert 'id="session-diff" hx-swap-oob="outerHTML"' in html
    assert f'hx-get="{reverse("sessions:diff", args=[session.pk])}" hx-trigger="load"' in html


# --- the console WebSocket -----------------------------------------------------------------------




@pytest.mark.django_db(transaction=True)
def test_console_socket_pushes_the_event_partial_and_the_header_on_transitions(operator_user):
    token = api_token(operator_user)
    session = CodingSessionFactory(status="running")

    async def scenario():
        communicator = WebsocketCommunicator(application, f"/ws/console/sessions/{session.pk}?token={token.key}")
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        event = await database_sync_to_async(record)(
            session, "tool.completed", tool="bash", status="completed", title="make lint", input="{}", output="ok"
        )
        tool_html = await communicator.receive_from(timeout=TIMEOUT)
        await database_sync_to_async(services.session_pause)(session=session, reason="lunch")
        pause_html = await communicator.receive_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return event, tool_html, pause_html

    event, tool_html, pause_html = run(scenario)
    assert tool_html.startswith('<div hx-swap-oob="beforeend:#event-log">')
    assert f'id="event-{event.pk}"' in tool_html and "make lint" in tool_html
    assert 'id="session-header"' not in tool_html
    assert "lunch" in pause_html
    assert 'id="session-header" hx-swap-oob="outerHTML"' in pause_html
    assert 'class="badge status-paused"' in pause_html
    assert reverse("sessions:action", args=[session.pk, "resume"]) in pause_html


@pytest.mark.django_db(transaction=True)
def test_console_socket_replays_what_the_page_missed(viewer_user):
    token = api_token(viewer_user)
    session = CodingSessionFactory(status="running")
    seen = record(session, "assistant.text", text="rendered with the page")
    missed = record(session, "assistant.text", text="written before the socket opened")

    async def scenario():
        communicator = WebsocketCommunicator(
            application, f"/ws/console/sessions/{session.pk}?after={seen.pk}&token={token.key}"
        )
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        html = await communicator.receive_from(timeout=TIMEOUT)
        nothing_more = await communicator.receive_nothing(timeout=0.2)
        await communicator.disconnect()
        return html, nothing_more

    html, nothing_more = run(scenario)
    assert f'id="event-{missed.pk}"' in html and "written before the socket opened" in html
    assert nothing_more


@pytest.mark.django_db(transaction=True)
def test_console_socket_refuses_anonymous_users_and_unknown_sessions(operator_user):
    token = api_token(operator_user)
    session = CodingSessionFactory()

    def connect(path):
        async def go():
            communicator = WebsocketCommunicator(application, path)
            connected, code = await communicator.connect(timeout=TIMEOUT)
            if connected:
                await communicator.disconnect()
            return connected, code

        return run(go)

    assert connect(f"/ws/console/sessions/{session.pk}") == (False, 4401)
    assert connect(f"/ws/console/sessions/{session.pk + 1000}?token={token.key}") == (False, 4404)
