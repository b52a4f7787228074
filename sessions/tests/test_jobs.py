import pytest

from sessions.jobs import execute_session
from sessions.models import CodingSession, SessionTransition
from sessions.tests.factories import CodingSessionFactory

pytestmark = pytest.mark.django_db


def test_job_for_a_missing_session_is_logged_and_ignored(caplog):
    assert execute_session(session_id=424242) is None
    assert "424242 does not exist" in caplog.text


@pytest.mark.parametrize("status", ["running", "cancelled", "pending"])
def test_job_for_a_session_that_is_not_queued_does_nothing(status):
    session = CodingSessionFactory(status=status)
    assert execute_session(session_id=session.pk) is None
    assert CodingSession.objects.get(pk=session.pk).status == status
    assert not SessionTransition.objects.exists()


def test_job_is_registered_under_its_explicit_name_with_late_ack():
    assert execute_session.name == "sessions.execute_session"
    assert execute_session.acks_late is True
