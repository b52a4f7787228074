"""Bad input found by probing the API and the console (issue 24, findings 2-5 and 8): each answer
is a 4xx with the JSON error body (the console: a 404 page), never a 500, and nothing is saved."""

import json

import pytest

from tasks.models import Task
from tasks.tests.factories import SessionFactory

pytestmark = pytest.mark.django_db

HUGE = 2**70


def assert_error(response, status):
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


@pytest.fixture
def session(db):
    return SessionFactory()


def test_a_task_with_enormous_estimates_is_refused_and_the_list_still_answers(api_client, session):
    response = api_client.post(
        "/api/v1/tasks/",
        {"session": session.pk, "title": "Huge", "optimistic_hours": 1e308, "likely_hours": 1e308,
         "pessimistic_hours": 1e308},
        format="json",
    )
    error = assert_error(response, 400)
    assert "optimistic_hours" in error["details"]
    assert not Task.objects.exists()
    assert api_client.get("/api/v1/tasks/").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/tasks/", {"title": "Big", "estimated_tokens": HUGE}, "estimated_tokens"),
        ("/api/v1/tasks/", {"title": "Big", "order": HUGE}, "order"),
        ("/api/v1/tasks/", {"title": "Big", "order": "١٢"}, "order"),
        ("/api/v1/sessions", {"title": "Budget check", "initial_prompt": "x", "repository": "/x",
                              "token_budget_soft": HUGE}, None),
        ("/api/v1/contexts/merge", {"sources": [HUGE], "strategy": "deep_merge"}, None),
        ("/api/v1/tasks/", {"title": "Inf", "likely_hours": "1e400"}, None),
    ],
)
def test_numbers_out_of_range_are_400(api_client, session, path, body, field):
    if "tasks" in path:
        body = {**body, "session": session.pk}
    # 1e400 written as a JSON number (json.dumps would refuse Python's inf).
    raw = json.dumps(body).replace('"1e400"', "1e400")
    error = assert_error(api_client.post(path, raw, content_type="application/json"), 400)
    if field:
        assert field in error["details"], error


def test_json_nested_a_thousand_deep_is_400(api_client):
    deep = "[" * 1000 + "]" * 1000
    body = '{"title": "Deep", "initial_prompt": "x", "repository": "/x", "metadata": ' + deep + "}"
    response = api_client.post("/api/v1/sessions", body, content_type="application/json")
    assert_error(response, 400)


@pytest.mark.parametrize(
    "query",
    [
        f"/api/v1/sessions?agent={HUGE}",
        f"/api/v1/sessions?parent={HUGE}",
        "/api/v1/sessions?created_after=2026-13-45T10:00",
        "/api/v1/sessions?cursor=%D9%A1",
        "/api/v1/contexts/?session=abc",
        f"/api/v1/contexts/?agent={HUGE}",
        f"/api/v1/tasks/?session={HUGE}",
        "/api/v1/tasks/?session=%C2%B2",
        f"/api/v1/tasks/?offset={HUGE}",
        f"/api/v1/sessions/{{session}}/events?after={HUGE}",
        f"/api/v1/contexts/{{context}}/diff?other={HUGE}",
        "/api/v1/sessions?search=a%00b",
        "/api/v1/contexts/?name=%00",
    ],
)
def test_bad_query_strings_are_400(api_client, session, query):
    from contexts.models import Context

    context = Context.objects.create(scope="global", name="probe", data={})
    assert_error(api_client.get(query.format(session=session.pk, context=context.pk)), 400)


@pytest.mark.parametrize("path", [f"/api/v1/sessions/{HUGE}", f"/api/v1/tasks/{HUGE}/", f"/api/v1/agents/{HUGE}",
                                  f"/api/v1/contexts/{HUGE}"])
def test_ids_beyond_64_bits_in_paths_are_404(api_client, path):
    assert_error(api_client.get(path), 404)


@pytest.mark.parametrize("path", ["/contexts/999999/", "/tasks/?session=%C2%B2", f"/tasks/?session={HUGE}",
                                  f"/sessions/?agent={HUGE}", "/sessions/?created_after=2026-13-45T10:00"])
def test_console_pages_answer_404_or_400_for_bad_ids(client, operator_user, path):
    client.force_login(operator_user)
    response = client.get(path)
    assert response.status_code in (400, 404), response.status_code


@pytest.mark.parametrize("field", ["tags", "metadata"])
def test_nul_characters_in_json_fields_are_refused(api_client, field):
    value = ["bad\x00tag"] if field == "tags" else {"note": "bad\x00value"}
    body = {"title": "NUL check", "initial_prompt": "x", "repository": "/x", field: value}
    error = assert_error(api_client.post("/api/v1/sessions", body, format="json"), 400)
    assert "NUL" in error["message"]


@pytest.mark.parametrize("value", ["١٢٠", "１２０", "²"])
def test_non_ascii_digits_are_not_numbers(api_client, value):
    body = {"title": "Digits", "initial_prompt": "x", "repository": "/x", "max_duration_seconds": value}
    error = assert_error(api_client.post("/api/v1/sessions", body, format="json"), 400)
    assert "max_duration_seconds" in error["details"]


@pytest.mark.parametrize("value", ["١٢٠٠", "１２００"])
def test_the_console_form_refuses_non_ascii_digits(client, operator_user, value):
    from sessions.models import CodingSession

    client.force_login(operator_user)
    response = client.post("/sessions/new", {
        "title": "Digits in the console", "initial_prompt": "x", "repository": "/x", "priority": "2",
        "max_duration_seconds": value,
    })
    assert response.status_code == 400 and not CodingSession.objects.exists()
    assert "Enter a whole number" in response.content.decode()


def test_an_oversized_body_is_a_json_413(api_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000
    body = {"title": "Large", "initial_prompt": "p" * 200_000, "repository": "/x"}
    assert_error(api_client.post("/api/v1/sessions", body, format="json"), 413)


def test_malformed_multipart_is_a_json_4xx(api_client):
    response = api_client.generic(
        "POST", "/api/v1/sessions", b"--nope\r\nContent-Disposition: form-data\r\n\r\nx",
        content_type="multipart/form-data; boundary=BOUNDARY",
    )
    assert response.status_code in (400, 415)
    assert_error(response, response.status_code)


@pytest.mark.parametrize("path", ["/api/v1", "/api/v1/sessions/1/start", "/api/v1/nothing-here"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_writes_to_urls_without_trailing_slash_are_json_not_500(anonymous_client, path, method):
    response = getattr(anonymous_client, method)(path)
    assert response.status_code < 500
    assert "error" in response.json()


def test_an_unexpected_error_in_an_api_view_is_a_json_500(api_client, monkeypatch, settings):
    from sessions import selectors

    def explode(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(selectors, "session_stats", explode)
    api_client.raise_request_exception = False
    error = assert_error(api_client.get("/api/v1/sessions/stats"), 500)
    assert error["code"] == "server_error" and "boom" not in json.dumps(error)
