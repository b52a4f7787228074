"""The sessions app's hand-written SQL, one small function per statement.

These are the writes and reads a running session makes many times a second (its events, step
checkpoints, usage, the worker's shared control read) and the dispatcher's lock. The services
choose when to use them: `insert_events` and `add_checkpoint` are PostgreSQL statements used
outside a transaction, each with an ORM way in `sessions.services` that does the same inside one;
the same behavioural tests run over both ways (tests/test_checkpoints.py, tests/test_write_paths.py).
Why each is SQL rather than the ORM is said at the statement.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from sessions.models import Checkpoint, CodingSession, SessionEvent, attempt_elapsed_seconds

SESSIONS = CodingSession._meta.db_table
EVENTS = SessionEvent._meta.db_table
CHECKPOINTS = Checkpoint._meta.db_table


# --- events ------------------------------------------------------------------------------------

# The running session's event writes, as one statement: lock the session row, insert the events in
# order, read the reference for the broadcast. A worker records ~20 batches per task; as a
# transaction (BEGIN, SELECT ... FOR UPDATE, INSERT, COMMIT) each cost four round trips and two
# ORM queries built in Python, the largest share of a worker's CPU per session after OpenCode's.
# The lock is taken before the ids are drawn, so ids still follow commit order within a session.
EVENTS_INSERT = f"""
WITH locked AS (
    SELECT id, reference FROM {SESSIONS} WHERE id = %s FOR UPDATE
), inserted AS (
    INSERT INTO {EVENTS} (session_id, type, payload, created_at)
    SELECT locked.id, entry.type, entry.payload, %s
    FROM locked, unnest(%s::varchar[], %s::jsonb[]) WITH ORDINALITY AS entry(type, payload, position)
    ORDER BY entry.position
    RETURNING id
)
SELECT inserted.id, locked.reference FROM inserted, locked ORDER BY inserted.id
"""


@dataclass(frozen=True)
class InsertedEvents:
    """The ids of the events one statement inserted, in order, and their session's reference."""

    ids: list[int]
    reference: str


def insert_events(*, session_id: int, entries: list[tuple[str, dict]], now: datetime) -> InsertedEvents | None:
    """Insert events [(type, payload)] in order under the session's row lock (PostgreSQL, outside a
    transaction: the statement is its own); None when the session does not exist."""
    with connection.cursor() as cursor:
        cursor.execute(EVENTS_INSERT, [session_id, now, [type for type, _ in entries],
                                       [json.dumps(payload) for _, payload in entries]])
        inserted = cursor.fetchall()
    if not inserted:
        return None
    return InsertedEvents(ids=[event_id for event_id, _ in inserted], reference=inserted[0][1])


# --- checkpoints -------------------------------------------------------------------------------

# A running session's step checkpoint as one statement (as its events: EVENTS_INSERT): the UPDATE
# locks the row and draws the next sequence, then the checkpoint, the retention cut and the event
# follow from its RETURNING. As a transaction (BEGIN, SELECT ... FOR UPDATE, INSERT, UPDATE, INSERT,
# COMMIT) it cost six round trips and four ORM queries built in Python, three times per task.
# Nothing comes back when the session is not in a checkpoint state: the caller then takes the ORM way,
# which refuses with the reason.
CHECKPOINT_INSERT = f"""
WITH updated AS (
    UPDATE {SESSIONS}
    SET last_checkpoint_sequence = last_checkpoint_sequence + 1,
        checkpoint_count = LEAST(checkpoint_count + 1, %(retained)s),
        -- the time after the row lock, so checkpoint times follow their sequence as in the ORM way
        last_checkpoint_at = clock_timestamp(), updated_at = clock_timestamp(),
        -- a resume point among the checkpoints the retention cut drops goes (as SET_NULL does)
        resume_checkpoint_id = CASE
            WHEN (SELECT sequence FROM {CHECKPOINTS} WHERE id = resume_checkpoint_id)
                 <= last_checkpoint_sequence + 1 - %(retained)s THEN NULL
            ELSE resume_checkpoint_id END
    WHERE id = %(session)s AND deleted_at IS NULL AND status = ANY(%(states)s)
    RETURNING id, reference, last_checkpoint_sequence AS sequence, last_checkpoint_at AS at
), checkpoint AS (
    INSERT INTO {CHECKPOINTS} (session_id, sequence, data, opencode_message_id, git_ref, created_at)
    SELECT id, sequence, %(data)s::jsonb, %(message)s, %(git_ref)s, at FROM updated
    RETURNING id
), dropped AS (
    DELETE FROM {CHECKPOINTS} old USING updated
    WHERE old.session_id = updated.id AND old.sequence <= updated.sequence - %(retained)s
), event AS (
    INSERT INTO {EVENTS} (session_id, type, payload, created_at)
    SELECT id, 'session.checkpoint', %(payload)s::jsonb || jsonb_build_object('sequence', sequence), at
    FROM updated
    RETURNING id
)
SELECT updated.reference, updated.sequence, updated.at, checkpoint.id, event.id FROM updated, checkpoint, event
"""


