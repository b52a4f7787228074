"""Readiness and skip propagation through the one refresh the engine calls, per dependency type."""

import pytest

from orchestrator.errors import TransitionRefused
from tasks import services
from tasks.models import Task

# Every test here runs over the plan read of tasks.sql and over the same read through the ORM.
pytestmark = pytest.mark.usefixtures("plan_read")


def status(task):
    return Task.objects.values_list("status", flat=True).get(pk=task.pk)


def link(prerequisite, dependent, kind="finish_to_start", required=True):
    return services.task_add_dependency(
        prerequisite=prerequisite, dependent=dependent, dependency_type=kind, is_required=required
    )


@pytest.mark.django_db
def test_tasks_without_prerequisites_become_ready(session, make_task):
    a = make_task("A")
    changes = services.task_refresh_readiness(session=session)
    assert changes["ready"] == [a.pk]
    assert status(a) == "ready"
    # The root is a container: it follows its child.
    assert status(make_task.root) == "ready"


@pytest.mark.django_db
def test_finish_to_start_waits_for_completion(session, make_task, run):
    a, b = make_task("A"), make_task("B")
    link(a, b)
    services.task_refresh_readiness(session=session)
    assert status(b) == "pending"
    run(a)
    assert status(b) == "pending"
    services.task_complete(task=a, result={"ok": True}, output="done")
    assert status(b) == "ready"


@pytest.mark.django_db
def test_start_to_start_waits_only_for_the_start(session, make_task, run):
    a, b = make_task("A"), make_task("B")
    link(a, b, "start_to_start")
    services.task_refresh_readiness(session=session)
    assert status(b) == "pending"
    run(a)
    assert status(b) == "ready"


@pytest.mark.django_db
def test_finish_to_finish_lets_the_dependent_start_but_not_complete_first(session, make_task, run):
    a, b = make_task("A"), make_task("B")
    link(a, b, "finish_to_finish")
    services.task_refresh_readiness(session=session)
    assert status(b) == "ready"
    run(b)
    with pytest.raises(TransitionRefused) as caught:
        services.task_complete(task=b, result={}, output="")
    assert "finish_to_finish prerequisite 'A'" in caught.value.message
    assert status(b) == "in_progress"
    run(a)
    services.task_complete(task=a)
    assert services.task_complete(task=b).status == "completed"


@pytest.mark.django_db
def test_start_to_finish_holds_completion_until_the_prerequisite_starts(session, make_task, run):
    a, b = make_task("A"), make_task("B")
    link(a, b, "start_to_finish")
    services.task_refresh_readiness(session=session)
    run(b)
    with pytest.raises(TransitionRefused):
        services.task_complete(task=b)
    run(a)
    assert services.task_complete(task=b).status == "completed"


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["finish_to_start", "start_to_start", "finish_to_finish", "start_to_finish"])
def test_failed_required_prerequisite_skips_dependents_transitively(session, make_task, run, kind):
    a, b, c = make_task("A"), make_task("B"), make_task("C")
    link(a, b, kind)
    link(b, c)
    services.task_refresh_readiness(session=session)
    run(a)
    services.task_fail(task=a, error="the model refused")
    assert status(b) == "skipped"
    assert status(c) == "skipped"
    skipped = Task.objects.get(pk=b.pk)
    assert skipped.error["prerequisite"] == a.pk
    assert "'A'" in skipped.error["message"]


@pytest.mark.django_db
def test_optional_prerequisites_neither_hold_back_nor_skip(session, make_task, run):
    a, b = make_task("A"), make_task("B")
    link(a, b, required=False)
    services.task_refresh_readiness(session=session)
    assert status(b) == "ready"
    run(a)
    services.task_fail(task=a, error="x")
    assert status(b) == "ready"


@pytest.mark.django_db
def test_skipped_and_cancelled_prerequisites_skip_dependents(session, make_task):
    a, b, c, d = make_task("A"), make_task("B"), make_task("C"), make_task("D")
    link(a, b)
    link(c, d)
    services.task_skip(task=a, reason="not needed")
    services.task_cancel(task=c, reason="operator")
    assert status(b) == "skipped"
    assert status(d) == "skipped"


@pytest.mark.django_db
def test_a_dependency_on_a_container_holds_each_of_its_leaves(session, make_task, run):
    a = make_task("A")
    box = make_task("Box")
    inner_1 = make_task("Inner 1", parent=box)
    inner_2 = make_task("Inner 2", parent=box)
    link(a, box)
    services.task_refresh_readiness(session=session)
    assert (status(inner_1), status(inner_2), status(box)) == ("pending", "pending", "pending")
    run(a)
    services.task_complete(task=a)
    assert (status(inner_1), status(inner_2), status(box)) == ("ready", "ready", "ready")


