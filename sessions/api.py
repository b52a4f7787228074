"""REST API for coding sessions (/api/v1/sessions): serializers validate types, services do the rest.

Transitions are POST commands (/sessions/{id}/start); status is never writable.
Domain errors become `{"error": {"code", "message", "details"}}` through
orchestrator.api.exception_handler (400, 404, 409).
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from agents.models import Agent
from orchestrator.api import api_router
from orchestrator.errors import PermissionRefused, ValidationFailed
from orchestrator.inputs import BoundedIntegerField, BoundedJSONField, IdField, int_param
from orchestrator.roles import user_can_view
from orchestrator.schema import page_of
from sessions import (  # the monitor's restore and follow-up messages
    checkpoints,
    followups,
    permissions,
    repositories,
    rules,
    selectors,
    services,
)
from sessions.filters import parse_approval_params, parse_list_params
from sessions.models import (
    Checkpoint,
    CodingSession,
    PermissionReply,
    PermissionRequest,
    PermissionRequestStatus,
    SessionEvent,
    SessionTransition,
)
from sessions.planning import services as planning_services
from sessions.services import Actor

# --- output ----------------------------------------------------------------------------


class SessionSerializer(serializers.ModelSerializer):
    """A session as lists show it (no prompt; one query for any page size)."""

    priority_name = serializers.CharField(read_only=True)
    agent = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()
    allowed_actions = serializers.SerializerMethodField()
    health_score = serializers.FloatField(read_only=True)
    is_at_risk = serializers.BooleanField(read_only=True)
    elapsed_seconds = serializers.SerializerMethodField()
    metrics = serializers.SerializerMethodField()

    class Meta:
        model = CodingSession
        fields = [
            "id", "reference", "title", "description", "session_type", "priority", "priority_name",
            "status", "allowed_actions", "repository", "model_identifier", "max_duration_seconds",
            "max_retries", "token_budget_soft", "token_budget_hard", "cost_budget_soft", "cost_budget_hard",
            "permission_policy", "parent", "agent", "tags", "metadata", "created_by", "created_at",
            "updated_at", "health_score", "is_at_risk", "elapsed_seconds", "metrics",
        ]
        read_only_fields = fields

    def get_agent(self, session) -> dict | None:
        if session.agent_id is None:
            return None
        return {"id": session.agent_id, "name": session.agent.name}

    def get_created_by(self, session) -> str | None:
        return session.created_by.get_username() if session.created_by_id else None

    def get_allowed_actions(self, session) -> list[str]:
        return session.allowed_actions()

    def get_elapsed_seconds(self, session) -> float:
        return round(session.elapsed_seconds(), 3)

    def get_metrics(self, session) -> dict:
        return {
            "started_at": session.started_at,
            "completed_at": session.completed_at,
            "failed_at": session.failed_at,
            "ended_at": session.ended_at,
            "duration_seconds": round(session.duration_seconds, 3),
            "retry_count": session.retry_count,
            "checkpoint_count": session.checkpoint_count,
            "last_checkpoint_at": session.last_checkpoint_at,
            "tokens": {
                "input": session.tokens_input,
                "output": session.tokens_output,
                "reasoning": session.tokens_reasoning,
                "cache_read": session.tokens_cache_read,
                "cache_write": session.tokens_cache_write,
            },
            "cost": str(session.cost),
            "api_calls": session.api_calls,
            "error": session.error or None,
            "result": session.result or None,
        }


class SessionDetailSerializer(SessionSerializer):
    resume_checkpoint = serializers.SerializerMethodField()
    opencode = serializers.SerializerMethodField()

    class Meta(SessionSerializer.Meta):
        fields = [*SessionSerializer.Meta.fields, "initial_prompt", "resume_checkpoint", "opencode"]
        read_only_fields = fields

    def get_resume_checkpoint(self, session) -> int | None:
        checkpoint = session.resume_checkpoint
        return checkpoint.sequence if checkpoint else None

    def get_opencode(self, session) -> dict:
        return {
            "session_id": session.opencode_session_id or None,
            "server_url": session.opencode_server_url or None,
            "workspace_path": session.workspace_path or None,
            "branch_name": session.branch_name or None,
            "worker_id": session.worker_id or None,
            "worker_heartbeat_at": session.worker_heartbeat_at,
        }


class CheckpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = Checkpoint
        fields = ["sequence", "created_at", "data", "opencode_message_id", "git_ref"]


class TransitionSerializer(serializers.ModelSerializer):
    actor = serializers.SerializerMethodField()

    class Meta:
        model = SessionTransition
        fields = ["id", "from_status", "to_status", "action", "actor", "reason", "created_at"]

    def get_actor(self, record) -> dict:
        return {"kind": record.actor_kind, "label": record.actor_label, "user_id": record.actor_user_id}


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = SessionEvent
        fields = ["id", "type", "payload", "created_at"]


# --- input -----------------------------------------------------------------------------


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": 4},
            {
                "type": "string",
                "enum": [*rules.PRIORITIES, *(n.lower() for n in rules.PRIORITIES), "0", "1", "2", "3", "4"],
            },
        ],
        "description": "CRITICAL 0, HIGH 1, MEDIUM 2, LOW 3, DEFERRED 4 (name in any case, or the number)",
    }
)
class PriorityField(serializers.Field):
    """CRITICAL, HIGH, MEDIUM, LOW, DEFERRED (any case) or 0-4."""

    default_error_messages = {"invalid": "must be one of CRITICAL, HIGH, MEDIUM, LOW, DEFERRED or 0-4"}

    def to_internal_value(self, data):
        try:
            return rules.parse_priority(data)
        except ValueError:
            self.fail("invalid")

    def to_representation(self, value):
        return value


class SessionCreateSerializer(serializers.Serializer):
    """Types only; the rules (lengths, ranges, formats) are checked by session_create. The required
    fields default to None so that a missing one reaches those rules (400 naming it) and not the call."""

    title = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False, default=None)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    session_type = serializers.CharField(required=False, default="execution")
    priority = PriorityField(required=False, default=rules.PRIORITY_DEFAULT)
    initial_prompt = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False, default=None)
    repository = serializers.CharField(required=False, allow_blank=True, default=None)
    model_identifier = serializers.CharField(required=False, allow_blank=True, default="")
    max_duration_seconds = BoundedIntegerField(required=False, default=rules.DURATION_DEFAULT)
    max_retries = BoundedIntegerField(required=False, default=rules.RETRIES_DEFAULT)
    token_budget_soft = BoundedIntegerField(
        required=False, allow_null=True, default=None, min_value=0, max_value=rules.TOKEN_BUDGET_MAX
    )
    token_budget_hard = BoundedIntegerField(
        required=False, allow_null=True, default=None, min_value=0, max_value=rules.TOKEN_BUDGET_MAX
    )
    cost_budget_soft = serializers.DecimalField(
        max_digits=12, decimal_places=4, required=False, allow_null=True, default=None
    )
    cost_budget_hard = serializers.DecimalField(
        max_digits=12, decimal_places=4, required=False, allow_null=True, default=None
    )
    permission_policy = BoundedJSONField(required=False, default=dict, max_bytes=16_384, max_depth=2)
    parent = serializers.PrimaryKeyRelatedField(
        queryset=CodingSession.objects.filter(deleted_at__isnull=True), required=False, allow_null=True,
        default=None,
    )
    agent = serializers.PrimaryKeyRelatedField(
        queryset=Agent.objects.all(), required=False, allow_null=True, default=None
    )
    tags = BoundedJSONField(required=False, default=list, max_bytes=4_096, max_depth=1)
    metadata = BoundedJSONField(
        required=False, default=dict, max_bytes=rules.METADATA_MAX_BYTES, max_depth=rules.METADATA_MAX_DEPTH
    )
    start = serializers.BooleanField(required=False, default=False)
    # Checked by sessions.planning (400 naming `planning.<field>`, or each plan finding with its task keys).
    planning = BoundedJSONField(required=False, default=None, max_bytes=4_096, max_depth=2)
    plan = BoundedJSONField(required=False, default=None, max_bytes=1_000_000, max_depth=6)

    def to_internal_value(self, data):
        # PrimaryKeyRelatedField would hand 2^70 to the database (an overflow there, a 500 here).
        if isinstance(data, dict):
            for name in ("parent", "agent"):
                if data.get(name) is not None:
                    try:
                        IdField().run_validation(data[name])
                    except serializers.ValidationError as refused:
                        raise serializers.ValidationError({name: refused.detail}) from None
        return super().to_internal_value(data)


class PermissionRequestSerializer(serializers.ModelSerializer):
    answered_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = PermissionRequest
        fields = [
            "id", "task", "opencode_id", "permission", "patterns", "metadata", "status", "reply",
            "answered_by", "answered_at", "forwarded_at", "created_at",
        ]
        read_only_fields = fields


class PermissionReplySerializer(serializers.Serializer):
    reply = serializers.ChoiceField(choices=PermissionReply.values)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class FailSerializer(ReasonSerializer):
    error = BoundedJSONField(required=False, default=None, allow_null=True)


class CompleteSerializer(ReasonSerializer):
    result = BoundedJSONField(required=False, default=None, allow_null=True)
    partial = serializers.BooleanField(required=False, default=False)


class RetrySerializer(ReasonSerializer):
    start = serializers.BooleanField(required=False, default=False)


class CheckpointCreateSerializer(serializers.Serializer):
    data = BoundedJSONField(required=False, default=dict, max_bytes=262_144, max_depth=32)
    opencode_message_id = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
    git_ref = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)


class MessageSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=followups.MESSAGE_MAX)


class MessageOutcomeSerializer(serializers.Serializer):
    delivery = serializers.ChoiceField(choices=["follow_up_session", "next_turn"])
    event_id = serializers.IntegerField()
    task_id = serializers.IntegerField(allow_null=True)
    follow_up_session = serializers.DictField(allow_null=True)


# --- endpoints -------------------------------------------------------------------------

LIST_PARAMETERS = [
    OpenApiParameter("status", str, description="comma-separated statuses"),
    OpenApiParameter("session_type", str, description="comma-separated types (alias: type)"),
    OpenApiParameter("priority", str, description="comma-separated names or 0-4"),
    OpenApiParameter("agent", int),
    OpenApiParameter("repository", str),
    OpenApiParameter("tag", str),
    OpenApiParameter("search", str, description="text in title, description or prompt (alias: q)"),
    OpenApiParameter("created_after", OpenApiTypes.DATETIME),
    OpenApiParameter("created_before", OpenApiTypes.DATETIME),
    OpenApiParameter("cursor", int, description="next_cursor of the previous page"),
    OpenApiParameter("page_size", int, description="1-100, default 50"),
]


def _page_of(name, item_serializer, **extra):
    return page_of(name, {"results": item_serializer(many=True), **extra})


_command = extend_schema(request=ReasonSerializer, responses=SessionDetailSerializer)


@extend_schema_view(
    list=extend_schema(
        parameters=LIST_PARAMETERS,
        responses=_page_of(
            "SessionPage", SessionSerializer, next_cursor=serializers.IntegerField(allow_null=True),
            next=serializers.CharField(allow_null=True), page_size=serializers.IntegerField(),
        ),
    ),
    create=extend_schema(request=SessionCreateSerializer, responses={201: SessionDetailSerializer}),
    retrieve=extend_schema(responses=SessionDetailSerializer),
    destroy=extend_schema(responses={204: None}),
    start=_command, pause=_command, resume=_command, stop=_command, cancel=_command,
    complete=extend_schema(request=CompleteSerializer, responses=SessionDetailSerializer),
    fail=extend_schema(request=FailSerializer, responses=SessionDetailSerializer),
    retry=extend_schema(request=RetrySerializer, responses=SessionDetailSerializer),
    restore_checkpoint=extend_schema(request=None, responses=SessionDetailSerializer),
    transitions=extend_schema(responses=_page_of("SessionTransitions", TransitionSerializer)),
    events=extend_schema(
        parameters=[OpenApiParameter("after", int), OpenApiParameter("limit", int, description="1-500")],
        responses=_page_of("SessionEvents", EventSerializer, next_after=serializers.IntegerField(allow_null=True)),
    ),
    stats=extend_schema(responses=OpenApiTypes.OBJECT),
    permissions=extend_schema(
        parameters=[OpenApiParameter("status", enum=PermissionRequestStatus.values)],
        responses=_page_of("SessionPermissionRequests", PermissionRequestSerializer),
    ),
    reply_permission=extend_schema(request=PermissionReplySerializer, responses=PermissionRequestSerializer),
)
class SessionViewSet(viewsets.ViewSet):
    lookup_value_regex = r"\d+"

    def _actor(self):
        return Actor.of_user(self.request.user)

    def _get(self, pk):
        return selectors.session_get_for_user(self.request.user, pk)

    def _input(self, serializer_class):
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def _detail(self, session, status_code=status.HTTP_200_OK):
        session = selectors.session_get_for_user(self.request.user, session.pk)
        return Response(SessionDetailSerializer(session).data, status=status_code)

    def list(self, request):
        filters, cursor, page_size = parse_list_params(request.query_params)
        page = selectors.session_list(filters=filters, cursor=cursor, page_size=page_size)
        next_url = None
        if page.next_cursor is not None:
            params = request.query_params.copy()
            params["cursor"] = str(page.next_cursor)
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        return Response(
            {
                "results": SessionSerializer(page.items, many=True).data,
                "next_cursor": page.next_cursor,
                "next": next_url,
                "page_size": page_size,
            }
        )

    def create(self, request):
        data = dict(self._input(SessionCreateSerializer))
        if data["repository"] and data["repository"].strip():
            try:
                data["repository"] = repositories.repository_validate(path=data["repository"])
            except ValidationFailed as refused:
                # Name every broken rule at once, as session_create does.
                errors = {**rules.validate_session_input(data), "repository": refused.errors["repository"]}
                raise ValidationFailed(errors=errors) from None
        planning, plan = data.pop("planning"), data.pop("plan")
        if planning is None and plan is None:
            session = services.session_create(actor=self._actor(), **data)
        else:
            session = planning_services.session_create_planned(
                actor=self._actor(), planning=planning, plan=plan, **data
            )
        # The instance just inserted is complete (its creator and agent are the objects passed in):
        # no need to read it back.
        return Response(SessionDetailSerializer(session).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request, pk=None):
        return Response(SessionDetailSerializer(self._get(pk)).data)

    def destroy(self, request, pk=None):
        services.session_delete(session=self._get(pk), actor=self._actor())
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _command(self, pk, service, serializer_class=ReasonSerializer, **extra):
        # The service locks and reads the row itself (NotFound for a missing or deleted session):
        # reading it here first as well was one more query on every command, API start included.
        if not user_can_view(self.request.user):
            raise PermissionRefused("Sign in to see sessions")
        data = self._input(serializer_class)
        return self._detail(service(session=CodingSession(pk=int(pk)), actor=self._actor(), **data, **extra))

    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._command(pk, services.session_start)

    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._command(pk, services.session_pause)

    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._command(pk, services.session_resume)

    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        return self._command(pk, services.session_stop)

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._command(pk, services.session_cancel)

    @action(detail=True, methods=["post"])
    def complete(self, request, pk=None):
        return self._command(pk, services.session_complete, CompleteSerializer)

    @action(detail=True, methods=["post"])
    def fail(self, request, pk=None):
        return self._command(pk, services.session_fail, FailSerializer)

    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        session = self._get(pk)
        data = self._input(RetrySerializer)
        session = services.session_retry(session=session, actor=self._actor(), reason=data["reason"])
        if data["start"]:
            session = services.session_start(session=session, actor=self._actor(), reason=data["reason"])
        return self._detail(session)

    @extend_schema(methods=["GET"], responses=_page_of("SessionCheckpoints", CheckpointSerializer))
    @extend_schema(methods=["POST"], request=CheckpointCreateSerializer, responses={201: CheckpointSerializer})
    @action(detail=True, methods=["get", "post"])
    def checkpoints(self, request, pk=None):
        session = self._get(pk)
        if request.method == "GET":
            return Response({"results": CheckpointSerializer(selectors.session_checkpoints(session), many=True).data})
        data = self._input(CheckpointCreateSerializer)
        checkpoint = services.session_add_checkpoint(session=session, actor=self._actor(), **data)
        return Response(CheckpointSerializer(checkpoint).data, status=status.HTTP_201_CREATED)

    @action(
        detail=True, methods=["post"], url_path=r"checkpoints/(?P<sequence>\d+)/restore",
        url_name="restore-checkpoint",
    )
    def restore_checkpoint(self, request, pk=None, sequence=None):
        session = self._get(pk)
        # The console's restore too: the resume point, and the worktree reset now when it exists.
        session = checkpoints.checkpoint_restore(session=session, sequence=int(sequence), actor=self._actor())
        return self._detail(session)

    @extend_schema(request=MessageSerializer, responses={201: MessageOutcomeSerializer})
    @action(detail=True, methods=["post"], url_path="messages", url_name="messages")
    def send_message(self, request, pk=None):
        """An operator's follow-up: {"text"}. A finished session gets a follow-up session (a child on
        a branch continuing its own, started at once); a running task gets the message as its next
        turn; any other state is refused with 409 naming it."""
        session = self._get(pk)
        data = self._input(MessageSerializer)
        outcome = followups.session_send_message(session=session, text=data["text"], actor=self._actor())
        child = None
        if outcome.child is not None:
            child = SessionDetailSerializer(selectors.session_get_for_user(request.user, outcome.child.pk)).data
        return Response({
            "delivery": outcome.delivery, "event_id": outcome.event.pk,
            "task_id": outcome.task.pk if outcome.task is not None else None,
            "follow_up_session": child,
        }, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["get"])
    def transitions(self, request, pk=None):
        session = self._get(pk)
        return Response({"results": TransitionSerializer(selectors.session_transitions(session), many=True).data})

    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        session = self._get(pk)
        after = int_param(request.query_params, "after", minimum=0)
        limit = int_param(request.query_params, "limit", minimum=1) or selectors.EVENTS_LIMIT_MAX
        items = selectors.session_events_after(session.pk, after, limit=limit)
        return Response(
            {
                "results": EventSerializer(items, many=True).data,
                "next_after": items[-1].pk if items else after,
            }
        )

    @action(detail=True, methods=["get"])
    def permissions(self, request, pk=None):
        """Tool permission requests of the session; ?status=pending for those awaiting an answer."""
        session = self._get(pk)
        wanted = request.query_params.get("status")
        if wanted and wanted not in PermissionRequestStatus.values:
            raise ValidationFailed(field="status", rule=f"must be one of {', '.join(PermissionRequestStatus.values)}")
        items = selectors.permission_requests_for(session=session, status=wanted or None)
        return Response({"results": PermissionRequestSerializer(items, many=True).data})

    @action(detail=True, methods=["post"], url_path=r"permissions/(?P<request_id>\d+)/reply")
    def reply_permission(self, request, pk=None, request_id=None):
        """Answer a pending permission request: {"reply": "once" | "always" | "reject"}."""
        session = self._get(pk)
        data = self._input(PermissionReplySerializer)
        answered = permissions.permission_request_reply(
            session=session, request_id=int(request_id), reply=data["reply"], actor=self._actor()
        )
        return Response(PermissionRequestSerializer(answered).data)

    @action(detail=False, methods=["get"])
    def stats(self, request):
        return Response(selectors.session_stats())


router = api_router()
router.register("sessions", SessionViewSet, basename="session")

urlpatterns = router.urls


# --- approvals across sessions ----------------------------------------------------------------


class ApprovalSerializer(PermissionRequestSerializer):
    """A pending request with where it comes from and how long until its default applies."""

    session = serializers.SerializerMethodField()
    agent = serializers.SerializerMethodField()
    seconds_left = serializers.SerializerMethodField()

    class Meta(PermissionRequestSerializer.Meta):
        fields = [*PermissionRequestSerializer.Meta.fields, "session", "agent", "seconds_left"]
        read_only_fields = fields

    def get_session(self, request) -> dict:
        return {"id": request.session_id, "reference": request.session.reference, "title": request.session.title,
                "repository": request.session.repository}

    def get_agent(self, request) -> dict | None:
        agent = request.task.assigned_agent if request.task_id and request.task.assigned_agent_id else None
        return {"id": agent.pk, "name": agent.name} if agent else None

    def get_seconds_left(self, request) -> float:
        return round(selectors.approval_seconds_left(request), 1)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("session", int), OpenApiParameter("permission", str, description="tool name"),
            OpenApiParameter("agent", int), OpenApiParameter("repository", str),
            OpenApiParameter("cursor", int, description="next_cursor of the previous page"),
            OpenApiParameter("page_size", int, description="1-100, default 50"),
        ],
        responses=_page_of("ApprovalPage", ApprovalSerializer, next_cursor=serializers.IntegerField(allow_null=True),
                           next=serializers.CharField(allow_null=True)),
    ),
)
class ApprovalViewSet(viewsets.ViewSet):
    """Pending tool-permission requests across sessions, oldest first (answer them with
    POST /sessions/{id}/permissions/{request id}/reply)."""

    def list(self, request):
        if not user_can_view(request.user):
            raise PermissionRefused("Sign in to see approvals")
        filters, cursor, page_size = parse_approval_params(request.query_params)
        page = selectors.approvals_pending(filters=filters, cursor=cursor, page_size=page_size)
        next_url = None
        if page.next_cursor is not None:
            params = request.query_params.copy()
            params["cursor"] = str(page.next_cursor)
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        return Response({"results": ApprovalSerializer(page.items, many=True).data,
                         "next_cursor": page.next_cursor, "next": next_url})


router.register("approvals", ApprovalViewSet, basename="approval")
urlpatterns = router.urls
