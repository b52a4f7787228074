import threading

import pytest
from django.db import connection

from orchestrator.errors import Conflict, NotFound
from sessions import services
from sessions.models import CHECKPOINTS_RETAINED, Checkpoint, CodingSession, SessionEvent
from sessions.tests.factories import CodingSessionFactory

# Both ways a checkpoint is written: inside a transaction (the ORM) and, on PostgreSQL, outside one
# (the worker's single statement, sessions.sql.CHECKPOINT_INSERT).
WRITE_PATHS = [
    pytest.param(marks=pytest.mark.django_db, id="in-a-transaction"),
    pytest.param(marks=pytest.mark.django_db(transaction=True), id="autocommit"),
]


@pytest.mark.parametrize([], WRITE_PATHS)
def test_sequences_start_at_one_and_increase():
    session = CodingSessionFactory(status="running")
    numbers = [services.session_add_checkpoint(session=session, data={"step": n}).sequence for n in range(3)]
    assert numbers == [1, 2, 3]
    row = CodingSession.objects.get(pk=session.pk)
    assert row.checkpoint_count == 3 and row.last_checkpoint_sequence == 3
    assert row.last_checkpoint_at == Checkpoint.objects.get(session=session, sequence=3).created_at


@pytest.mark.parametrize([], WRITE_PATHS)
def test_each_checkpoint_writes_an_event():
    session = CodingSessionFactory(status="running")
    services.session_add_checkpoint(session=session, opencode_message_id="msg_1", git_ref="abc123")
    event = SessionEvent.objects.get(session=session)
    assert event.type == "session.checkpoint"
    assert event.payload["sequence"] == 1 and event.payload["git_ref"] == "abc123"


@pytest.mark.parametrize([], WRITE_PATHS)
def test_only_the_newest_100_are_kept_and_numbering_continues():
    session = CodingSessionFactory(status="running")
    for _ in range(CHECKPOINTS_RETAINED + 5):
        services.session_add_checkpoint(session=session)
    kept = list(Checkpoint.objects.filter(session=session).values_list("sequence", flat=True).order_by("sequence"))
    assert kept == list(range(6, 106))
    row = CodingSession.objects.get(pk=session.pk)
    assert row.checkpoint_count == 100
    assert services.session_add_checkpoint(session=session).sequence == 106


@pytest.mark.parametrize([], WRITE_PATHS)
@pytest.mark.parametrize("status", ["pending", "queued", "completed", "failed", "cancelled"])
def test_checkpoints_are_refused_unless_running_degraded_or_paused(status):
    session = CodingSessionFactory(status=status)
    with pytest.raises(Conflict):
        services.session_add_checkpoint(session=session)
    assert not Checkpoint.objects.filter(session=session).exists()


@pytest.mark.django_db
def test_restore_sets_the_resume_point():
    session = CodingSessionFactory(status="running")
    for _ in range(3):
        services.session_add_checkpoint(session=session)
    services.session_pause(session=session)
    restored = services.session_restore_checkpoint(session=session, sequence=2)
    assert restored.resume_checkpoint.sequence == 2
    assert SessionEvent.objects.filter(session=session, type="session.checkpoint_restored").count() == 1


@pytest.mark.django_db
def test_restore_is_refused_while_running_and_for_unknown_sequences():
    session = CodingSessionFactory(status="running")
    services.session_add_checkpoint(session=session)
    with pytest.raises(Conflict):
        services.session_restore_checkpoint(session=session, sequence=1)
    services.session_stop(session=session)
    with pytest.raises(NotFound):
        services.session_restore_checkpoint(session=session, sequence=7)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_checkpoints_get_unique_increasing_sequences():
    session = CodingSessionFactory(status="running")
    threads_count, per_thread = 8, 5
    barrier = threading.Barrier(threads_count)
    results, failures = [], []

    def take():
        try:
            barrier.wait()
            for _ in range(per_thread):
                results.append(services.session_add_checkpoint(session=session).sequence)
        except Exception as exc:  # reported below; a thread must not die silently
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=take) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(results) == list(range(1, threads_count * per_thread + 1))
    stored = list(
        Checkpoint.objects.filter(session=session).order_by("created_at", "id").values_list("sequence", flat=True)
    )
    assert stored == sorted(stored)
    assert CodingSession.objects.get(pk=session.pk).checkpoint_count == threads_count * per_thread


@pytest.mark.parametrize([], WRITE_PATHS)
def test_a_resume_point_the_retention_drops_is_cleared():
    session = CodingSessionFactory(status="running")
    first = services.session_add_checkpoint(session=session)
    CodingSession.objects.filter(pk=session.pk).update(resume_checkpoint=first.pk)
    for _ in range(CHECKPOINTS_RETAINED - 1):
        services.session_add_checkpoint(session=session)
    assert CodingSession.objects.get(pk=session.pk).resume_checkpoint_id == first.pk  # still kept
    services.session_add_checkpoint(session=session)
    assert not Checkpoint.objects.filter(pk=first.pk).exists()
    assert CodingSession.objects.get(pk=session.pk).resume_checkpoint_id is None
