"""The "New session" page's planning fields: planning mode, template, plan approval and task
concurrency, sent to session_create_planned as the API's `planning` object; errors inline."""

from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from orchestrator.testing import make_git_repository
from sessions.forms import SessionCreateForm
from sessions.models import CodingSession
from tasks.decomposition import TEMPLATE_NAMES

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
REPOSITORY = Path(settings.REPOSITORY_ROOTS[0]) / "console-planning"


@pytest.fixture(autouse=True)
def repository():
    if not (REPOSITORY / ".git").exists():
        make_git_repository(REPOSITORY)
    return REPOSITORY


def form_data(**changes):
    data = {"title": "Split the billing module", "initial_prompt": "Split billing into invoices and payments.",
            "repository": str(REPOSITORY), "priority": "2", "max_duration_seconds": "1800"}
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def field_errors(body, name):
    """The inline error list of one field ("" when it has none)."""
    marker = f'data-field="{name}"'
    if marker not in body:
        return ""
    return body.split(marker, 1)[1].split("</ul>", 1)[0]


def test_the_page_offers_each_mode_every_template_and_proposes_approval_required(client, operator_user, settings):
    settings.SESSION_PLANNING_MODE = "template"
    settings.SESSION_PLAN_APPROVAL = "auto"  # the console proposes a review whatever the server's default
    client.force_login(operator_user)
    body = client.get(reverse("sessions:create")).content.decode()
    assert '<legend>Planning</legend>' in body
    assert '<option value="template" selected>' in body
    assert '<option value="single">' in body and '<option value="planner">' in body
    for name in TEMPLATE_NAMES:
        assert f'<option value="{name}">{name}</option>' in body
    assert '<option value="required" selected>' in body and '<option value="auto">' in body
    assert 'for="id_plan_approval"' in body and 'for="id_template"' in body and 'for="id_planning_mode"' in body


def test_a_planner_session_with_review_stores_the_options_the_api_would(client, operator_user, api_client):
    client.force_login(operator_user)
    response = client.post(reverse("sessions:create"), form_data(
        planning_mode="planner", plan_approval="required", task_concurrency="3"))
    session = CodingSession.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("sessions:detail", args=[session.pk])
    assert session.metadata["planning"] == {"mode": "planner", "template": None, "plan_approval": "required",
                                            "task_concurrency": 3, "replan_limit": settings.SESSION_REPLAN_LIMIT}
    assert session.metadata["task_concurrency"] == 3

    # The API, given the same planning object, stores the same metadata: one service for both.
    created = api_client.post("/api/v1/sessions", {
        "title": "Split the billing module", "initial_prompt": "Split billing into invoices and payments.",
        "repository": str(REPOSITORY), "planning": {"mode": "planner", "plan_approval": "required",
                                                    "task_concurrency": 3},
    }, format="json")
    assert created.status_code == 201, created.content
    assert CodingSession.objects.get(pk=created.json()["id"]).metadata == session.metadata


def test_a_template_session_keeps_its_template_and_automatic_approval(client, operator_user):
    client.force_login(operator_user)
    response = client.post(reverse("sessions:create"), form_data(
        planning_mode="template", template="crud", plan_approval="auto"), **HTMX)
    session = CodingSession.objects.get()
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("sessions:detail", args=[session.pk])
    planning = session.metadata["planning"]
    assert (planning["mode"], planning["template"], planning["plan_approval"]) == ("template", "crud", "auto")
    assert planning["task_concurrency"] == settings.SESSION_TASK_CONCURRENCY  # empty: the server's default


def test_a_form_without_planning_fields_takes_the_servers_defaults(client, operator_user, settings):
    settings.SESSION_PLANNING_MODE, settings.SESSION_PLAN_APPROVAL = "planner", "auto"
    client.force_login(operator_user)
    client.post(reverse("sessions:create"), form_data())
    planning = CodingSession.objects.get().metadata["planning"]
    assert (planning["mode"], planning["plan_approval"], planning["template"]) == ("planner", "auto", None)


def test_a_template_for_another_mode_is_an_inline_error_and_nothing_is_written(client, operator_user):
    client.force_login(operator_user)
    response = client.post(reverse("sessions:create"), form_data(planning_mode="planner", template="crud"), **HTMX)
    body = response.content.decode()
    assert response.status_code == 200 and 'role="alert"' in body
    assert "applies to template planning only" in field_errors(body, "template")
    assert field_errors(body, "planning_mode") == ""
    assert not CodingSession.objects.exists()


@pytest.mark.parametrize("field, value, message", [
    ("planning_mode", "waterfall", "Select a valid choice"),
    ("template", "kitchen_sink", "Select a valid choice"),
    ("plan_approval", "maybe", "Select a valid choice"),
    ("task_concurrency", "0", "greater than or equal to 1"),
    ("task_concurrency", "17", "less than or equal to 16"),
])
def test_a_bad_planning_value_is_shown_next_to_its_field(client, operator_user, field, value, message):
    client.force_login(operator_user)
    response = client.post(reverse("sessions:create"), form_data(**{field: value}))
    body = response.content.decode()
    assert response.status_code == 400 and "<title>New session" in body
    assert message in field_errors(body, field)
    assert not CodingSession.objects.exists()


def test_the_services_planning_rules_land_on_their_fields():
    form = SessionCreateForm(data=form_data())
    assert form.is_valid(), form.errors
    form.add_service_errors({
        "planning.mode": ["must be one of single, template, planner"],
        "planning.template": ["must be one of crud"],
        "planning.plan_approval": ["must be one of required, auto"],
        "planning.task_concurrency": ["must be an integer from 1 to 16"],
        "planning": ["unknown fields: depth"],
    })
    assert form.errors["planning_mode"] == ["must be one of single, template, planner"]
    assert form.errors["template"] == ["must be one of crud"]
    assert form.errors["plan_approval"] == ["must be one of required, auto"]
    assert form.errors["task_concurrency"] == ["must be an integer from 1 to 16"]
    assert form.non_field_errors() == ["planning: unknown fields: depth"]
