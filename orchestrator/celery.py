"""The Celery app. Jobs live in each app's `jobs.py` (a `tasks.py` would collide with the tasks app)."""

import os

from celery import Celery
from celery.signals import worker_shutdown

import orchestrator.broker  # noqa: F401  (registers the fsqueue:// broker of the embedded default)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

app = Celery("orchestrator")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(related_name="jobs")


def _declare_queues():
    """Every queue jobs are sent to, in priority order: a worker started without -Q consumes them
    all (it would otherwise consume only `default`, and sessions would wait there forever).
    An explicit -Q still selects among them."""
    from django.conf import settings
    from kombu import Queue

    app.conf.task_queues = [Queue(name) for name in dict.fromkeys(settings.WORKER_QUEUES)]


_declare_queues()


@worker_shutdown.connect
def stop_opencode_servers(**kwargs):
    """Remove this worker's spare worktrees; stop the OpenCode server (and demo model) it started;
    let the last broadcasts go out."""
    from orchestrator.events import wait_for_broadcasts
    from sessions.execution import servers, spares

    spares.shutdown()
    servers.shutdown()
    wait_for_broadcasts()
