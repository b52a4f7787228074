"""REST API for agents under /api/v1/agents: serializers validate, services act."""

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from agents import routing, selectors, services
from agents.models import (
    DEFAULT_CAPACITY,
    MAX_CAPACITY,
    MIN_CAPACITY,
    MODEL_PATTERN,
    NAME_PATTERN,
    OPENCODE_AGENT_PATTERN,
    AgentStatus,
    AgentType,
    Tier,
)
from orchestrator.api import api_router
from orchestrator.errors import ValidationFailed
from orchestrator.schema import page_number_page

ROUTABLE_TIERS = [tier for tier in routing.TIERS if tier != routing.DEGRADED]


class AgentSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(read_only=True)
    agent_type = serializers.CharField(read_only=True)
    capabilities = serializers.ListField(read_only=True)
    description = serializers.CharField(read_only=True)
    opencode_agent = serializers.CharField(read_only=True)
    model_identifier = serializers.CharField(read_only=True)
    system_prompt = serializers.CharField(read_only=True)
    temperature = serializers.FloatField(read_only=True, allow_null=True)
    tools = serializers.DictField(read_only=True, allow_null=True)
    max_concurrent_tasks = serializers.IntegerField(read_only=True)
    current_load = serializers.IntegerField(read_only=True)
    utilisation = serializers.FloatField(read_only=True)
    load_level = serializers.CharField(read_only=True)
    status = serializers.CharField(read_only=True)
    draining = serializers.BooleanField(read_only=True)
    last_heartbeat_at = serializers.DateTimeField(read_only=True, allow_null=True)
    heartbeat_age_seconds = serializers.SerializerMethodField()
    tier = serializers.CharField(read_only=True)
    circuit_open = serializers.BooleanField(read_only=True)
    success_rate = serializers.FloatField(read_only=True, allow_null=True)
    total_tasks = serializers.IntegerField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def get_heartbeat_age_seconds(self, agent) -> float | None:
        return selectors.heartbeat_age_seconds(agent, now=self.context.get("now"))


class AgentWriteSerializer(serializers.Serializer):
    name = serializers.RegexField(NAME_PATTERN, max_length=64, error_messages={"invalid": "must look like AGENT-NAME"})
    agent_type = serializers.ChoiceField(choices=AgentType.choices)
    capabilities = serializers.ListField(
        child=serializers.ChoiceField(choices=routing.CAPABILITIES),
        allow_empty=False,
        max_length=len(routing.CAPABILITIES),
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    opencode_agent = serializers.RegexField(
        OPENCODE_AGENT_PATTERN,
        required=False,
        error_messages={"invalid": "must be build, plan, general or a custom agent's slug"},
    )
    model_identifier = serializers.RegexField(
        MODEL_PATTERN, required=False, allow_blank=True, allow_null=True, max_length=200,
        error_messages={"invalid": "must be provider/model"},
    )
    system_prompt = serializers.CharField(required=False, allow_blank=True, max_length=100_000)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    tools = serializers.DictField(child=serializers.BooleanField(), required=False, allow_null=True)
    max_concurrent_tasks = serializers.IntegerField(
        required=False, min_value=MIN_CAPACITY, max_value=MAX_CAPACITY, default=DEFAULT_CAPACITY
    )


class AgentPatchSerializer(AgentWriteSerializer):
    max_concurrent_tasks = serializers.IntegerField(required=False, min_value=MIN_CAPACITY, max_value=MAX_CAPACITY)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False


class RouteSerializer(serializers.Serializer):
    required_capabilities = serializers.ListField(
        child=serializers.ChoiceField(choices=routing.CAPABILITIES), allow_empty=True
    )
    preferred_agent = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    preferred_type = serializers.ChoiceField(choices=AgentType.choices, required=False, allow_null=True)
    min_tier = serializers.ChoiceField(choices=ROUTABLE_TIERS, required=False, allow_null=True)


class HeartbeatSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=[AgentStatus.AVAILABLE, AgentStatus.BUSY, AgentStatus.MAINTENANCE], required=False
    )
    load = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    tasks_in_progress = serializers.IntegerField(required=False, min_value=0, max_value=MAX_CAPACITY)


class AgentPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def _brief(agent):
    return {"id": agent.pk, "name": agent.name, "agent_type": agent.agent_type}


