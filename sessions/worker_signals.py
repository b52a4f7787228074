"""What a Celery worker of the sessions app does as it shuts down (connected in SessionsConfig.ready).

The receiver imports the engine in its body: web processes connect it too (the signal never fires
there) and must not load the engine for it.
"""

from celery.signals import worker_shutdown

from orchestrator.broadcaster import wait_for_broadcasts


@worker_shutdown.connect
def stop_opencode_servers(**kwargs) -> None:
    """Remove this worker's spare worktrees; stop the OpenCode server (and demo model) it started;
    let the last broadcasts go out."""
    from sessions.execution import servers, spares

    spares.shutdown()
    servers.shutdown()
    wait_for_broadcasts()
