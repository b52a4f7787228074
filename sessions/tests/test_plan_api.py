"""Plans through the API and the planning services, on the real database: planning options at
creation, a plan supplied at creation, the plan_review pause, replace / approve / revise, and the
engine's hooks (plan_propose, plan_await_review)."""

from pathlib import Path

import pytest
from django.conf import settings

from agents.tests.factories import AgentFactory
from orchestrator.errors import Conflict, ValidationFailed
from sessions import services
from sessions.models import CodingSession, SessionEvent
from sessions.planning import selectors as plan_selectors
from sessions.planning import services as planning
from sessions.services import Actor
from tasks.models import PlanStatus, SessionPlan, Task, TaskDependency
from tasks.planning import plan_store_graph
from tasks.plans import check_plan

pytestmark = pytest.mark.django_db

LIBRARY = Path(settings.REPOSITORY_ROOTS[0]) / "library"
SESSION = {
    "title": "Add a books app with an API",
    "initial_prompt": "Add books: models, API and docs.",
    "repository": str(LIBRARY),
}


@pytest.fixture(autouse=True)
def library_repository():
    """Create checks the repository (sessions.repositories): it must be a real one."""
    from orchestrator.testing import make_git_repository

    if not (LIBRARY / ".git").exists():
        make_git_repository(LIBRARY)


def task(key, *, after=(), files=(), capabilities=("code_generation",), hours=(0.5, 1, 2), **extra):
    optimistic, likely, pessimistic = hours
    return {
        "key": key, "title": f"Do {key}", "prompt": f"Implement {key}.", "capabilities": list(capabilities),
        "files": list(files),
        "estimate_hours": {"optimistic": optimistic, "likely": likely, "pessimistic": pessimistic},
        "after": list(after), **extra,
    }


def plan(*tasks):
    return {"summary": "Books in three steps", "tasks": list(tasks)}


BOOKS = plan(
    task("schema", files=["books/models.py", "books/migrations/"], capabilities=["system_design"], hours=(1, 2, 3)),
    task("api", after=["schema"], files=["books/api.py"], acceptance="python -m pytest books -q"),
    task("docs", files=["docs/books.md"], capabilities=["documentation"], hours=(0.25, 0.5, 1)),
)


def create(client, **changes):
    return client.post("/api/v1/sessions", {**SESSION, **changes}, format="json")


def plan_url(session_id, action=""):
    return f"/api/v1/sessions/{session_id}/plan" + (f"/{action}" if action else "")


def event_types(session_id, prefix="plan."):
    return list(SessionEvent.objects.filter(session_id=session_id, type__startswith=prefix)
                .order_by("id").values_list("type", flat=True))


def leaves(session_id):
    return dict(Task.objects.filter(session_id=session_id).exclude(plan_key="").values_list("plan_key", "status"))


def edges(session_id):
    return sorted(TaskDependency.objects.filter(dependent__session_id=session_id)
                  .values_list("prerequisite__plan_key", "dependent__plan_key"))


def in_review(client, body=BOOKS, **planning_options):
    """A session created with a plan (approval required), claimed by a worker and paused for review."""
    response = create(client, planning={"plan_approval": "required", **planning_options}, plan=body)
    assert response.status_code == 201, response.json()
    session_id = response.json()["id"]
    services.session_start(session=CodingSession.objects.get(pk=session_id), immediate=True, worker_id="worker-1")
    planning.plan_await_review(session=CodingSession.objects.get(pk=session_id), actor=Actor.worker("worker-1"))
    return session_id


# --- planning options ---------------------------------------------------------------------


def test_planning_options_are_stored_with_defaults_from_settings(api_client, settings):
    settings.SESSION_PLAN_APPROVAL = "auto"
    response = create(api_client, planning={"mode": "planner", "task_concurrency": 4})
    assert response.status_code == 201, response.json()
    metadata = response.json()["metadata"]
    assert metadata["planning"] == {
        "mode": "planner", "template": None, "plan_approval": "auto", "task_concurrency": 4, "replan_limit": 1,
    }
    # Where the engine reads the per-session concurrency.
    assert metadata["task_concurrency"] == 4


def test_a_session_without_planning_options_plans_as_the_settings_say(api_client, settings):
    settings.SESSION_PLANNING_MODE = "template"
    session_id = create(api_client).json()["id"]
    assert "planning" not in CodingSession.objects.get(pk=session_id).metadata
    view = api_client.get(plan_url(session_id)).json()
    assert view["planning"]["mode"] == "template"
    assert view["plan"] is None and view["graph"]["nodes"] == []


