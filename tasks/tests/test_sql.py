"""tasks.sql against the ORM: the plan read returns what the same read through the ORM returns."""

import pytest

from tasks import services, sql
from tasks.tests import orm_reference


def _sorted(rows):
    return sorted(rows.tasks, key=lambda row: row.id), sorted(
        rows.links, key=lambda link: (link.prerequisite, link.dependent)
    )


@pytest.fixture
def varied_session(session, make_task, run):
    """Containers two levels deep, every dependency type, optional links, several priorities,
    orders and statuses; and a second session whose rows must not leak in."""
    a = make_task("A", priority="blocker")
    b = make_task("B", priority="low", order=7)
    c = make_task("C")
    services.task_decompose(task=c, template="crud", max_depth=2)
    leaves = [make_task(f"D{index}", parent=b) for index in range(3)]
    services.task_add_dependency(prerequisite=a, dependent=b)
    services.task_add_dependency(prerequisite=a, dependent=c, dependency_type="start_to_start", is_required=False)
    services.task_add_dependency(prerequisite=leaves[0], dependent=leaves[1], dependency_type="finish_to_finish")
    services.task_add_dependency(prerequisite=leaves[1], dependent=leaves[2], dependency_type="start_to_finish")
    services.task_refresh_readiness(session=session)
    run(a)
    services.task_complete(task=a, result={}, output="")
    from tasks.tests.factories import SessionFactory

    other = SessionFactory()
    services.task_create(session=other, title="Elsewhere")
    return session


@pytest.mark.django_db
def test_plan_rows_equal_the_orm_read(varied_session):
    by_sql, by_orm = sql.plan_rows(varied_session.pk), orm_reference.plan_rows(varied_session.pk)
    assert _sorted(by_sql) == _sorted(by_orm)
    tasks, links = _sorted(by_sql)
    assert len(tasks) > 10
    assert {task.status for task in tasks} >= {"completed", "ready", "pending"}
    assert {task.priority for task in tasks} >= {"blocker", "low", "normal"}
    assert {link.type for link in links} == {"finish_to_start", "start_to_start", "finish_to_finish", "start_to_finish"}
    assert {link.required for link in links} == {True, False}
    assert all(isinstance(link.required, bool) for link in links)


@pytest.mark.django_db
def test_plan_rows_of_a_session_without_tasks_are_empty(session):
    assert sql.plan_rows(session.pk) == orm_reference.plan_rows(session.pk) == sql.PlanRows(tasks=[], links=[])
