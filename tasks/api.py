"""/api/v1/tasks: serializers validate input, services do the work, transitions are POST commands."""

from django.apps import apps
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from orchestrator.api import api_router
from orchestrator.errors import NotFound
from orchestrator.inputs import BoundedIntegerField, BoundedJSONField, IdField, id_param, int_param
from orchestrator.schema import page_of
from tasks import selectors, services
from tasks.decomposition import CAPABILITIES, DEFAULT_DEPTH, MAX_DEPTH, MIN_DEPTH, TEMPLATE_NAMES
from tasks.models import DependencyType, Task, TaskPriority, TaskStatus

CAPABILITY_CHOICES = sorted(CAPABILITIES)
HOURS_MAX = 100_000.0  # ~11 years of work for one task
TOKENS_MAX = 10**12
ORDER_MAX = 1_000_000
LIST_OFFSET_MAX = 10**9


class TaskSerializer(serializers.ModelSerializer):
    session = serializers.PrimaryKeyRelatedField(read_only=True)
    parent = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    assigned_agent = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    assigned_agent_name = serializers.CharField(
        source="assigned_agent.name", read_only=True, default=None, allow_null=True
    )
    has_subtasks = serializers.SerializerMethodField()
    allowed_actions = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = [
            "id", "session", "parent", "title", "description", "status", "priority", "required_capabilities",
            "optimistic_hours", "likely_hours", "pessimistic_hours", "expected_hours", "sigma_hours", "complexity",
            "estimated_tokens", "estimated_cost", "assigned_agent", "assigned_agent_name", "result", "error",
            "output", "opencode_session_id", "order", "decomposition_template", "decomposition_reason",
            "has_subtasks", "allowed_actions", "created_at", "updated_at", "started_at", "completed_at", "ended_at",
        ]
        read_only_fields = fields

    def get_has_subtasks(self, task) -> bool:
        value = getattr(task, "has_subtasks", None)
        return value if value is not None else task.subtasks.exists()

    def get_allowed_actions(self, task) -> list[str]:
        return task.allowed_actions()


class EstimateFieldsMixin(serializers.Serializer):
    priority = serializers.ChoiceField(choices=TaskPriority.choices, required=False)
    required_capabilities = serializers.ListField(
        child=serializers.ChoiceField(choices=CAPABILITY_CHOICES), required=False, max_length=len(CAPABILITY_CHOICES)
    )
    # Bounded so that PERT figures ((O + 4M + P) / 6, sums along the critical path) stay finite.
    optimistic_hours = serializers.FloatField(min_value=0, max_value=HOURS_MAX, required=False)
    likely_hours = serializers.FloatField(min_value=0, max_value=HOURS_MAX, required=False)
    pessimistic_hours = serializers.FloatField(min_value=0, max_value=HOURS_MAX, required=False)
    estimated_tokens = BoundedIntegerField(min_value=0, max_value=TOKENS_MAX, required=False)
    estimated_cost = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0, required=False)
    order = BoundedIntegerField(min_value=0, max_value=ORDER_MAX, required=False)


class TaskCreateSerializer(EstimateFieldsMixin):
    session = IdField()
    parent = IdField(required=False, allow_null=True)
    title = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=100_000)


class TaskUpdateSerializer(EstimateFieldsMixin):
    title = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=100_000)

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: ["cannot be changed here; status changes through the transition commands"] for name in unknown}
            )
        return attrs


class DecomposeSerializer(serializers.Serializer):
    template = serializers.ChoiceField(choices=TEMPLATE_NAMES, required=False, allow_null=True, default=None)
    max_depth = serializers.IntegerField(min_value=MIN_DEPTH, max_value=MAX_DEPTH, default=DEFAULT_DEPTH)
    auto_estimate = serializers.BooleanField(default=True)
    replace = serializers.BooleanField(default=False)