@pytest.mark.parametrize(
    ("planning_options", "field"),
    [
        ({"mode": "magic"}, "planning.mode"),
        ({"plan_approval": "maybe"}, "planning.plan_approval"),
        ({"task_concurrency": 0}, "planning.task_concurrency"),
        ({"task_concurrency": 17}, "planning.task_concurrency"),
        ({"replan_limit": 6}, "planning.replan_limit"),
        ({"replan_limit": True}, "planning.replan_limit"),
        ({"template": "nope"}, "planning.template"),
        ({"colour": "red"}, "planning"),
        ("planner", "planning"),
    ],
)
def test_bad_planning_options_are_400_naming_the_field(api_client, planning_options, field):
    response = create(api_client, planning=planning_options)
    assert response.status_code == 400
    assert field in response.json()["error"]["details"]
    assert not CodingSession.objects.exists()


# --- a plan supplied at creation --------------------------------------------------------------


def test_a_plan_at_creation_becomes_the_task_graph_with_pert_and_critical_path(api_client):
    response = create(api_client, plan=BOOKS)
    assert response.status_code == 201, response.json()
    session_id = response.json()["id"]
    assert leaves(session_id) == {"schema": "ready", "api": "pending", "docs": "ready"}
    assert edges(session_id) == [("schema", "api")]
    api = Task.objects.get(session_id=session_id, plan_key="api")
    assert api.acceptance == "python -m pytest books -q" and api.files == ["books/api.py"]
    assert api.description == "Implement api." and api.parent.parent_id is None

    view = api_client.get(plan_url(session_id)).json()
    assert view["plan"]["version"] == 1 and view["plan"]["status"] == "proposed"
    assert view["plan"]["plan"] == BOOKS  # kept as submitted
    assert view["plan"]["source"] == "create"
    assert view["graph"]["critical_path_keys"] == ["schema", "api"]
    assert view["graph"]["total_expected_hours"] == pytest.approx(2 + (0.5 + 4 + 2) / 6)
    schema = next(node for node in view["graph"]["nodes"] if node["key"] == "schema")
    assert schema["estimate"]["expected_hours"] == pytest.approx(2) and schema["critical"] is True
    assert event_types(session_id) == ["plan.proposed", "plan.checked"]
    assert view["waiting_for_review"] is False


def test_auto_approval_approves_a_plan_at_creation(api_client):
    session_id = create(api_client, planning={"plan_approval": "auto"}, plan=BOOKS).json()["id"]
    current = SessionPlan.objects.get(session_id=session_id)
    assert current.status == PlanStatus.APPROVED and current.decided_at is not None
    assert event_types(session_id) == ["plan.proposed", "plan.checked", "plan.approved"]


def test_overlapping_files_get_an_ordering_edge_reported_as_an_adjustment(api_client):
    body = plan(task("models", files=["books/models.py"]), task("migrations", files=["books/"]))
    session_id = create(api_client, plan=body).json()["id"]
    assert edges(session_id) == [("models", "migrations")]
    view = api_client.get(plan_url(session_id)).json()
    assert [a["tasks"] for a in view["plan"]["adjustments"]] == [["models", "migrations"]]
    assert view["plan"]["findings"] == []
    assert event_types(session_id) == ["plan.proposed", "plan.checked", "plan.adjusted"]
    adjusted = SessionEvent.objects.get(session_id=session_id, type="plan.adjusted")
    assert adjusted.payload["adjustments"][0]["code"] == "ordered_for_files"


