"""The one error format: {"error": {"code", "message", "details"}} with the right status."""

import pytest
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.test import APIRequestFactory, force_authenticate

from orchestrator import errors


class TitleSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=5)
    limits = serializers.DictField(child=serializers.IntegerField(min_value=0))


@api_view(["POST"])
def raising_view(request):
    kind = request.data.get("raise")
    if kind == "validation":
        raise errors.ValidationFailed(field="title", rule="must not be a generic title")
    if kind == "not_found":
        raise errors.NotFound("No session IND-000009")
    if kind == "transition":
        raise errors.TransitionRefused(kind="session", current="completed", attempted="pause", allowed=[])
    if kind == "stale":
        raise errors.StaleVersion(expected=3, current=5)
    serializer = TitleSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    return None


def call(operator_user, body):
    request = APIRequestFactory().post("/x", body, format="json")
    force_authenticate(request, user=operator_user)
    return raising_view(request)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "kind, status, code",
    [("validation", 400, "validation_error"), ("not_found", 404, "not_found"),
     ("transition", 409, "transition_refused"), ("stale", 409, "stale_version")],
)
def test_domain_errors_map_to_status_and_body(operator_user, kind, status, code):
    response = call(operator_user, {"raise": kind})
    assert response.status_code == status
    assert set(response.data) == {"error"}
    assert set(response.data["error"]) == {"code", "message", "details"}
    assert response.data["error"]["code"] == code


@pytest.mark.django_db
def test_refused_transition_names_the_states(operator_user):
    error = call(operator_user, {"raise": "transition"}).data["error"]
    assert error["message"] == "Cannot pause a session that is completed; allowed from completed: nothing (terminal)"
    assert error["details"] == {"current": "completed", "attempted": "pause", "allowed": []}


@pytest.mark.django_db
def test_stale_version_reports_the_current_version(operator_user):
    assert call(operator_user, {"raise": "stale"}).data["error"]["details"] == {
        "expected_version": 3, "current_version": 5,
    }


@pytest.mark.django_db
def test_serializer_errors_name_the_field_and_rule(operator_user):
    response = call(operator_user, {"title": "far too long", "limits": {"tokens": -1}})
    assert response.status_code == 400
    error = response.data["error"]
    assert error["code"] == "validation_error"
    assert error["details"] == {
        "title": ["Ensure this field has no more than 5 characters."],
        "limits.tokens": ["Ensure this value is greater than or equal to 0."],
    }
    assert "title: Ensure this field has no more than 5 characters." in error["message"]


def test_unknown_api_path_is_a_json_404(db, api_client):
    response = api_client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("collection", ["sessions", "agents", "tasks", "contexts"])
def test_every_collection_answers_with_and_without_a_trailing_slash(db, api_client, collection):
    assert api_client.get(f"/api/v1/{collection}").status_code == 200
    assert api_client.get(f"/api/v1/{collection}/").status_code == 200
    # A create with nothing in it is refused naming the fields, on either path.
    for path in (f"/api/v1/{collection}", f"/api/v1/{collection}/"):
        response = api_client.post(path, {}, format="json")
        assert response.status_code == 400 and response.json()["error"]["details"], path
