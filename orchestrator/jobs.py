import os
import socket

from celery import shared_task

from orchestrator.consumers import SYSTEM_GROUP
from orchestrator.events import publish_now


@shared_task(name="orchestrator.ping", acks_late=True, ignore_result=True)
def ping(token):
    """Answer on the system group from whichever worker runs this: proves the
    broker carried the job and the channel layer carried the answer."""
    publish_now(
        SYSTEM_GROUP,
        {
            "type": "system.event",
            "event": {"type": "worker.pong", "token": token, "pid": os.getpid(), "host": socket.gethostname()},
        },
    )
