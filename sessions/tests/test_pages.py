import pytest
from django.urls import reverse
from django.utils import timezone

from sessions.tests.factories import CodingSessionFactory

pytestmark = pytest.mark.django_db


def test_list_page_shows_sessions_and_filters_by_status(client, viewer_user):
    client.force_login(viewer_user)
    running = CodingSessionFactory(status="running", title="Harden the upload endpoint")
    failed = CodingSessionFactory(status="failed", title="Rewrite the importer")
    page = client.get(reverse("sessions:list"), {"status": "running"})
    body = page.content.decode()
    assert page.status_code == 200
    assert running.reference in body and failed.reference not in body


def test_detail_page_shows_the_session_and_deleted_ones_are_404(client, viewer_user):
    client.force_login(viewer_user)
    session = CodingSessionFactory(status="paused", initial_prompt="Make the parser streaming.")
    page = client.get(reverse("sessions:detail", args=[session.pk]))
    assert page.status_code == 200 and "Make the parser streaming." in page.content.decode()
    deleted = CodingSessionFactory(status="failed", deleted_at=timezone.now())
    assert client.get(reverse("sessions:detail", args=[deleted.pk])).status_code == 404


def test_pages_need_a_signed_in_user(client):
    assert client.get(reverse("sessions:list")).status_code == 302