@pytest.mark.django_db
def test_a_container_follows_its_children_and_gates_its_dependents(session, make_task, run):
    box = make_task("Box")
    inner_1 = make_task("Inner 1", parent=box)
    inner_2 = make_task("Inner 2", parent=box)
    after = make_task("After")
    link(box, after)
    services.task_refresh_readiness(session=session)
    run(inner_1)
    assert status(box) == "in_progress"
    services.task_complete(task=inner_1)
    assert status(after) == "pending"
    run(inner_2)
    services.task_complete(task=inner_2)
    assert status(box) == "completed"
    assert status(after) == "ready"


@pytest.mark.django_db
def test_transitions_on_a_container_are_refused_but_cancel_cascades(session, make_task, run):
    box = make_task("Box")
    inner_1 = make_task("Inner 1", parent=box)
    inner_2 = make_task("Inner 2", parent=box)
    services.task_refresh_readiness(session=session)
    with pytest.raises(TransitionRefused) as caught:
        services.task_start(task=box)
    assert "follows them" in caught.value.message
    run(inner_1)
    services.task_cancel(task=box)
    # The running leaf keeps running (in_progress cannot be cancelled); the other is cancelled.
    assert (status(inner_1), status(inner_2), status(box)) == ("in_progress", "cancelled", "in_progress")


@pytest.mark.django_db
def test_ready_tasks_come_most_urgent_first_and_exclude_containers(session, make_task):
    low = make_task("Low", priority="low")
    blocker = make_task("Blocker", priority="blocker")
    normal_1 = make_task("Normal 1")
    normal_2 = make_task("Normal 2")
    assert services.task_refresh_plan(session=session).ready() == [blocker.pk, normal_1.pk, normal_2.pk, low.pk]
    normal_2.order = 0
    normal_2.save(update_fields=["order"])
    normal_1.order = 5
    normal_1.save(update_fields=["order"])
    assert services.task_refresh_plan(session=session).ready() == [blocker.pk, normal_2.pk, normal_1.pk, low.pk]


@pytest.mark.django_db
def test_plan_finished_counts_leaves_and_gives_the_outcome(session, make_task, run):
    a, b, c = make_task("A"), make_task("B"), make_task("C")
    link(a, c)
    services.task_refresh_readiness(session=session)
    summary = services.task_plan_finished(session=session)
    assert summary["finished"] is False and summary["outcome"] is None and summary["other"] == 3
    run(a)
    services.task_fail(task=a, error="boom")
    run(b)
    services.task_complete(task=b)
    summary = services.task_plan_finished(session=session)
    assert summary == {
        "total": 3, "completed": 1, "failed": 1, "skipped": 1, "cancelled": 0, "other": 0, "finished": True,
        "outcome": "partially_completed",
    }
    assert status(make_task.root) == "failed"


@pytest.mark.django_db
def test_root_task_is_created_once_from_the_session(session):
    root = services.task_root_for_session(session=session)
    assert root.title == session.title and root.description == session.initial_prompt
    assert services.task_root_for_session(session=session) == root
    # A task created without a parent goes under the root.
    child = services.task_create(session=session, title="Child")
    assert child.parent_id == root.pk


@pytest.mark.django_db
def test_refresh_is_idempotent(session, make_task):
    make_task("A")
    services.task_refresh_readiness(session=session)
    assert services.task_refresh_readiness(session=session) == {"ready": [], "skipped": [], "containers": {}}


@pytest.mark.django_db
def test_refresh_plan_answers_the_statuses_after_the_refresh(session, make_task, run):
    a, b = make_task("A"), make_task("B")
    link(a, b)
    plan = services.task_refresh_plan(session=session)
    root = Task.objects.get(session=session, parent__isnull=True)
    assert plan.ready() == [a.pk], "written ready by this refresh, seen without another read"
    assert root.pk not in plan.leaves() and plan.interrupted() == []
    assert plan.summary()["finished"] is False

    run(a)
    plan = services.task_refresh_plan(session=session)
    assert plan.ready() == [] and plan.interrupted() == [a.pk]
    services.task_complete(task=a)
    assert services.task_refresh_plan(session=session).ready() == [b.pk]
    run(b)
    services.task_complete(task=b)
    summary = services.task_refresh_plan(session=session).summary()
    assert (summary["total"], summary["completed"], summary["outcome"]) == (2, 2, "completed")
