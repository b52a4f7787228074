"""The worker's bookkeeping of a running session: heartbeats, OpenCode runtime fields, usage."""

from decimal import Decimal

from django.utils import timezone

from orchestrator.errors import ValidationFailed
from sessions import sql
from sessions.models import CLOCK_STATES, CodingSession

RUNTIME_FIELDS = frozenset({"opencode_session_id", "opencode_server_url", "workspace_path", "branch_name"})


def session_heartbeat(*, session_ids: list[int], worker_id: str) -> int:
    """Record that `worker_id` still runs these sessions (one UPDATE); returns how many it still owns."""
    return CodingSession.objects.filter(
        pk__in=session_ids, worker_id=worker_id, status__in=CLOCK_STATES
    ).update(worker_heartbeat_at=timezone.now())


def session_set_runtime(*, session_id: int, **values: str) -> None:
    """Store OpenCode bookkeeping: opencode_session_id, opencode_server_url, workspace_path, branch_name."""
    unknown = set(values) - RUNTIME_FIELDS
    if unknown:
        raise ValidationFailed(field=sorted(unknown)[0], rule="is not a runtime field")
    CodingSession.objects.filter(pk=session_id).update(**values, updated_at=timezone.now())


def session_record_usage(
    *, session_id: int, tokens_input: int = 0, tokens_output: int = 0, tokens_reasoning: int = 0,
    tokens_cache_read: int = 0, tokens_cache_write: int = 0, cost: Decimal | float = 0, api_calls: int = 0,
) -> None:
    """Add usage to the session's counters in one atomic UPDATE (no read-modify-write)."""
    sql.add_usage(
        session_id=session_id, tokens_input=tokens_input, tokens_output=tokens_output,
        tokens_reasoning=tokens_reasoning, tokens_cache_read=tokens_cache_read,
        tokens_cache_write=tokens_cache_write, cost=Decimal(str(cost)), api_calls=api_calls,
    )


def session_take_resume_point(*, session_id: int) -> None:
    """The engine has restored the resume checkpoint: clear it, so a later run does not restore it again."""
    CodingSession.objects.filter(pk=session_id).update(resume_checkpoint=None, updated_at=timezone.now())