AGENT_ID = OpenApiParameter("id", str, OpenApiParameter.PATH, description="the agent's id or its name (AGENT-...)")
RouteResponse = inline_serializer(
    "AgentRouteDecision",
    {
        "agent": serializers.DictField(),
        "score": serializers.FloatField(),
        "reason": serializers.CharField(),
        "alternatives": serializers.ListField(child=serializers.DictField()),
    },
)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("type", enum=AgentType.values), OpenApiParameter("status", enum=AgentStatus.values),
            OpenApiParameter("tier", enum=Tier.values), OpenApiParameter("capability", str),
            OpenApiParameter("ordering", str), OpenApiParameter("page", int), OpenApiParameter("page_size", int),
        ],
        responses=page_number_page("AgentPage", AgentSerializer),
    ),
    create=extend_schema(request=AgentWriteSerializer, responses={201: AgentSerializer}),
    retrieve=extend_schema(parameters=[AGENT_ID], responses=AgentSerializer),
    partial_update=extend_schema(parameters=[AGENT_ID], request=AgentPatchSerializer, responses=AgentSerializer),
    destroy=extend_schema(
        parameters=[AGENT_ID, OpenApiParameter("drain", bool)],
        responses={204: None, 202: inline_serializer(
            "AgentDraining", {"result": serializers.CharField(), "agent": AgentSerializer()}
        )},
    ),
    route=extend_schema(request=RouteSerializer, responses=RouteResponse),
    heartbeat=extend_schema(parameters=[AGENT_ID], request=HeartbeatSerializer, responses=AgentSerializer),
    performance=extend_schema(parameters=[AGENT_ID], responses=OpenApiTypes.OBJECT),
)
class AgentViewSet(viewsets.ViewSet):
    """Register, list, inspect, change and remove agents; route a task (dry run); heartbeats."""

    pagination_class = AgentPagination

    def _render(self, request, agent, http_status=status.HTTP_200_OK):
        return Response(AgentSerializer(agent, context={"now": timezone.now()}).data, status=http_status)

    def list(self, request):
        params = request.query_params
        capabilities = [name for value in params.getlist("capability") for name in value.split(",") if name]
        errors = {}
        for key, allowed in (("type", AgentType.values), ("status", AgentStatus.values), ("tier", Tier.values)):
            if params.get(key) and params[key] not in allowed:
                errors[key] = [f"must be one of {', '.join(allowed)}"]
        if errors:
            raise ValidationFailed(errors=errors)
        queryset = selectors.agent_list(
            agent_type=params.get("type"),
            status=params.get("status"),
            tier=params.get("tier"),
            capabilities=capabilities,
            ordering=params.get("ordering"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(queryset, request, view=self)
        data = AgentSerializer(page, many=True, context={"now": timezone.now()}).data
        return paginator.get_paginated_response(data)

    def create(self, request):
        serializer = AgentWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agent = services.agent_register(**serializer.validated_data)
        return self._render(request, agent, status.HTTP_201_CREATED)

    def retrieve(self, request, pk=None):
        return self._render(request, selectors.agent_get(pk))

    def partial_update(self, request, pk=None):
        agent = selectors.agent_get(pk)
        serializer = AgentPatchSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        agent = services.agent_update(agent=agent, **serializer.validated_data)
        return self._render(request, agent)

    def destroy(self, request, pk=None):
        agent = selectors.agent_get(pk)
        drain = request.query_params.get("drain", "").lower() in ("1", "true", "yes")
        outcome = services.agent_delete(agent=agent, drain=drain)
        if outcome == "draining":
            agent = selectors.agent_get(agent.pk)
            body = AgentSerializer(agent, context={"now": timezone.now()}).data
            return Response({"result": "draining", "agent": body}, status=status.HTTP_202_ACCEPTED)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=False, methods=["post"], url_path="route")
    def route(self, request):
        """Dry run: the routing decision for these requirements, reserving nothing."""
        serializer = RouteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        decision = services.agent_route(
            required_capabilities=data["required_capabilities"],
            preferred_agent=data.get("preferred_agent") or None,
            preferred_type=data.get("preferred_type"),
            min_tier=data.get("min_tier"),
            reserve=False,
        )
        return Response(
            {
                "agent": _brief(decision.agent),
                "score": decision.score,
                "reason": decision.reason,
                "alternatives": [
                    {**_brief(alternative.agent), "score": alternative.score} for alternative in decision.alternatives
                ],
            }
        )

    @action(detail=True, methods=["post"])
    def heartbeat(self, request, pk=None):
        agent = selectors.agent_get(pk)
        serializer = HeartbeatSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agent = services.agent_heartbeat(agent=agent, **serializer.validated_data)
        return self._render(request, agent)

    @action(detail=True, methods=["get"])
    def performance(self, request, pk=None):
        return Response(selectors.agent_performance(selectors.agent_get(pk)))


router = api_router()
router.register("agents", AgentViewSet, basename="agent")

urlpatterns = router.urls
