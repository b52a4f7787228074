"""Services for tool-permission requests (OpenCode's `permission.asked`).

The worker records requests and forwards answers; operators answer through the
API or the console. Every change is a compare-and-set on the request's status,
so an operator's answer and the expiry default can never both apply.
"""

from django.db import transaction
from django.utils import timezone

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from sessions.models import CodingSession, PermissionReply, PermissionRequest
from sessions.models import PermissionRequestStatus as P
from sessions.services import Actor, as_actor, session_record_event


def permission_request_record(
    *, session_id: int, task_id: int, opencode_session_id: str, request: dict,
) -> PermissionRequest:
    """Store a request OpenCode asked (once per OpenCode permission id)."""
    record, _ = PermissionRequest.objects.get_or_create(
        session_id=session_id,
        opencode_id=request["id"],
        defaults={
            "task_id": task_id,
            "opencode_session_id": opencode_session_id,
            "permission": request.get("permission") or "",
            "patterns": request.get("patterns") or [],
            "metadata": request.get("metadata") or {},
        },
    )
    return record


def permission_request_reply(*, session: CodingSession, request_id: int, reply: str, actor: Actor) -> PermissionRequest:
    """An operator's answer: once, always or reject. Conflict when it is no longer pending."""
    if reply not in PermissionReply.values:
        raise ValidationFailed(field="reply", rule=f"must be one of {', '.join(PermissionReply.values)}")
    actor = as_actor(actor)
    request = PermissionRequest.objects.filter(session=session, pk=request_id).first()
    if request is None:
        raise NotFound(f"{session.reference} has no permission request {request_id}", details={"id": request_id})
    with transaction.atomic():
        answered = PermissionRequest.objects.filter(pk=request.pk, status=P.PENDING).update(
            status=P.ANSWERED, reply=reply, answered_by=actor.user, answered_at=timezone.now()
        )
        if not answered:
            request.refresh_from_db()
            raise Conflict(
                f"Permission request {request_id} is already {request.status} ({request.reply})",
                details={"current": request.status, "reply": request.reply},
            )
        session_record_event(session=session, type="permission.answered", payload={
            "request_id": request.pk, "opencode_id": request.opencode_id, "permission": request.permission,
            "reply": reply, "actor": {"kind": actor.kind, "label": actor.label},
        })
    request.refresh_from_db()
    return request


def permission_request_expire(*, session: CodingSession, opencode_id: str, reply: str, after_seconds: float) -> bool:
    """Apply the default reply to a request still pending after its expiry; False if it was answered."""
    with transaction.atomic():
        expired = PermissionRequest.objects.filter(
            session_id=session.pk, opencode_id=opencode_id, status=P.PENDING
        ).update(status=P.EXPIRED, reply=reply, answered_at=timezone.now())
        if expired:
            session_record_event(session=session, type="permission.expired", payload={
                "opencode_id": opencode_id, "reply": reply, "after_seconds": after_seconds,
            })
    return bool(expired)


def permission_requests_to_forward(*, session_id: int) -> list[PermissionRequest]:
    """Answers (or expiry defaults) the worker has not yet sent to OpenCode."""
    return list(
        PermissionRequest.objects.filter(
            session_id=session_id, status__in=[P.ANSWERED, P.EXPIRED], forwarded_at__isnull=True
        ).order_by("id")
    )


def permission_request_forwarded(*, request: PermissionRequest) -> None:
    PermissionRequest.objects.filter(pk=request.pk).update(forwarded_at=timezone.now())
