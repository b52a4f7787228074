"""The Celery app. Jobs live in each app's `jobs.py` (a `tasks.py` would collide with the tasks app);
what a worker does at shutdown lives in the app that owns it (sessions/worker_signals.py)."""

import os

from celery import Celery

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

