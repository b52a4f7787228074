import pytest

from orchestrator.fsm import reloaded
from sessions.models import CodingSession
from sessions.tests.factories import CodingSessionFactory


@pytest.mark.django_db
def test_reloaded_reads_a_fresh_copy_and_leaves_the_fsm_field_protected():
    session = CodingSessionFactory(status="running")
    CodingSession.objects.filter(pk=session.pk).update(status="paused", title="changed elsewhere")
    field = CodingSession._meta.get_field("status")

    fresh = reloaded(session)
    assert fresh is not session and fresh.pk == session.pk
    assert (fresh.status, fresh.title) == ("paused", "changed elsewhere")
    assert session.status == "running"  # the caller's copy is left as it was
    assert field.protected  # never switched off, not even for a moment another thread could see
