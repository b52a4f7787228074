"""REST API for contexts under /api/v1/contexts: serializers validate, services act."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

from contexts import documents, selectors, services
from contexts.models import ChangeAction, Scope
from orchestrator.api import api_router
from orchestrator.errors import NotFound, ValidationFailed
from orchestrator.inputs import IdField, id_param
from orchestrator.schema import page_number_page


class ContextSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    scope = serializers.CharField(read_only=True)
    name = serializers.CharField(read_only=True)
    session = serializers.IntegerField(source="session_id", read_only=True, allow_null=True)
    agent = serializers.IntegerField(source="agent_id", read_only=True, allow_null=True)
    version = serializers.IntegerField(read_only=True)
    size = serializers.SerializerMethodField()
    expires_at = serializers.DateTimeField(read_only=True, allow_null=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)
    last_used_at = serializers.DateTimeField(read_only=True, allow_null=True)

    def get_size(self, context) -> int:
        return documents.document_size(context.data)


class ContextSerializer(ContextSummarySerializer):
    data = serializers.JSONField(read_only=True)
    created_by = serializers.SerializerMethodField()
    source = serializers.SerializerMethodField()

    def get_created_by(self, context) -> str | None:
        return context.created_by.get_username() if context.created_by_id else None

    def get_source(self, context) -> dict | None:
        if context.shared_at is None:
            return None
        return {
            "context": context.source_context_id,
            "version": context.source_version,
            "strategy": context.source_strategy,
            "shared_at": serializers.DateTimeField().to_representation(context.shared_at),
        }


class ChangeSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    path = serializers.CharField()
    action = serializers.CharField()
    old_value = serializers.JSONField()
    new_value = serializers.JSONField()
    actor = serializers.CharField()
    note = serializers.CharField()
    created_at = serializers.DateTimeField()

    # An absent value is left out rather than shown as null, which would read as a stored null.
    def to_representation(self, change):
        data = super().to_representation(change)
        if change.action == ChangeAction.ADD:
            del data["old_value"]
        if change.action == ChangeAction.REMOVE:
            del data["new_value"]
        return data


class CreateSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=Scope.values)
    name = serializers.CharField(max_length=200)
    data = serializers.JSONField(required=False, default=dict)
    session = IdField(required=False, allow_null=True)
    agent = IdField(required=False, allow_null=True)


class UpdateSerializer(serializers.Serializer):
    changes = serializers.DictField(child=serializers.JSONField(allow_null=True), required=False, default=dict)
    delete = serializers.ListField(child=serializers.CharField(allow_blank=True), required=False, default=list)
    expected_version = IdField()

    def validate(self, attrs):
        both = set(attrs["changes"]) & set(attrs["delete"])
        if both:
            raise serializers.ValidationError({"delete": [f"{path} is also in changes" for path in sorted(both)]})
        if not attrs["changes"] and not attrs["delete"]:
            raise serializers.ValidationError({"changes": ["name at least one path to set or delete"]})
        return attrs


class MergeSerializer(serializers.Serializer):
    sources = serializers.ListField(child=IdField(), allow_empty=False, max_length=20)
    strategy = serializers.ChoiceField(choices=services.MERGE_STRATEGIES)
    target = IdField(required=False, allow_null=True)
    resolutions = serializers.DictField(child=serializers.JSONField(allow_null=True), required=False, allow_null=True)
    expected_version = IdField(required=False, allow_null=True)


class ShareSerializer(serializers.Serializer):
    session = IdField()
    strategy = serializers.ChoiceField(choices=services.SHARE_STRATEGIES, default=documents.DEEP_MERGE)
    resolutions = serializers.DictField(child=serializers.JSONField(allow_null=True), required=False, allow_null=True)


MergeResponse = inline_serializer(
    "ContextMergeResult",
    {
        "context": ContextSerializer(),
        "conflicts": serializers.ListField(child=serializers.DictField()),
        "changes": serializers.DictField(),
    },
)
ValueResponse = inline_serializer(
    "ContextValue",
    {"path": serializers.CharField(), "value": serializers.JSONField(), "version": serializers.IntegerField()},
)
DiffResponse = inline_serializer(
    "ContextDiff",
    {
        "from": serializers.DictField(),
        "to": serializers.DictField(),
        "added": serializers.DictField(),
        "removed": serializers.DictField(),
        "changed": serializers.DictField(),
    },
)


class Pages(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def _session(session_id):
    from sessions.models import CodingSession

    session = CodingSession.objects.filter(pk=session_id).first()
    if session is None:
        raise NotFound(f"Session {session_id} does not exist", details={"session": session_id})
    return session


def _agent(agent_id):
    from agents.models import Agent

    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        raise NotFound(f"Agent {agent_id} does not exist", details={"agent": agent_id})
    return agent


def _merge_body(outcome, serializer_context):
    return {
        "context": ContextSerializer(outcome.context, context=serializer_context).data,
        "conflicts": [conflict.as_dict() for conflict in outcome.conflicts],
        "changes": outcome.changes.as_dict(),
    }


class ContextViewSet(viewsets.ViewSet):
    """Versioned JSON documents; writes name the version they read (409 when stale)."""

    lookup_value_regex = r"\d+"
    serializer_class = ContextSerializer

    def _get(self, request, pk):
        return selectors.context_get_for_user(request.user, pk)

    @extend_schema(
        responses=page_number_page("ContextPage", ContextSummarySerializer),
        parameters=[
            OpenApiParameter("scope", enum=Scope.values),
            OpenApiParameter("session", int),
            OpenApiParameter("agent", int),
            OpenApiParameter("name", str),
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int),
        ],
    )
    def list(self, request):
        queryset = selectors.context_list(
            scope=request.query_params.get("scope"),
            session_id=id_param(request.query_params, "session"),
            agent_id=id_param(request.query_params, "agent"),
            name=request.query_params.get("name"),
        )
        paginator = Pages()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(ContextSummarySerializer(page, many=True).data)

    @extend_schema(request=CreateSerializer, responses={201: ContextSerializer})
    def create(self, request):
        serializer = CreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        context = services.context_create(
            scope=values["scope"],
            name=values["name"],
            data=values["data"],
            session=_session(values["session"]) if values.get("session") else None,
            agent=_agent(values["agent"]) if values.get("agent") else None,
            actor=request.user,
        )
        return Response(ContextSerializer(context).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=ContextSerializer)
    def retrieve(self, request, pk=None):
        return Response(ContextSerializer(self._get(request, pk)).data)

    @extend_schema(request=UpdateSerializer, responses=ContextSerializer)
    def partial_update(self, request, pk=None):
        context = self._get(request, pk)
        serializer = UpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        changes = dict(values["changes"])
        changes.update({path: documents.DELETE for path in values["delete"]})
        services.context_set(
            context=context, changes=changes, expected_version=values["expected_version"], actor=request.user
        )
        return Response(ContextSerializer(context).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        services.context_delete(context=self._get(request, pk), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses=ValueResponse, parameters=[OpenApiParameter("path", str, required=True)])
    @action(detail=True, methods=["get"])
    def value(self, request, pk=None):
        context = self._get(request, pk)
        path = request.query_params.get("path")
        if path is None:
            raise ValidationFailed(field="path", rule="is required (?path=config.model)")
        value = services.context_get_value(context=context, path=path)
        return Response({"path": path, "value": value, "version": context.version})

    @extend_schema(
        responses=page_number_page("ContextChangePage", ChangeSerializer),
        parameters=[OpenApiParameter("path", str), OpenApiParameter("page", int), OpenApiParameter("page_size", int)],
    )
    @action(detail=True, methods=["get"])
    def history(self, request, pk=None):
        context = self._get(request, pk)
        queryset = selectors.context_history(context=context, path=request.query_params.get("path"))
        paginator = Pages()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(ChangeSerializer(page, many=True).data)

    @extend_schema(responses=DiffResponse, parameters=[OpenApiParameter("other", int, required=True)])
    @action(detail=True, methods=["get"])
    def diff(self, request, pk=None):
        context = self._get(request, pk)
        other_id = id_param(request.query_params, "other")
        if other_id is None:
            raise ValidationFailed(field="other", rule="is required (?other=<context id>)")
        other = self._get(request, other_id)
        changes = services.context_diff(context=context, other=other)
        return Response(
            {
                "from": {"id": context.pk, "version": context.version},
                "to": {"id": other.pk, "version": other.version},
                **changes.as_dict(),
            }
        )

    @extend_schema(request=MergeSerializer, responses={200: MergeResponse, 201: MergeResponse})
    @action(detail=False, methods=["post"])
    def merge(self, request):
        serializer = MergeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        sources = selectors.context_get_many_for_user(request.user, values["sources"])
        target = self._get(request, values["target"]) if values.get("target") else None
        outcome = services.context_merge(
            sources=sources,
            strategy=values["strategy"],
            target=target,
            resolutions=values.get("resolutions"),
            expected_version=values.get("expected_version"),
            actor=request.user,
        )
        created = target is None
        return Response(_merge_body(outcome, {}), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=ShareSerializer, responses=MergeResponse)
    @action(detail=True, methods=["post"])
    def share(self, request, pk=None):
        source = self._get(request, pk)
        serializer = ShareSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        outcome = services.context_share(
            source=source,
            target_session=_session(values["session"]),
            strategy=values["strategy"],
            resolutions=values.get("resolutions"),
            actor=request.user,
        )
        return Response(_merge_body(outcome, {}))


router = api_router()
router.register("contexts", ContextViewSet, basename="context")

urlpatterns = router.urls
