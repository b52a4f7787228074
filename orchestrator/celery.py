"""The Celery app. Jobs live in each app's `jobs.py` (a `tasks.py` would collide with the tasks app)."""

import logging
import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_init, worker_shutdown

import orchestrator.broker  # noqa: F401  (registers the fsqueue:// broker of the embedded default)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

app = Celery("orchestrator")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(related_name="jobs")

logger = logging.getLogger(__name__)


@worker_init.connect
def lower_priority(**kwargs):
    from django.conf import settings

    if settings.WORKER_NICE:
        lower_worker_priority(settings.WORKER_NICE)


def lower_worker_priority(nice):
    """Let the OpenCode servers this worker starts take the cores first (WORKER_NICE).

    Linux shares the CPU between autogroups first (one per session: this worker's, each OpenCode
    server's, as it is started in a session of its own, PostgreSQL's...), then between the threads of
    a group. A thread's own nice value therefore only ranks it within the worker, and the worker's
    group gets as much as an OpenCode server's whenever both want a core: measured with 20 sessions
    on 2 cores, OpenCode's main thread (its JavaScript) then waited 2.1-2.7 s per batch for a core,
    against 0.9-1.2 s with no orchestrator around. The worker's autogroup gets a higher nice value
    instead (every process of the worker's session: the worker and its git commands). Returns
    whether it was applied: not without autogroups (kernel.sched_autogroup_enabled = 0), where
    cgroup CPU weights are the knob."""
    try:
        enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        if enabled:
            Path("/proc/self/autogroup").write_text(str(nice))
    except OSError as error:
        logger.warning("WORKER_NICE %s not applied: %s", nice, error)
        return False
    if not enabled:
        logger.info("WORKER_NICE %s not applied: the kernel does not group processes (sched_autogroup_enabled)", nice)
    return enabled


@worker_shutdown.connect
def stop_opencode_servers(**kwargs):
    """Remove this worker's spare worktrees; stop the OpenCode server (and demo model) it started;
    let the last broadcasts go out."""
    from orchestrator.events import wait_for_broadcasts
    from sessions.execution import servers, spares

    spares.shutdown()
    servers.shutdown()
    wait_for_broadcasts()
