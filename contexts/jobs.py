"""Celery jobs of the contexts app (the beat schedule lives in settings)."""

import logging

from celery import shared_task

from contexts.services import context_purge_expired

logger = logging.getLogger(__name__)


@shared_task(name="contexts.purge_expired", acks_late=True)
def purge_expired():
    """Delete expired contexts; safe to run twice or concurrently (a delete of nothing is nothing)."""
    deleted = context_purge_expired()
    if deleted:
        logger.info("purged %d expired context(s)", deleted)
    return deleted