@dataclass(frozen=True)
class AddedCheckpoint:
    """What CHECKPOINT_INSERT wrote: the checkpoint (id, sequence, time) and its event's id."""

    reference: str
    sequence: int
    created_at: datetime
    checkpoint_id: int
    event_id: int


def add_checkpoint(
    *, session_id: int, states: list[str], retained: int, data: dict, opencode_message_id: str, git_ref: str,
    event_payload: dict,
) -> AddedCheckpoint | None:
    """Add the session's next checkpoint, drop those beyond the newest `retained`, and write its
    `session.checkpoint` event (`event_payload` plus the sequence), in one statement (PostgreSQL,
    outside a transaction). None when nothing was added: the session is gone, deleted or not in one
    of `states`."""
    with connection.cursor() as cursor:
        cursor.execute(CHECKPOINT_INSERT, {
            "session": session_id, "states": states, "retained": retained, "data": json.dumps(data),
            "message": opencode_message_id, "git_ref": git_ref, "payload": json.dumps(event_payload),
        })
        added = cursor.fetchone()
    return None if added is None else AddedCheckpoint(*added)


# --- usage -------------------------------------------------------------------------------------

# A step's usage, added in one UPDATE written once: the worker records one per assistant step, and
# building the ORM's seven F() + value expressions cost ~2 ms of its Python each time.
USAGE_UPDATE = (
    f"UPDATE {SESSIONS} SET tokens_input = tokens_input + %s, tokens_output = tokens_output + %s, "
    "tokens_reasoning = tokens_reasoning + %s, tokens_cache_read = tokens_cache_read + %s, "
    "tokens_cache_write = tokens_cache_write + %s, cost = cost + %s, api_calls = api_calls + %s, "
    "updated_at = %s WHERE id = %s"
)


def add_usage(
    *, session_id: int, tokens_input: int, tokens_output: int, tokens_reasoning: int, tokens_cache_read: int,
    tokens_cache_write: int, cost: Decimal, api_calls: int,
) -> None:
    """Add usage to the session's counters in one UPDATE (no read-modify-write; any database)."""
    ops = connection.ops
    with connection.cursor() as cursor:
        cursor.execute(USAGE_UPDATE, [
            tokens_input, tokens_output, tokens_reasoning, tokens_cache_read, tokens_cache_write,
            ops.adapt_decimalfield_value(cost), api_calls, ops.adapt_datetimefield_value(timezone.now()),
            session_id,
        ])


# --- the control read ----------------------------------------------------------------------------

CONTROL_FIELDS = (
    "id", "status", "worker_id", "attempt_seconds", "run_started_at", "max_duration_seconds", "deleted_at",
    "tokens_input", "tokens_output", "tokens_reasoning", "cost", "token_budget_soft",
    "token_budget_hard", "cost_budget_soft", "cost_budget_hard", "metadata",
)


@dataclass(frozen=True)
class ControlRow:
    """What a running session's run checks: who owns it, its state, its clock and its budgets."""

    id: int
    status: str
    worker_id: str
    attempt_seconds: float
    run_started_at: datetime | None
    max_duration_seconds: int
    deleted_at: datetime | None
    tokens_input: int
    tokens_output: int
    tokens_reasoning: int
    cost: Decimal
    token_budget_soft: int | None
    token_budget_hard: int | None
    cost_budget_soft: Decimal | None
    cost_budget_hard: Decimal | None
    metadata: dict

    @property
    def pk(self) -> int:
        return self.id

    @property
    def tokens_total(self) -> int:
        return self.tokens_input + self.tokens_output + self.tokens_reasoning

    def elapsed_seconds(self, now: datetime | None = None) -> float:
        """As CodingSession.elapsed_seconds: the current attempt's running time, pauses excluded."""
        return attempt_elapsed_seconds(status=self.status, attempt_seconds=self.attempt_seconds,
                                       run_started_at=self.run_started_at, now=now)


def control_rows(session_ids: list[int]) -> dict[int, ControlRow]:
    """{id: ControlRow} of these sessions, in one query (none for no ids); a session that no longer
    exists is absent."""
    if not session_ids:
        return {}
    rows = CodingSession.objects.filter(pk__in=session_ids).values_list(*CONTROL_FIELDS)
    return {values[0]: ControlRow(*values) for values in rows}


# --- the dispatcher's lock -----------------------------------------------------------------------


def advisory_transaction_lock(key: int) -> None:
    """Hold PostgreSQL's advisory lock `key` until the transaction ends (SQLite: nothing to do, every
    write transaction there is already exclusive)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
