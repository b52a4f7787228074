"""The control rows of the sessions this worker process runs, read for all of them at once.

A task thread following a turn must notice within a second when someone else changes its session
(paused, stopped, deleted, taken over by another worker) and enforce its deadline and budgets.
Each thread used to read its own session row every half second: with 20 sessions running, 40
queries a second from one process, ~10 % of its CPU. Now one reader thread per process reads the
rows of every session the process runs in one query every READ_INTERVAL seconds, and task threads
look at the latest read (`latest_row`). A read older than STALE_AFTER (the reader is stuck behind a
slow database) is not trusted: the caller reads its row itself.
"""

import logging
import threading
import time
from collections import Counter

from django.db import connection

from sessions.models import CodingSession

logger = logging.getLogger(__name__)

READ_INTERVAL = 0.25
STALE_AFTER = 1.0
FIELDS = (
    "status", "worker_id", "attempt_seconds", "run_started_at", "max_duration_seconds", "deleted_at",
    "tokens_input", "tokens_output", "tokens_reasoning", "cost", "token_budget_soft",
    "token_budget_hard", "cost_budget_soft", "cost_budget_hard", "metadata",
)

_changed = threading.Condition()
_watched = Counter()  # session id -> runs of this process watching it
_rows = {}  # session id -> (monotonic time its read began, row or None when the session is gone)
_reader = None
idle = threading.Event()  # set while the reader waits for sessions, its database connection closed


def read_row(session_id):
    """The session's control row straight from the database (None when it no longer exists)."""
    return CodingSession.objects.filter(pk=session_id).only(*FIELDS).first()


def watch(session_id):
    """Have the reader thread read this session's row from now on (pair with unwatch)."""
    global _reader
    with _changed:
        _watched[session_id] += 1
        if _reader is None or not _reader.is_alive():
            _reader = threading.Thread(target=_read_forever, name="control-rows", daemon=True)
            _reader.start()
        _changed.notify_all()


def unwatch(session_id):
    with _changed:
        _watched[session_id] -= 1
        if _watched[session_id] <= 0:
            del _watched[session_id]
            _rows.pop(session_id, None)
        _changed.notify_all()


def latest_row(session_id):
    """The row of the reader's latest read when it began less than STALE_AFTER ago, else a fresh one."""
    with _changed:
        entry = _rows.get(session_id)
    if entry is not None and time.monotonic() - entry[0] <= STALE_AFTER:
        return entry[1]
    return read_row(session_id)


def _read_forever():
    while True:
        with _changed:
            nothing_watched = not _watched
        if nothing_watched:
            connection.close()  # back to the pool while no session runs here (README: threads close theirs)
            with _changed:
                idle.set()
                _changed.wait_for(lambda: _watched)
                idle.clear()
        with _changed:
            ids = list(_watched)
        began = time.monotonic()
        try:
            rows = {row.pk: row for row in CodingSession.objects.filter(pk__in=ids).only(*FIELDS)}
        except Exception:  # a database hiccup: callers read their own rows meanwhile (STALE_AFTER)
            logger.exception("control rows: reading %d sessions failed", len(ids))
            connection.close()
            rows = None
        if rows is not None:
            with _changed:
                for session_id in ids:
                    if session_id in _watched:
                        _rows[session_id] = (began, rows.get(session_id))
        with _changed:  # an unwatch wakes the reader early, so its connection goes back at once
            _changed.wait_for(lambda: not _watched, timeout=max(0.0, READ_INTERVAL - (time.monotonic() - began)))
