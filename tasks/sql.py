"""The tasks app's hand-written SQL: the read of a session's plan.

A worker reads a session's plan four times per task (start, completion and the plan
loop's refreshes), and Django compiled the two ORM queries every time
(docs/decisions/0011). The statements hold only fixed identifiers (the Task and
TaskDependency tables) and placeholders. The tests hold them to the same read
through the ORM (tasks/tests/test_sql.py), and run the readiness behaviour over both.
"""

from dataclasses import dataclass
from functools import lru_cache

from django.db import connection

from tasks.models import Task, TaskDependency
from tasks.readiness import Link


@dataclass(frozen=True)
class PlanTaskRow:
    """What the readiness rules and the plan loop need of one task."""

    id: int
    parent_id: int | None
    status: str
    priority: str
    order: int


@dataclass(frozen=True)
class PlanRows:
    """A session's tasks (in no particular order) and the dependency links between them."""

    tasks: list[PlanTaskRow]
    links: list[Link]


@lru_cache(maxsize=1)
def _plan_sql() -> tuple[str, str]:
    quote = connection.ops.quote_name
    tasks = (
        f"SELECT id, parent_id, status, priority, {quote('order')} FROM {quote(Task._meta.db_table)} "
        "WHERE session_id = %s"
    )
    links = (
        "SELECT link.prerequisite_id, link.dependent_id, link.dependency_type, link.is_required "
        f"FROM {quote(TaskDependency._meta.db_table)} link JOIN {quote(Task._meta.db_table)} dependent "
        "ON dependent.id = link.dependent_id WHERE dependent.session_id = %s"
    )
    return tasks, links


def plan_rows(session_id: int) -> PlanRows:
    """Every task of the session and every link whose dependent is one of them: two statements.

    Read outside any lock: every write the readiness refresh makes from it is a compare-and-set.
    """
    tasks_sql, links_sql = _plan_sql()
    with connection.cursor() as cursor:
        cursor.execute(tasks_sql, [session_id])
        tasks = [PlanTaskRow(*row) for row in cursor.fetchall()]
        cursor.execute(links_sql, [session_id])
        # SQLite answers booleans as 0/1.
        links = [
            Link(prerequisite, dependent, kind, bool(required))
            for prerequisite, dependent, kind, required in cursor.fetchall()
        ]
    return PlanRows(tasks=tasks, links=links)
