import pytest

from orchestrator.errors import Conflict, ValidationFailed
from tasks import services
from tasks.models import Task, TaskDependency


@pytest.mark.django_db
def test_decompose_writes_the_tree_with_dependencies_and_records_the_template(session, make_task):
    task = make_task("Build the invoice CRUD", hours=(0, 0, 0))
    outcome = services.task_decompose(task=task)
    assert outcome["template"] == "crud" and "'crud' in the title" in outcome["reason"]
    task.refresh_from_db()
    assert task.decomposition_template == "crud"
    assert task.decomposition_reason == outcome["reason"]
    subtasks = list(Task.objects.filter(parent=task).order_by("order"))
    assert [s.title for s in subtasks][0] == "Implement the data model and migration for invoice CRUD"
    assert subtasks[0].required_capabilities == ["system_design", "code_generation"]
    assert subtasks[0].expected_hours == pytest.approx((1 + 8 + 4) / 6)
    model = subtasks[0]
    assert set(TaskDependency.objects.filter(prerequisite=model).values_list("dependent__title", flat=True)) == {
        s.title for s in subtasks[1:5]
    }
    # The parent had no estimate: it takes the sum of the leaves.
    assert task.expected_hours == pytest.approx(sum(s.expected_hours for s in subtasks))
    # The first step is ready at once; the rest wait for it.
    assert [s.status for s in Task.objects.filter(parent=task).order_by("order")][:2] == ["ready", "pending"]


@pytest.mark.django_db
def test_decompose_respects_max_depth_in_the_database(make_task):
    task = make_task("Build the orders microservice", hours=(100, 200, 300))
    services.task_decompose(task=task, max_depth=2)

    def depth(t):
        level = 0
        while t.parent_id != task.pk:
            t = t.parent
            level += 1
        return level + 1

    below = Task.objects.filter(session=task.session).exclude(pk__in=[task.pk, task.parent_id])
    assert max(depth(t) for t in below.select_related("parent__parent")) == 2


@pytest.mark.django_db
def test_decomposing_again_is_refused_unless_replace(make_task):
    task = make_task("Fix the crash on save")
    services.task_decompose(task=task, template="bugfix")
    first = set(Task.objects.filter(parent=task).values_list("id", flat=True))
    with pytest.raises(Conflict):
        services.task_decompose(task=task, template="refactor")
    assert set(Task.objects.filter(parent=task).values_list("id", flat=True)) == first
    services.task_decompose(task=task, template="refactor", replace=True)
    titles = list(Task.objects.filter(parent=task).order_by("order").values_list("title", flat=True))
    assert titles[0] == "Analyse the current design of crash on save"
    assert not Task.objects.filter(pk__in=first).exists()


@pytest.mark.django_db
def test_replace_is_refused_once_a_subtask_has_started(make_task, run):
    task = make_task("Fix the crash on save")
    services.task_decompose(task=task, template="bugfix")
    first = Task.objects.filter(parent=task).order_by("order").first()
    run(first)
    with pytest.raises(Conflict):
        services.task_decompose(task=task, replace=True)


@pytest.mark.django_db
def test_without_auto_estimate_subtasks_have_no_estimate(make_task):
    task = make_task("Secure the API")
    services.task_decompose(task=task, template="security", auto_estimate=False, max_depth=1)
    assert set(Task.objects.filter(parent=task).values_list("expected_hours", flat=True)) == {0.0}


@pytest.mark.django_db
def test_invalid_depth_writes_nothing(make_task):
    task = make_task("Secure the API")
    with pytest.raises(ValidationFailed):
        services.task_decompose(task=task, max_depth=9)
    assert not Task.objects.filter(parent=task).exists()


@pytest.mark.django_db
def test_the_engine_runs_the_decomposed_root(session):
    root = services.task_root_for_session(session=session)
    services.task_decompose(task=root, template="bugfix")
    ready = services.task_refresh_plan(session=session).ready()
    assert [Task.objects.get(pk=pk).title.split(" ")[0] for pk in ready] == ["Reproduce"]
