"""The control rows and heartbeats of the sessions this worker process runs, for all of them at once.

A task thread following a turn must notice within a second when someone else changes its session
(paused, stopped, deleted, taken over by another worker) and enforce its deadline and budgets; and
the worker must heartbeat every session it runs, or the reconciler takes them for orphans. Each run
used to do both itself: with 20 sessions running, 40 reads and 8 heartbeat UPDATEs a second from
one process (~10 % of its CPU; with a real LLM a session lives for minutes, so this polling is most
of what a session costs the database). Now one reader thread per process reads the rows of every
session the process runs in one query every READ_INTERVAL seconds, and heartbeats them all in one
UPDATE every SESSION_HEARTBEAT_SECONDS. Task threads look at the latest read (`latest_row`): a run
that lost its session (another worker owns it, or its status changed) sees it there and stops. A
read older than STALE_AFTER (the reader is stuck behind a slow database) is not trusted: the caller
reads its row itself.
"""

import logging
import threading
import time
from collections import Counter

from django.conf import settings
from django.db import connection

from sessions import sql
from sessions.services import session_heartbeat
from sessions.sql import ControlRow

logger = logging.getLogger(__name__)

# A change is seen within READ_INTERVAL + task_turn.CONTROL_INTERVAL (0.9 s).
READ_INTERVAL = 0.4
STALE_AFTER = 1.0


_changed = threading.Condition()
_watched = Counter()  # session id -> runs of this process watching it
_workers = {}  # session id -> the worker id its run claimed it with (what its heartbeat names)
_rows = {}  # session id -> (monotonic time its read began, row or None when the session is gone)
_reader = None
idle = threading.Event()  # set while the reader waits for sessions, its database connection closed


def read_row(session_id: int) -> ControlRow | None:
    """The session's control row straight from the database (None when it no longer exists)."""
    return sql.control_rows([session_id]).get(session_id)


def watch(session_id: int, *, worker_id: str) -> None:
    """Have the reader thread read and heartbeat this session from now on (pair with unwatch)."""
    global _reader
    with _changed:
        _watched[session_id] += 1
        _workers[session_id] = worker_id
        if _reader is None or not _reader.is_alive():
            _reader = threading.Thread(target=_read_forever, name="control-rows", daemon=True)
            _reader.start()
        _changed.notify_all()


def unwatch(session_id: int) -> None:
    with _changed:
        _watched[session_id] -= 1
        if _watched[session_id] <= 0:
            del _watched[session_id]
            _workers.pop(session_id, None)
            _rows.pop(session_id, None)
        _changed.notify_all()


def latest_row(session_id: int) -> ControlRow | None:
    """The row of the reader's latest read when it began less than STALE_AFTER ago, else a fresh one."""
    with _changed:
        entry = _rows.get(session_id)
    if entry is not None and time.monotonic() - entry[0] <= STALE_AFTER:
        return entry[1]
    return read_row(session_id)


def _heartbeat(session_workers):
    by_worker = {}
    for session_id, worker_id in session_workers.items():
        by_worker.setdefault(worker_id, []).append(session_id)
    for worker_id, session_ids in by_worker.items():
        session_heartbeat(session_ids=session_ids, worker_id=worker_id)


def _read_forever():
    last_heartbeat = 0.0
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
            session_workers = dict(_workers)
        began = time.monotonic()
        try:
            if began - last_heartbeat >= settings.SESSION_HEARTBEAT_SECONDS:
                _heartbeat(session_workers)
                last_heartbeat = began
            rows = sql.control_rows(ids)
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
