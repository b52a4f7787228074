import uuid

import pytest

from orchestrator.celery import app as celery_app
from sessions.opencode.scripted_llm import ScriptedLLM


class BrokerQueues:
    """Session queues with names unique to one test, read back from the real broker.

    No worker listens on these names, so every enqueued job stays in the broker
    until `drain` reads it; the test counts what the broker actually received.
    """

    def __init__(self, settings):
        suffix = uuid.uuid4().hex[:10]
        self.names = {priority: f"test-{suffix}-{name}" for priority, name in settings.SESSION_QUEUES.items()}
        settings.SESSION_QUEUES = self.names

    def delete(self):
        """Remove the test queues from the broker (Redis keeps a binding per queue name otherwise)."""
        with celery_app.connection_for_write() as connection:
            for name in sorted(set(self.names.values())):
                queue = connection.SimpleQueue(name)
                try:
                    queue.queue.delete()
                finally:
                    queue.close()

    def drain(self, priority=None):
        names = sorted(set(self.names.values() if priority is None else [self.names[priority]]))
        received = []
        with celery_app.connection_for_read() as connection:
            for name in names:
                queue = connection.SimpleQueue(name)
                try:
                    while True:
                        try:
                            message = queue.get(block=False)
                        except queue.Empty:
                            break
                        args, kwargs, _ = message.payload
                        received.append({"queue": name, "task": message.headers.get("task"), "kwargs": kwargs})
                        message.ack()
                finally:
                    queue.close()
        return received


@pytest.fixture
def broker_queues(settings):
    queues = BrokerQueues(settings)
    yield queues
    queues.drain()
    queues.delete()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # The shared user fixtures hash a password per test; PBKDF2 dominates a short test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def roster(transactional_db):
    """The default agent roster (transactional tests flush the rows its data migration made)."""
    from agents.models import Agent
    from agents.roster import DEFAULT_ROSTER
    from agents.services import agent_register

    for entry in DEFAULT_ROSTER:
        if not Agent.objects.filter(name=entry["name"]).exists():
            agent_register(**entry)
    return list(Agent.objects.all())



@pytest.fixture(autouse=True)
def idle_worker_before_flush(request):
    """A module's shared worker must finish its jobs before the test database is flushed.

    A job still writing (a paused session's last checkpoint, say) while the tables are
    truncated deadlocks PostgreSQL's TRUNCATE. The database fixture is set up here, inside this
    one, so its teardown (the flush) runs after this wait: autouse fixtures are set up before
    the test's own, so a database requested by the test's fixtures would be flushed first.
    """
    worker = request.getfixturevalue("worker") if "worker" in request.fixturenames else None
    if worker is not None:
        request.getfixturevalue("transactional_db")  # a worker is another process: only committed rows reach it
    log_start = worker.log_path.stat().st_size if worker is not None else 0
    yield
    if worker is not None:
        from orchestrator.testing import wait_for_idle_worker

        wait_for_idle_worker(worker)
        with open(worker.log_path, "rb") as log:
            log.seek(log_start)
            new_lines = log.read().decode(errors="replace").splitlines()
        crashed = [line for line in new_lines if "raised unexpected" in line]
        assert not crashed, f"a job crashed in the worker during this test: {crashed[0]}"


@pytest.fixture(scope="module")
def scripted_llm():
    """The project's scripted LLM in this process (its request log is readable here); workers get its URL."""
    llm = ScriptedLLM()
    llm.start()
    yield llm
    llm.stop()
