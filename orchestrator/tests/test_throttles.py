"""Issue 24, finding 6: limits. Writes and failed authentications are throttled (429 with
Retry-After and the JSON error body), the console's sign-in locks after repeated failures, one
user's open sessions are capped, and JSON fields are bounded in size and depth."""

from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from orchestrator.testing import make_git_repository
from sessions.models import CodingSession

pytestmark = pytest.mark.django_db

REPOSITORY = Path(django_settings.REPOSITORY_ROOTS[0]) / "limits"


@pytest.fixture
def repository():
    if not (REPOSITORY / ".git").exists():
        make_git_repository(REPOSITORY)
    return str(REPOSITORY)


def session_body(repository, **changes):
    return {"title": "Limit probe", "initial_prompt": "Do it.", "repository": repository, **changes}


def assert_throttled(response):
    assert response.status_code == 429, (response.status_code, response.content[:200])
    assert int(response["Retry-After"]) >= 1
    assert set(response.json()["error"]) == {"code", "message", "details"}


@pytest.mark.throttled
def test_writes_beyond_the_rate_are_429_with_retry_after(api_client, settings, repository):
    settings.API_THROTTLE_RATES = {**settings.API_THROTTLE_RATES, "write": "5/minute"}
    for _ in range(5):
        assert api_client.post("/api/v1/sessions", {}, format="json").status_code == 400
    assert_throttled(api_client.post("/api/v1/sessions", session_body(repository), format="json"))
    assert not CodingSession.objects.exists()
    assert api_client.get("/api/v1/sessions").status_code == 200  # reads are not writes


@pytest.mark.throttled
def test_bad_tokens_lock_out_the_address_then_even_a_good_token_waits(api_client, anonymous_client, settings):
    settings.API_THROTTLE_RATES = {**settings.API_THROTTLE_RATES, "auth_failure": "3/minute"}
    anonymous_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    for _ in range(3):
        assert anonymous_client.get("/api/v1/sessions").status_code == 401
    assert_throttled(anonymous_client.get("/api/v1/sessions"))
    assert_throttled(api_client.get("/api/v1/sessions"))  # same address


@pytest.mark.throttled
def test_console_sign_in_locks_after_repeated_failures(client, django_user_model, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    django_user_model.objects.create_user("ada", password="right-password-123")
    for _ in range(3):
        response = client.post(reverse("login"), {"username": "ada", "password": "wrong"})
        assert response.status_code == 200 and "_auth_user_id" not in client.session
    response = client.post(reverse("login"), {"username": "ada", "password": "right-password-123"})
    assert response.status_code == 429 and "Too many failed sign-ins" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_console_sign_in_still_works_below_the_limit(client, django_user_model):
    django_user_model.objects.create_user("ada", password="right-password-123")
    client.post(reverse("login"), {"username": "ada", "password": "wrong"})
    response = client.post(reverse("login"), {"username": "ada", "password": "right-password-123"})
    assert response.status_code == 302 and "_auth_user_id" in client.session


@pytest.mark.throttled
def test_one_user_open_sessions_are_capped(api_client, settings, repository):
    settings.SESSION_LIMIT_PER_USER = 2
    first = api_client.post("/api/v1/sessions", session_body(repository), format="json").json()
    assert api_client.post("/api/v1/sessions", session_body(repository), format="json").status_code == 201
    refused = api_client.post("/api/v1/sessions", session_body(repository), format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "session_limit"
    assert CodingSession.objects.count() == 2
    assert api_client.post(f"/api/v1/sessions/{first['id']}/cancel", {}, format="json").status_code == 200
    assert api_client.post("/api/v1/sessions", session_body(repository), format="json").status_code == 201


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("metadata", {"blob": "x" * 20_000}, "bytes"),
        ("metadata", {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}, "nested deeper"),
        ("tags", [["nested"]], "nested deeper"),
    ],
)
def test_json_fields_are_bounded_in_size_and_depth(api_client, repository, field, value, rule):
    response = api_client.post("/api/v1/sessions", session_body(repository, **{field: value}), format="json")
    assert response.status_code == 400
    assert rule in " ".join(response.json()["error"]["details"][field])
    assert not CodingSession.objects.exists()
