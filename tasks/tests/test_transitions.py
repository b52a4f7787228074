"""The 10-status machine: every allowed edge succeeds through its service, every other is refused."""

import pytest

from orchestrator.errors import TransitionRefused, ValidationFailed
from tasks import services
from tasks.models import Task

# Every test here runs over the plan read of tasks.sql and over the same read through the ORM.
pytestmark = pytest.mark.usefixtures("plan_read")

ALLOWED = {
    "pending": {"ready", "assigned", "cancelled", "skipped"},
    "ready": {"assigned", "cancelled", "skipped"},
    "assigned": {"in_progress", "cancelled"},
    "in_progress": {"completed", "failed", "blocked", "paused"},
    "blocked": {"in_progress", "cancelled"},
    "paused": {"in_progress", "cancelled"},
    "completed": set(),
    "failed": set(),
    "cancelled": set(),
    "skipped": set(),
}
# How to reach each status from pending, as service calls.
PATHS = {
    "pending": [],
    "ready": ["ready"],
    "assigned": ["assign"],
    "in_progress": ["assign", "start"],
    "blocked": ["assign", "start", "block"],
    "paused": ["assign", "start", "pause"],
    "completed": ["assign", "start", "complete"],
    "failed": ["assign", "start", "fail"],
    "cancelled": ["cancel"],
    "skipped": ["skip"],
}
# The service that moves a task to each target status (from wherever it may).
TO = {
    "ready": "ready", "assigned": "assign", "completed": "complete", "failed": "fail", "blocked": "block",
    "paused": "pause", "cancelled": "cancel", "skipped": "skip",
}


def call(verb, task, agent):
    return {
        "ready": lambda: services.task_mark_ready(task=task),
        "assign": lambda: services.task_assign(task=task, agent=agent),
        "start": lambda: services.task_start(task=task),
        "resume": lambda: services.task_resume(task=task),
        "complete": lambda: services.task_complete(task=task, result={"ok": 1}, output="out"),
        "fail": lambda: services.task_fail(task=task, error={"type": "x", "message": "y"}),
        "block": lambda: services.task_block(task=task, reason="waiting for a permission"),
        "pause": lambda: services.task_pause(task=task),
        "cancel": lambda: services.task_cancel(task=task),
        "skip": lambda: services.task_skip(task=task),
    }[verb]()


def verb_for(source, target):
    if target == "in_progress":
        return "start" if source == "assigned" else "resume"
    return TO[target]


CASES = [(source, target) for source in ALLOWED for target in ALLOWED if target != source and target != "pending"]


@pytest.mark.django_db
@pytest.mark.parametrize(("source", "target"), CASES)
def test_transition_matrix(make_task, agent, source, target):
    task = make_task("Leaf")
    for verb in PATHS[source]:
        call(verb, task, agent)
    assert Task.objects.get(pk=task.pk).status == source
    verb = verb_for(source, target)
    if target in ALLOWED[source]:
        assert call(verb, task, agent).status == target
    else:
        with pytest.raises(TransitionRefused) as caught:
            call(verb, task, agent)
        assert caught.value.current == source
        assert Task.objects.get(pk=task.pk).status == source


@pytest.mark.django_db
def test_completion_records_result_output_and_times(make_task, agent):
    task = make_task("Leaf")
    services.task_assign(task=task, agent=agent)
    started = services.task_start(task=task)
    assert started.started_at is not None and started.assigned_agent == agent
    done = services.task_complete(task=task, result={"files": 2}, output="All good")
    assert (done.result, done.output) == ({"files": 2}, "All good")
    assert done.completed_at is not None and done.ended_at is not None


@pytest.mark.django_db
def test_start_is_refused_while_a_finish_to_start_prerequisite_is_open(make_task, agent):
    a, b = make_task("A"), make_task("B")
    services.task_add_dependency(prerequisite=a, dependent=b)
    services.task_assign(task=b, agent=agent)  # pending → assigned is allowed by SPEC
    with pytest.raises(TransitionRefused) as caught:
        services.task_start(task=b)
    assert "finish_to_start prerequisite 'A' is ready" in caught.value.message


@pytest.mark.django_db
def test_assign_with_start_goes_to_in_progress_at_once_or_not_at_all(make_task, agent):
    a, b, c = make_task("A"), make_task("B"), make_task("C")
    services.task_add_dependency(prerequisite=a, dependent=b)
    started = services.task_assign(task=c, agent=agent, start=True)
    assert (started.status, started.assigned_agent, started.started_at is not None) == ("in_progress", agent, True)

    with pytest.raises(TransitionRefused, match="finish_to_start prerequisite 'A'"):
        services.task_assign(task=b, agent=agent, start=True)
    b.refresh_from_db()
    assert (b.status, b.assigned_agent) == ("pending", None)  # the assign step rolled back with the start


@pytest.mark.django_db
def test_an_agent_missing_a_capability_is_refused(make_task):
    from tasks.tests.factories import AgentFactory

    task = make_task("Audit", required_capabilities=["security_audit"])
    weak = AgentFactory(capability_mask=0)
    with pytest.raises(ValidationFailed):
        services.task_assign(task=task, agent=weak)


@pytest.mark.django_db
def test_status_cannot_be_assigned_directly(make_task):
    task = make_task("Leaf")
    with pytest.raises(AttributeError):
        task.status = "completed"


@pytest.mark.django_db
def test_estimates_are_derived_on_write_and_validated(make_task):
    task = make_task("Leaf", hours=(1, 2, 9))
    assert task.expected_hours == pytest.approx(3.0) and task.complexity == "moderate"
    updated = services.task_update(task=task, likely_hours=9, pessimistic_hours=14)
    stored = Task.objects.get(pk=task.pk)
    assert stored.expected_hours == pytest.approx((1 + 36 + 14) / 6) == updated.expected_hours
    assert stored.complexity == "expert"
    with pytest.raises(ValidationFailed):
        services.task_update(task=task, optimistic_hours=20)
    with pytest.raises(ValidationFailed):
        services.task_update(task=task, required_capabilities=["flying"])
