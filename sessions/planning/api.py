"""/api/v1/sessions/{id}/plan: read, replace, approve and send back a session's plan.

GET shows the plan (JSON as submitted, findings, adjustments, review state) and the task graph with
PERT estimates and the critical path. PUT replaces it (re-checked: 400 naming each finding with its
task keys), approve resumes the session, revise records a comment for the next planning turn; the
three writes answer 409 unless the session waits in plan_review.
"""

from django.urls import re_path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestrator.errors import PermissionRefused, ValidationFailed
from orchestrator.roles import user_can_view
from sessions.planning import selectors, services
from sessions.planning.services import COMMENT_MAX
from sessions.selectors import session_get_for_user
from sessions.services import Actor


class ReviseSerializer(serializers.Serializer):
    comment = serializers.CharField(max_length=COMMENT_MAX, allow_blank=True, trim_whitespace=False)


def _session(request, pk):
    return session_get_for_user(request.user, pk)


def _view(request, pk, code=status.HTTP_200_OK):
    return Response(selectors.plan_view(session=_session(request, pk)), status=code)


class SessionPlanView(APIView):
    """GET the plan and its graph; PUT a replacement (the plan format as the body)."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk):
        return _view(request, pk)

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def put(self, request, pk):
        session = _session(request, pk)
        if not isinstance(request.data, dict):
            raise ValidationFailed(field="plan", rule="must be a JSON object {summary, tasks}")
        services.plan_replace(session=session, plan=dict(request.data), actor=Actor.of_user(request.user))
        return _view(request, pk)


class SessionPlanApproveView(APIView):
    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    def post(self, request, pk):
        services.plan_approve(session=_session(request, pk), actor=Actor.of_user(request.user))
        return _view(request, pk)


class SessionPlanReviseView(APIView):
    @extend_schema(request=ReviseSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request, pk):
        if not user_can_view(request.user):
            raise PermissionRefused("Sign in to see sessions")
        serializer = ReviseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.plan_revise(session=_session(request, pk), comment=serializer.validated_data["comment"],
                             actor=Actor.of_user(request.user))
        return _view(request, pk)


urlpatterns = [
    re_path(r"^sessions/(?P<pk>\d+)/plan/?$", SessionPlanView.as_view(), name="session-plan"),
    re_path(r"^sessions/(?P<pk>\d+)/plan/approve/?$", SessionPlanApproveView.as_view(), name="session-plan-approve"),
    re_path(r"^sessions/(?P<pk>\d+)/plan/revise/?$", SessionPlanReviseView.as_view(), name="session-plan-revise"),
]
