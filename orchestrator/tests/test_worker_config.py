"""Issue 24, finding 9: `celery -A orchestrator worker` with no options (the command every Celery
user types) consumes every queue the app sends jobs to, with the threads pool sessions need."""

import re
import uuid

import pytest
from django.conf import settings

from orchestrator.jobs import ping
from orchestrator.testing import running_worker, wait_until


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_plain_worker_consumes_every_queue_with_the_threads_pool():
    queues = sorted(set(settings.WORKER_QUEUES))
    with running_worker(plain=True, env={"WORKER_CONCURRENCY": 3}) as worker:
        banner = worker.log_path.read_text(errors="replace")
        assert re.search(r"concurrency:\s+3 \(thread\)", banner), banner[-2000:]
        sent = {queue: ping.apply_async(args=[uuid.uuid4().hex], queue=queue).id for queue in queues}

        def finished():
            log = worker.log_path.read_text(errors="replace")
            return all(f"orchestrator.ping[{job_id}] succeeded" in log for job_id in sent.values())

        wait_until(finished, timeout=60, message=f"the plain worker to run a job from each of {queues}")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_explicit_queue_list_still_limits_what_a_worker_consumes():
    with running_worker(queues=["default"], concurrency=1) as worker:
        job = ping.apply_async(args=[uuid.uuid4().hex], queue="default")
        wait_until(lambda: f"orchestrator.ping[{job.id}] succeeded" in worker.log_path.read_text(errors="replace"),
                   timeout=60, message="the default-queue worker to run its job")
        banner = worker.log_path.read_text(errors="replace")
        assert ".> default" in banner and ".> sessions-high" not in banner
