"""Fixtures for the database tests; imports stay inside them so the plain-module tests
also run without Django (pytest -p no:django tasks/tests/test_graph.py ...)."""

import pytest


@pytest.fixture
def session(db):
    from tasks.tests.factories import SessionFactory

    return SessionFactory()


@pytest.fixture
def agent(db):
    from tasks.tests.factories import AgentFactory

    return AgentFactory()


@pytest.fixture
def make_task(session):
    """Create a task under the session's root (created on first use) through the service."""
    from tasks import services

    root = services.task_root_for_session(session=session)

    def make(title, *, parent=None, hours=(0.5, 1, 2), **extra):
        o, m, p = hours
        return services.task_create(
            session=session, title=title, parent=parent or root, optimistic_hours=o, likely_hours=m,
            pessimistic_hours=p, **extra,
        )

    make.root = root
    return make


@pytest.fixture
def run(agent):
    """Drive a leaf to in_progress the way the engine does: assign, then start."""
    from tasks import services

    def start(task):
        services.task_assign(task=task, agent=agent)
        return services.task_start(task=task)

    return start


@pytest.fixture(params=["sql", "orm"])
def plan_read(request, monkeypatch):
    """Run a test once over the plan read of tasks.sql and once over the same read through the ORM."""
    if request.param == "orm":
        from tasks import sql
        from tasks.tests import orm_reference

        monkeypatch.setattr(sql, "plan_rows", orm_reference.plan_rows)
    return request.param
