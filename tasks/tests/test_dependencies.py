import pytest

from orchestrator.errors import Conflict, ValidationFailed
from tasks import services
from tasks.models import TaskDependency
from tasks.tests.factories import SessionFactory


def snapshot():
    return sorted(TaskDependency.objects.values_list("prerequisite_id", "dependent_id", "dependency_type"))


@pytest.mark.django_db
def test_a_cycle_is_refused_with_its_names_and_nothing_is_written(make_task):
    a, b, c = make_task("A"), make_task("B"), make_task("C")
    services.task_add_dependency(prerequisite=a, dependent=b)
    services.task_add_dependency(prerequisite=b, dependent=c)
    before = snapshot()
    with pytest.raises(ValidationFailed) as caught:
        services.task_add_dependency(prerequisite=c, dependent=a)
    assert "A → B → C → A" in caught.value.message
    assert snapshot() == before


@pytest.mark.django_db
def test_the_reverse_of_an_existing_link_is_a_two_task_cycle(make_task):
    a, b = make_task("A"), make_task("B")
    services.task_add_dependency(prerequisite=a, dependent=b)
    with pytest.raises(ValidationFailed) as caught:
        services.task_add_dependency(prerequisite=b, dependent=a, dependency_type="start_to_start")
    assert "A → B → A" in caught.value.message
    assert len(snapshot()) == 1


@pytest.mark.django_db
def test_self_and_duplicate_dependencies_are_refused(make_task):
    a, b = make_task("A"), make_task("B")
    with pytest.raises(ValidationFailed) as caught:
        services.task_add_dependency(prerequisite=a, dependent=a)
    assert "A → A" in caught.value.message
    services.task_add_dependency(prerequisite=a, dependent=b)
    with pytest.raises(ValidationFailed) as caught:
        services.task_add_dependency(prerequisite=a, dependent=b, dependency_type="start_to_start")
    assert "already depends" in caught.value.message
    assert snapshot() == [(a.pk, b.pk, "finish_to_start")]


@pytest.mark.django_db
def test_a_cycle_through_a_container_is_refused(make_task):
    box = make_task("Box")
    inner = make_task("Inner", parent=box)
    x = make_task("X")
    services.task_add_dependency(prerequisite=box, dependent=x)
    with pytest.raises(ValidationFailed) as caught:
        services.task_add_dependency(prerequisite=x, dependent=inner)
    assert "Inner → X → Inner" in caught.value.message


@pytest.mark.django_db
def test_links_inside_one_subtree_or_across_sessions_are_refused(make_task):
    box = make_task("Box")
    inner = make_task("Inner", parent=box)
    with pytest.raises(ValidationFailed):
        services.task_add_dependency(prerequisite=box, dependent=inner)
    other_session = SessionFactory()
    stranger = services.task_root_for_session(session=other_session)
    with pytest.raises(ValidationFailed):
        services.task_add_dependency(prerequisite=stranger, dependent=inner)
    assert snapshot() == []


@pytest.mark.django_db
def test_unknown_type_is_refused(make_task):
    a, b = make_task("A"), make_task("B")
    with pytest.raises(ValidationFailed) as caught:
        services.task_add_dependency(prerequisite=a, dependent=b, dependency_type="whenever")
    assert "dependency_type" in caught.value.errors


@pytest.mark.django_db
def test_a_ready_task_cannot_gain_a_required_prerequisite_it_does_not_meet(session, make_task):
    a, b = make_task("A"), make_task("B")
    services.task_refresh_readiness(session=session)
    with pytest.raises(Conflict):
        services.task_add_dependency(prerequisite=a, dependent=b)
    # Optional links only order the plan, so they are fine.
    services.task_add_dependency(prerequisite=a, dependent=b, is_required=False)
    assert snapshot() == [(a.pk, b.pk, "finish_to_start")]


@pytest.mark.django_db
def test_removing_a_link_frees_the_dependent_at_the_next_refresh(session, make_task):
    a, b = make_task("A"), make_task("B")
    dependency = services.task_add_dependency(prerequisite=a, dependent=b)
    services.task_refresh_readiness(session=session)
    b.refresh_from_db()
    assert b.status == "pending"
    services.task_remove_dependency(dependency=dependency)
    services.task_refresh_readiness(session=session)
    b.refresh_from_db()
    assert b.status == "ready"
