import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from sessions import services
from sessions.models import CodingSession, SessionTransition
from sessions.tests.factories import CodingSessionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = User.objects.create_superuser("root", "root@example.test", "pw")
    client.force_login(user)
    client.user = user
    return client


def run_action(client, action, sessions):
    return client.post(
        reverse("admin:coding_sessions_codingsession_changelist"),
        {"action": action, "_selected_action": [s.pk for s in sessions]},
        follow=True,
    )


def test_admin_action_goes_through_the_service_and_reports_each_session(admin_client):
    running = CodingSessionFactory(status="running")
    queued = CodingSessionFactory(status="queued")
    response = run_action(admin_client, "pause_sessions", [running, queued])
    assert CodingSession.objects.get(pk=running.pk).status == "paused"
    assert CodingSession.objects.get(pk=queued.pk).status == "queued"
    record = SessionTransition.objects.get(session=running)
    assert (record.actor_kind, record.actor_user, record.reason) == ("user", admin_client.user, "admin: paused")
    text = response.content.decode()
    assert f"Paused: {running.reference}" in text
    assert f"{queued.reference}: Cannot pause a session that is queued" in text


def test_admin_retry_and_soft_delete(admin_client):
    failed = CodingSessionFactory(status="failed")
    run_action(admin_client, "retry_sessions", [failed])
    assert CodingSession.objects.get(pk=failed.pk).status == "pending"
    run_action(admin_client, "soft_delete_sessions", [failed])
    assert CodingSession.objects.get(pk=failed.pk).deleted_at is not None


def test_admin_pages_render_with_read_only_status_and_inlines(admin_client):
    session = CodingSessionFactory(status="running")
    services.session_add_checkpoint(session=session, git_ref="abc")
    services.session_pause(session=session)
    changelist = admin_client.get(reverse("admin:coding_sessions_codingsession_changelist"))
    assert changelist.status_code == 200 and session.reference in changelist.content.decode()
    page = admin_client.get(reverse("admin:coding_sessions_codingsession_change", args=[session.pk]))
    body = page.content.decode()
    assert page.status_code == 200
    assert 'name="status"' not in body
    assert "abc" in body and "session.checkpoint" in body and "running" in body
    assert "delete_selected" not in changelist.content.decode()
