"""Event lag: from OpenCode completing a step (OpenCode's clock, `info.time.completed` of the
assistant message) to the step's `opencode.step` event being stored (`SessionEvent.created_at`).

The worker's OpenCode event stream hands every event to `note_opencode_event` (one call in
sessions.opencode.events); the worker's metrics thread (orchestrator.metrics_worker) then matches
the completed steps it noted with the stored events by message id and observes the difference into
`orchestrator_event_lag_seconds`. Both clocks are the worker host's (OpenCode runs beside it).
Importing this module loads no Django model, so the OpenCode adapter can call it cheaply.
"""

import threading
import time
from collections import OrderedDict

PENDING_LIMIT = 10_000  # steps noted and not yet matched; the oldest are dropped beyond this
PENDING_SECONDS = 600.0  # a step whose event is not stored within this long is forgotten
SCAN_LIMIT = 2_000  # stored events examined per round

_pending = OrderedDict()  # OpenCode message id -> completion time (epoch seconds)
_lock = threading.Lock()
_cursor = {"id": None}


def note_opencode_event(event) -> None:
    """Remember when OpenCode completed an assistant step (cheap for every other event)."""
    if event.type != "message.updated":
        return
    info = event.properties.get("info") or {}
    completed = (info.get("time") or {}).get("completed")
    if info.get("role") != "assistant" or not completed or not info.get("id"):
        return
    with _lock:
        if info["id"] not in _pending:
            _pending[info["id"]] = completed / 1000.0
            while len(_pending) > PENDING_LIMIT:
                _pending.popitem(last=False)


def observe_stored() -> int:
    """Observe the lag of every noted step whose event has been stored since the last round;
    answer how many were observed. Called from one thread (the worker's metrics thread)."""
    from orchestrator import metrics
    from sessions.models import SessionEvent

    events = SessionEvent.objects.filter(type="opencode.step")
    if _cursor["id"] is None:
        # Start after what is already stored: earlier steps were completed before this worker noted any.
        _cursor["id"] = SessionEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    with _lock:
        if not _pending:
            return 0
    rows = list(events.filter(id__gt=_cursor["id"]).order_by("id")
                .values_list("id", "payload__message_id", "created_at")[:SCAN_LIMIT])
    observed = 0
    with _lock:
        for event_id, message_id, stored_at in rows:
            _cursor["id"] = max(_cursor["id"], event_id)
            completed = _pending.pop(message_id, None)
            if completed is not None:
                metrics.EVENT_LAG.observe(max(0.0, stored_at.timestamp() - completed))
                observed += 1
        horizon = time.time() - PENDING_SECONDS
        for message_id in [key for key, completed in _pending.items() if completed < horizon]:
            del _pending[message_id]
    return observed


def reset() -> None:
    """Forget every noted step and start the next round after the events stored now."""
    with _lock:
        _pending.clear()
        _cursor["id"] = None
