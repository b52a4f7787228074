"""The reads of tasks.sql written with the ORM: the reference the SQL is held to.

tasks/tests/test_sql.py compares the two on a varied session, and the `plan_read`
fixture (conftest.py) runs the readiness and transition behaviour over each.
"""

from tasks.models import Task, TaskDependency
from tasks.readiness import Link
from tasks.sql import PlanRows, PlanTaskRow


def plan_rows(session_id: int) -> PlanRows:
    tasks = [
        PlanTaskRow(*row)
        for row in Task.objects.filter(session_id=session_id).values_list(
            "id", "parent_id", "status", "priority", "order"
        )
    ]
    links = [
        Link(*row)
        for row in TaskDependency.objects.filter(dependent__session_id=session_id).values_list(
            "prerequisite_id", "dependent_id", "dependency_type", "is_required"
        )
    ]
    return PlanRows(tasks=tasks, links=links)