def test_a_cyclic_plan_is_refused_at_creation_naming_the_cycle(api_client):
    body = plan(task("a", after=["b"]), task("b", after=["a"]))
    response = create(api_client, plan=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "plan_invalid"
    assert "a → b → a" in error["message"]
    assert [(f["code"], f["tasks"]) for f in error["details"]["findings"]] == [("cycle", ["a", "b"])]
    assert not CodingSession.objects.exists() and not Task.objects.exists()


def test_a_plan_with_a_file_outside_the_repository_is_refused_naming_task_and_field(api_client):
    body = plan(task("a"), task("b", files=["../etc/passwd"]), task("c", capabilities=["mind_reading"]))
    response = create(api_client, plan=body)
    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert "plan.tasks[1].files[0]" in details and "plan.tasks[2].capabilities" in details
    assert {f["code"]: f["tasks"] for f in details["findings"]} == {
        "file_outside_repository": ["b"], "unknown_capability": ["c"],
    }
    assert not CodingSession.objects.exists()


# --- review: pause, replace, approve, revise --------------------------------------------------


def test_plan_writes_are_refused_unless_the_session_waits_in_plan_review(api_client):
    session_id = create(api_client, plan=BOOKS).json()["id"]
    for response in (
        api_client.put(plan_url(session_id), BOOKS, format="json"),
        api_client.post(plan_url(session_id, "approve")),
        api_client.post(plan_url(session_id, "revise"), {"comment": "smaller"}, format="json"),
    ):
        assert response.status_code == 409
        assert response.json()["error"]["details"]["current"] == "pending"
        assert "plan_review" in response.json()["error"]["message"]
    # Paused for another reason is not plan review either.
    services.session_start(session=CodingSession.objects.get(pk=session_id), immediate=True, worker_id="worker-1")
    services.session_pause(session=CodingSession.objects.get(pk=session_id), reason="operator")
    assert api_client.post(plan_url(session_id, "approve")).status_code == 409


def test_the_session_pauses_in_plan_review_and_the_plan_can_be_replaced(api_client):
    session_id = in_review(api_client)
    session = CodingSession.objects.get(pk=session_id)
    assert session.status == "paused" and session.metadata["paused_reason"] == "plan_review"
    view = api_client.get(plan_url(session_id)).json()
    assert view["waiting_for_review"] is True and view["paused_reason"] == "plan_review"

    # Edited: docs removed, tests added after api, api now also after docs' replacement.
    edited = plan(
        task("schema", files=["books/models.py"], capabilities=["system_design"]),
        task("api", after=["schema"], files=["books/api.py"]),
        task("tests", after=["api"], files=["books/tests/"], capabilities=["test_generation"]),
    )
    response = api_client.put(plan_url(session_id), edited, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["plan"]["version"] == 2 and body["plan"]["status"] == "proposed" and body["plan"]["source"] == "api"
    assert [v["status"] for v in body["versions"]] == ["proposed", "superseded"]
    assert leaves(session_id) == {"schema": "ready", "api": "pending", "tests": "pending"}
    assert edges(session_id) == [("api", "tests"), ("schema", "api")]
    assert body["graph"]["critical_path_keys"] == ["schema", "api", "tests"]
    assert event_types(session_id) == ["plan.proposed", "plan.checked", "plan.proposed", "plan.checked"]


def test_a_bad_replacement_changes_nothing(api_client):
    session_id = in_review(api_client)
    before = (leaves(session_id), edges(session_id))
    response = api_client.put(plan_url(session_id), plan(task("a", after=["ghost"])), format="json")
    assert response.status_code == 400
    finding = response.json()["error"]["details"]["findings"][0]
    assert (finding["code"], finding["tasks"]) == ("unknown_dependency", ["a"])
    assert (leaves(session_id), edges(session_id)) == before
    assert SessionPlan.objects.filter(session_id=session_id).count() == 1
    assert api_client.put(plan_url(session_id), [1, 2], format="json").status_code == 400


def test_approving_resumes_the_session_through_the_queue(api_client, broker_queues, django_capture_on_commit_callbacks):
    session_id = in_review(api_client)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(plan_url(session_id, "approve"))
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "queued" and response.json()["paused_reason"] is None
    assert response.json()["plan"]["status"] == "approved"
    assert response.json()["plan"]["decided_by"] == api_client.user.username
    assert [m["kwargs"] for m in broker_queues.drain()] == [{"session_id": session_id}]
    assert "paused_reason" not in CodingSession.objects.get(pk=session_id).metadata
    types = list(SessionEvent.objects.filter(session_id=session_id).order_by("id").values_list("type", flat=True))
    assert types[-2:] == ["plan.approved", "session.transition"]
    resumed = SessionEvent.objects.filter(session_id=session_id, type="session.transition").last()
    assert (resumed.payload["from"], resumed.payload["to"]) == ("paused", "queued")
    # Approved once: a second approval is refused, naming the state.
    again = api_client.post(plan_url(session_id, "approve"))
    assert again.status_code == 409 and again.json()["error"]["details"]["current"] == "queued"


def test_sending_back_records_the_comment_for_the_next_planning_turn(api_client):
    session_id = in_review(api_client)
    assert api_client.post(plan_url(session_id, "revise"), {"comment": "  "}, format="json").status_code == 400
    missing = api_client.post(plan_url(session_id, "revise"), {}, format="json")
    assert missing.status_code == 400 and "comment" in missing.json()["error"]["details"]
    response = api_client.post(plan_url(session_id, "revise"), {"comment": "Split the API task in two"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "queued"
    assert response.json()["plan"]["status"] == "sent_back"
    pending = plan_selectors.plan_revision_pending(session=CodingSession.objects.get(pk=session_id))
    assert pending.comment == "Split the API task in two" and pending.submitted == BOOKS
    sent_back = SessionEvent.objects.get(session_id=session_id, type="plan.sent_back")
    assert sent_back.payload["comment"] == "Split the API task in two" and sent_back.payload["version"] == 1
    planning.plan_revision_taken(plan=pending)
    assert plan_selectors.plan_revision_pending(session=CodingSession.objects.get(pk=session_id)) is None


def test_viewers_read_the_plan_but_cannot_change_it(viewer_client, api_client):
    session_id = in_review(api_client)
    assert viewer_client.get(plan_url(session_id)).status_code == 200
    assert viewer_client.post(plan_url(session_id, "approve")).status_code == 403
    assert viewer_client.put(plan_url(session_id), BOOKS, format="json").status_code == 403
    assert CodingSession.objects.get(pk=session_id).status == "paused"


def test_unknown_session_is_404(api_client):
    assert api_client.get(plan_url(987654)).status_code == 404
    assert api_client.post(plan_url(987654, "approve")).status_code == 404


# --- the engine's hooks ----------------------------------------------------------------------


def running_session(**planning_options):
    session = planning.session_create_planned(planning=planning_options or None, **SESSION)
    return services.session_start(session=session, immediate=True, worker_id="worker-1")


def test_a_proposed_plan_pauses_a_running_session_for_review():
    session = running_session(plan_approval="required")
    row = planning.plan_propose(session=session, plan=BOOKS, actor=Actor.worker("worker-1"))
    assert row.status == PlanStatus.PROPOSED and row.source == "planner"
    assert planning.waits_in_review(CodingSession.objects.get(pk=session.pk))
    pause = SessionEvent.objects.filter(session_id=session.pk, type="session.transition").last()
    assert (pause.payload["to"], pause.payload["reason"]) == ("paused", "plan_review")


def test_with_auto_approval_a_proposed_plan_runs_on():
    session = running_session(plan_approval="auto")
    row = planning.plan_propose(session=session, plan=BOOKS)
    assert row.status == PlanStatus.APPROVED
    assert CodingSession.objects.get(pk=session.pk).status == "running"
    assert set(leaves(session.pk)) == {"schema", "api", "docs"}


def test_an_invalid_proposal_writes_nothing_and_can_be_recorded_for_the_repair_turn():
    session = running_session()
    with pytest.raises(planning.PlanRefused) as refused:
        planning.plan_propose(session=session, plan=plan(task("a", after=["a"])))
    assert not SessionPlan.objects.exists() and leaves(session.pk) == {}
    planning.plan_record_refused(session=session, findings=refused.value.findings)
    checked = SessionEvent.objects.get(session_id=session.pk, type="plan.checked")
    assert checked.payload["ok"] is False and checked.payload["findings"][0]["tasks"] == ["a"]


def test_a_plan_is_proposed_only_while_the_session_runs():
    session = planning.session_create_planned(**SESSION)
    with pytest.raises(Conflict):
        planning.plan_propose(session=session, plan=BOOKS)


def test_a_refused_graph_replacement_changes_nothing_and_keeps_started_tasks():
    """A new key that a started task already holds refuses the whole replacement: the pending tasks
    it would have deleted are still there."""
    session = running_session(plan_approval="auto")
    planning.plan_propose(session=session, plan=BOOKS)
    from tasks import services as task_services

    schema = Task.objects.get(session=session, plan_key="schema")
    agent = AgentFactory(capabilities=["system_design", "code_generation", "documentation"])
    task_services.task_assign(task=schema, agent=agent, start=True)
    before = (leaves(session.pk), edges(session.pk))
    with pytest.raises(ValidationFailed) as refused:
        plan_store_graph(session=session, checked=check_plan(plan(task("docs2"), task("schema"))))
    assert "tasks[1].key" in refused.value.errors
    assert (leaves(session.pk), edges(session.pk)) == before
    # Without the collision the pending tasks go and the started one stays.
    plan_store_graph(session=session, checked=check_plan(plan(task("docs2"), task("tests"))))
    assert leaves(session.pk) == {"schema": "in_progress", "docs2": "ready", "tests": "ready"}


def test_reading_the_plan_costs_a_fixed_number_of_queries(api_client, django_assert_max_num_queries):
    small = create(api_client, plan=BOOKS).json()["id"]
    chain = plan(*[task(f"t{n}", after=[f"t{n - 1}"] if n else []) for n in range(40)])
    large = create(api_client, plan=chain).json()["id"]
    with django_assert_max_num_queries(7) as small_queries:
        assert api_client.get(plan_url(small)).status_code == 200
    with django_assert_max_num_queries(len(small_queries.captured_queries)):
        assert api_client.get(plan_url(large)).status_code == 200
