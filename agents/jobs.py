"""Celery jobs of the agents app (thin: each calls a service)."""

import logging

from celery import shared_task

from agents.services import agent_mark_stale_offline

logger = logging.getLogger(__name__)


@shared_task(name="agents.mark_stale_offline", acks_late=True, max_retries=0)
def mark_stale_offline():
    """Periodic (beat, every minute or so): agents silent for 300 s become offline. Idempotent."""
    count = agent_mark_stale_offline()
    if count:
        logger.info("marked %d agent(s) offline: no heartbeat for 300 s", count)
    return count