class DependencyCreateSerializer(serializers.Serializer):
    """POST /tasks/{id}/dependencies: `prerequisite` is the task this one waits for."""

    prerequisite = IdField()
    type = serializers.ChoiceField(choices=DependencyType.values, default=DependencyType.FINISH_TO_START)
    is_required = serializers.BooleanField(default=True)


class DependencySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prerequisite = serializers.IntegerField(source="prerequisite_id")
    dependent = serializers.IntegerField(source="dependent_id")
    type = serializers.CharField(source="dependency_type")
    is_required = serializers.BooleanField()


class TaskCompleteSerializer(serializers.Serializer):
    result = BoundedJSONField(required=False, default=dict)
    output = serializers.CharField(required=False, allow_blank=True, default="", max_length=1_000_000)


class TaskFailSerializer(serializers.Serializer):
    error = BoundedJSONField()


class TaskReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class AssignSerializer(serializers.Serializer):
    agent = IdField()


def _session(session_id):
    model = apps.get_model("coding_sessions", "CodingSession")
    queryset = model.objects.all()
    if hasattr(model, "deleted_at"):
        queryset = queryset.filter(deleted_at__isnull=True)
    session = queryset.filter(pk=session_id).first()
    if session is None:
        raise NotFound(f"Session {session_id} not found")
    return session


_no_body = extend_schema(request=None, responses=TaskSerializer)


