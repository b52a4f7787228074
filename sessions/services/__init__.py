"""Every write to a coding session, its checkpoints and its event log (one module per concern).

- `lifecycle`: creating a session, its transitions (the django-fsm state machine, audit rows,
  "session.transition" events, the Celery enqueue after commit) and its soft delete;
- `event_log`: appending events and publishing them after commit;
- `checkpoints`: numbered snapshots to resume from, and restoring one;
- `runtime`: the worker's bookkeeping of a running session (heartbeats, runtime fields, usage);
- `common`: who acts (`Actor`) and the session row under its lock.

Callers import from here (`from sessions import services; services.session_start(...)`).
`session` arguments take a `CodingSession` (only its id is used: the services re-read the row
under the lock and return that fresh instance); `actor` an `Actor`, or None for the system.
Services import the Celery jobs at module level; the jobs import services in their bodies.
"""

from sessions.services.checkpoints import (
    CHECKPOINT_STATES,
    RESTORE_STATES,
    session_add_checkpoint,
    session_restore_checkpoint,
)
from sessions.services.common import Actor, as_actor
from sessions.services.event_log import event_message, session_record_event, session_record_events
from sessions.services.lifecycle import (
    session_budget_soft_pause,
    session_cancel,
    session_claim,
    session_complete,
    session_create,
    session_degrade,
    session_delete,
    session_enqueue_execution,
    session_fail,
    session_orphan,
    session_pause,
    session_recover,
    session_resume,
    session_retry,
    session_start,
    session_stop,
    session_timeout,
)
from sessions.services.runtime import (
    RUNTIME_FIELDS,
    session_heartbeat,
    session_record_usage,
    session_set_runtime,
    session_take_resume_point,
)

__all__ = [
    "CHECKPOINT_STATES", "RESTORE_STATES", "RUNTIME_FIELDS", "Actor", "as_actor", "event_message",
    "session_add_checkpoint", "session_budget_soft_pause", "session_cancel", "session_claim", "session_complete",
    "session_create", "session_degrade", "session_delete", "session_enqueue_execution", "session_fail",
    "session_heartbeat", "session_orphan", "session_pause", "session_record_event", "session_record_events",
    "session_record_usage", "session_recover", "session_restore_checkpoint", "session_resume", "session_retry",
    "session_set_runtime", "session_start", "session_stop", "session_take_resume_point", "session_timeout",
]
