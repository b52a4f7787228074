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

from sessions.models import CodingSession
from sessions.services import session_heartbeat

logger = logging.getLogger(__name__)

# A change is seen within READ_INTERVAL + runner.CONTROL_INTERVAL (0.9 s). Each read of 20 rows costs
# the worker ~0.3 ms of CPU (1.5 ms when it built every row: see _read_rows); at 0.25 s and before
# the SQL was written once, the reads were a tenth of the worker's Python time.
READ_INTERVAL = 0.4
STALE_AFTER = 1.0
FIELDS = (
    "status", "worker_id", "attempt_seconds", "run_started_at", "max_duration_seconds", "deleted_at",
    "tokens_input", "tokens_output", "tokens_reasoning", "cost", "token_budget_soft",
    "token_budget_hard", "cost_budget_soft", "cost_budget_hard", "metadata",
)
# The shared read as SQL written once: Django compiled the same query at every read (a third of its cost).
# In the model's field order: Model.from_db takes a partial row's values in that order.
_FIELD_OBJECTS = [field for field in CodingSession._meta.concrete_fields if field.primary_key or field.name in FIELDS]
_COLUMNS = ", ".join(field.column for field in _FIELD_OBJECTS)
_ATTNAMES = [field.attname for field in _FIELD_OBJECTS]
_PK = _ATTNAMES.index(CodingSession._meta.pk.attname)


_built = {}  # session id -> (the raw column values of its last read, the CodingSession built from them)


def _read_rows(ids):
    """{id: CodingSession with FIELDS loaded} for these sessions, in one query (none for no ids:
    an unwatch can empty the set between the reader's wait and its read).

    A row whose columns are as in the previous read keeps the instance built then: most reads find
    nothing changed, and building 20 model instances (Django's raw() did it at every read) cost
    five times the query itself. The instances are only read, never saved."""
    if not ids:
        return {}
    sql = f"SELECT {_COLUMNS} FROM {CodingSession._meta.db_table} WHERE id IN ({', '.join(['%s'] * len(ids))})"
    with connection.cursor() as cursor:
        cursor.execute(sql, list(ids))
        fetched = cursor.fetchall()
    rows = {}
    for values in fetched:
        session_id = values[_PK]
        previous = _built.get(session_id)
        if previous is None or previous[0] != values:
            previous = _built[session_id] = (values, _build(values))
        rows[session_id] = previous[1]
    for gone in set(_built) - set(rows):
        del _built[gone]
    return rows


def _build(values):
    """A CodingSession from one row of the shared read, through the fields' database converters (as
    a queryset would: dates from SQLite's text, Decimals, JSON)."""
    compiler = CodingSession.objects.none().query.get_compiler(connection=connection)
    converters = compiler.get_converters([field.get_col(CodingSession._meta.db_table) for field in _FIELD_OBJECTS])
    converted = next(iter(compiler.apply_converters([values], converters))) if converters else values
    return CodingSession.from_db(connection.alias, _ATTNAMES, list(converted))

_changed = threading.Condition()
_watched = Counter()  # session id -> runs of this process watching it
_workers = {}  # session id -> the worker id its run claimed it with (what its heartbeat names)
_rows = {}  # session id -> (monotonic time its read began, row or None when the session is gone)
_reader = None
idle = threading.Event()  # set while the reader waits for sessions, its database connection closed


def read_row(session_id):
    """The session's control row straight from the database (None when it no longer exists)."""
    return CodingSession.objects.filter(pk=session_id).only(*FIELDS).first()


def watch(session_id, *, worker_id):
    """Have the reader thread read and heartbeat this session from now on (pair with unwatch)."""
    global _reader
    with _changed:
        _watched[session_id] += 1
        _workers[session_id] = worker_id
        if _reader is None or not _reader.is_alive():
            _reader = threading.Thread(target=_read_forever, name="control-rows", daemon=True)
            _reader.start()
        _changed.notify_all()


def unwatch(session_id):
    with _changed:
        _watched[session_id] -= 1
        if _watched[session_id] <= 0:
            del _watched[session_id]
            _workers.pop(session_id, None)
            _rows.pop(session_id, None)
        _changed.notify_all()


def latest_row(session_id):
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
            rows = _read_rows(ids)
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