@extend_schema_view(
    create=extend_schema(request=TaskCreateSerializer, responses={201: TaskSerializer}),
    partial_update=extend_schema(request=TaskUpdateSerializer, responses=TaskSerializer),
    decompose=extend_schema(request=DecomposeSerializer, responses={201: OpenApiTypes.OBJECT}),
    remove_dependency=extend_schema(request=None, responses={204: None}),
    ready=_no_body, start=_no_body, pause=_no_body, resume=_no_body,
    assign=extend_schema(request=AssignSerializer, responses=TaskSerializer),
    complete=extend_schema(request=TaskCompleteSerializer, responses=TaskSerializer),
    fail=extend_schema(request=TaskFailSerializer, responses=TaskSerializer),
    block=extend_schema(request=TaskReasonSerializer, responses=TaskSerializer),
    cancel=extend_schema(request=TaskReasonSerializer, responses=TaskSerializer),
    skip=extend_schema(request=TaskReasonSerializer, responses=TaskSerializer),
)
class TaskViewSet(viewsets.GenericViewSet):
    serializer_class = TaskSerializer
    queryset = Task.objects.none()

    def _task(self):
        return selectors.task_get(task_id=self.kwargs["pk"])

    def _input(self, serializer_class):
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def _answer(self, task, code=status.HTTP_200_OK):
        return Response(TaskSerializer(task).data, status=code)

    @extend_schema(
        parameters=[
            OpenApiParameter("session", int), OpenApiParameter("parent", int),
            OpenApiParameter("status", enum=TaskStatus.values),
            OpenApiParameter("limit", int, description="1-1000, default 200"), OpenApiParameter("offset", int),
        ],
        responses=page_of("TaskPage", {"count": serializers.IntegerField(), "results": TaskSerializer(many=True)}),
    )
    def list(self, request):
        """GET /tasks?session=&status=&parent=: tasks in plan order, paginated by `limit` and `offset`."""
        params = {}
        for name, key in (("session", "session_id"), ("parent", "parent_id")):
            value = id_param(request.query_params, name)
            if value is not None:
                params[key] = value
        status_filter = request.query_params.get("status")
        if status_filter is not None:
            if status_filter not in TaskStatus.values:
                raise serializers.ValidationError({"status": [f"must be one of {', '.join(TaskStatus.values)}"]})
            params["status"] = status_filter
        limit = min(1000, max(1, int_param(request.query_params, "limit", default=200)))
        offset = int_param(request.query_params, "offset", minimum=0, maximum=LIST_OFFSET_MAX, default=0)
        queryset = selectors.task_list(**params)
        page = list(queryset[offset : offset + limit])
        return Response({"count": queryset.count(), "results": TaskSerializer(page, many=True).data})

    def create(self, request):
        data = self._input(TaskCreateSerializer)
        session = _session(data.pop("session"))
        parent_id = data.pop("parent", None)
        parent = selectors.task_get(task_id=parent_id) if parent_id is not None else None
        task = services.task_create(session=session, parent=parent, **data)
        return self._answer(task, status.HTTP_201_CREATED)

    def retrieve(self, request, pk=None):
        return self._answer(self._task())

    def partial_update(self, request, pk=None):
        task = self._task()
        data = self._input(TaskUpdateSerializer)
        return self._answer(services.task_update(task=task, **data))

    @action(detail=True, methods=["post"])
    def decompose(self, request, pk=None):
        task = self._task()
        outcome = services.task_decompose(task=task, **self._input(DecomposeSerializer))
        task = self._task()
        return Response(
            {
                "task": TaskSerializer(task).data,
                "template": outcome["template"],
                "reason": outcome["reason"],
                "created": outcome["created"],
                "graph": selectors.task_graph(task=task),
            },
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(methods=["GET"], request=None, responses=OpenApiTypes.OBJECT)
    @extend_schema(methods=["POST"], request=DependencyCreateSerializer, responses={201: DependencySerializer})
    @action(detail=True, methods=["get", "post"], url_path="dependencies")
    def dependencies(self, request, pk=None):
        task = self._task()
        if request.method == "GET":
            return Response(selectors.task_graph(task=task))
        data = self._input(DependencyCreateSerializer)
        prerequisite = selectors.task_get(task_id=data["prerequisite"])
        link = services.task_add_dependency(
            prerequisite=prerequisite, dependent=task, dependency_type=data["type"], is_required=data["is_required"]
        )
        return Response(DependencySerializer(link).data, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["delete"], url_path=r"dependencies/(?P<dependency_id>\d+)")
    def remove_dependency(self, request, pk=None, dependency_id=None):
        dependency = selectors.task_dependency_get(task=self._task(), dependency_id=int(dependency_id))
        services.task_remove_dependency(dependency=dependency)
        return Response(status=status.HTTP_204_NO_CONTENT)

    # --- transitions -------------------------------------------------------------

    @action(detail=True, methods=["post"])
    def ready(self, request, pk=None):
        return self._answer(services.task_mark_ready(task=self._task()))

    @action(detail=True, methods=["post"])
    def assign(self, request, pk=None):
        data = self._input(AssignSerializer)
        agent = apps.get_model("agents", "Agent").objects.filter(pk=data["agent"]).first()
        if agent is None:
            raise NotFound(f"Agent {data['agent']} not found")
        return self._answer(services.task_assign(task=self._task(), agent=agent))

    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._answer(services.task_start(task=self._task()))

    @action(detail=True, methods=["post"])
    def complete(self, request, pk=None):
        data = self._input(TaskCompleteSerializer)
        return self._answer(services.task_complete(task=self._task(), result=data["result"], output=data["output"]))

    @action(detail=True, methods=["post"])
    def fail(self, request, pk=None):
        data = self._input(TaskFailSerializer)
        return self._answer(services.task_fail(task=self._task(), error=data["error"]))

    @action(detail=True, methods=["post"])
    def block(self, request, pk=None):
        data = self._input(TaskReasonSerializer)
        return self._answer(services.task_block(task=self._task(), reason=data["reason"]))

    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._answer(services.task_pause(task=self._task()))

    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._answer(services.task_resume(task=self._task()))

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        data = self._input(TaskReasonSerializer)
        return self._answer(services.task_cancel(task=self._task(), reason=data["reason"]))

    @action(detail=True, methods=["post"])
    def skip(self, request, pk=None):
        data = self._input(TaskReasonSerializer)
        return self._answer(services.task_skip(task=self._task(), reason=data["reason"]))


router = api_router()
router.register("tasks", TaskViewSet, basename="task")

urlpatterns = router.urls
