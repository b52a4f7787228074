"""Concurrent plan reviews of one session (PostgreSQL row locks): one decision wins, the rest are 409."""

import threading

import pytest
from django.db import connection

from orchestrator.errors import Conflict
from sessions import services
from sessions.models import CodingSession
from sessions.planning import services as planning
from tasks.models import PlanStatus, SessionPlan, Task

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def plan(*keys):
    return {"summary": "s", "tasks": [
        {"key": key, "title": key, "prompt": f"do {key}", "capabilities": [], "files": [f"{key}.py"],
         "estimate_hours": {"optimistic": 1, "likely": 1, "pessimistic": 1}} for key in keys]}


def run_concurrently(work_items):
    barrier = threading.Barrier(len(work_items))
    outcomes = []

    def worker(work):
        try:
            barrier.wait()
            outcomes.append(("ok", work()))
        except Conflict as exc:
            outcomes.append(("refused", exc))
        except Exception as exc:  # anything else is a bug the test reports
            outcomes.append(("error", exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(work,)) for work in work_items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_approvals_revisions_and_replacements_leave_one_consistent_outcome(broker_queues):
    session = planning.session_create_planned(
        title="Books app", initial_prompt="Add books.", repository="/srv/repos/library",
        planning={"plan_approval": "required"}, plan=plan("a", "b"),
    )
    services.session_start(session=session, immediate=True, worker_id="w1")
    planning.plan_await_review(session=session)

    work = [lambda: planning.plan_approve(session=session) for _ in range(4)]
    work += [lambda: planning.plan_revise(session=session, comment="smaller") for _ in range(4)]
    outcomes = run_concurrently(work)
    kinds = [kind for kind, _ in outcomes]
    assert kinds.count("ok") == 1 and kinds.count("refused") == 7, outcomes

    assert CodingSession.objects.get(pk=session.pk).status == "queued"
    decided = list(SessionPlan.objects.filter(session=session).values_list("status", flat=True))
    assert decided in (["approved"], ["sent_back"])


def test_concurrent_replacements_each_leave_a_whole_graph(broker_queues):
    session = planning.session_create_planned(
        title="Books app", initial_prompt="Add books.", repository="/srv/repos/library",
        planning={"plan_approval": "required"}, plan=plan("a"),
    )
    services.session_start(session=session, immediate=True, worker_id="w1")
    planning.plan_await_review(session=session)
    plans = [plan(*[f"p{n}x{i}" for i in range(5)]) for n in range(6)]
    outcomes = run_concurrently([lambda body=body: planning.plan_replace(session=session, plan=body)
                                 for body in plans])
    assert [kind for kind, _ in outcomes] == ["ok"] * 6, outcomes
    current = SessionPlan.objects.filter(session=session).order_by("-version").first()
    assert current.version == 7 and current.status == PlanStatus.PROPOSED
    keys = set(Task.objects.filter(session=session).exclude(plan_key="").values_list("plan_key", flat=True))
    # The graph is exactly the current version's tasks: no mix of two replacements.
    assert keys == {task["key"] for task in current.submitted["tasks"]}
    assert set(SessionPlan.objects.filter(session=session).exclude(pk=current.pk)
               .values_list("status", flat=True)) == {"superseded"}
