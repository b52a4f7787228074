"""Concurrent writers against one context on PostgreSQL: no lost writes, exact history."""

import threading

import pytest
from django.db import connection

from contexts import services
from contexts.models import Context, ContextChange, Scope
from contexts.tests.factories import make_session
from orchestrator.errors import StaleVersion

THREADS = 8
UPDATES_PER_THREAD = 6


def _run_threads(target):
    errors = []
    start = threading.Barrier(THREADS)

    def run(index):
        try:
            start.wait(timeout=10)
            target(index)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_eight_writers_read_modify_write_with_retry_lose_nothing():
    context = services.context_create(scope=Scope.GLOBAL, name="hot", data={"counter": 0, "log": []}, actor="t")
    retries = []

    def writer(index):
        for step in range(UPDATES_PER_THREAD):
            while True:
                current = Context.objects.get(pk=context.pk)
                changes = {
                    "counter": current.data["counter"] + 1,
                    f"log.{len(current.data['log'])}": f"{index}-{step}",
                    f"writers.w{index}": step,
                }
                try:
                    services.context_set(
                        context=current, changes=changes, expected_version=current.version, actor=f"w{index}"
                    )
                    break
                except StaleVersion:
                    retries.append(index)

    _run_threads(writer)
    total = THREADS * UPDATES_PER_THREAD
    context.refresh_from_db()
    assert context.data["counter"] == total
    assert sorted(context.data["log"]) == sorted(f"{i}-{s}" for i in range(THREADS) for s in range(UPDATES_PER_THREAD))
    assert context.data["writers"] == {f"w{i}": UPDATES_PER_THREAD - 1 for i in range(THREADS)}
    assert context.version == 1 + total
    history = ContextChange.objects.filter(context=context)
    # Each write changes counter and appends to log; writers.wN is added once and then changed.
    assert history.count() == 3 * total
    assert sorted(set(history.values_list("version", flat=True))) == list(range(2, total + 2))
    for version in range(2, total + 2):
        assert history.filter(version=version).count() == 3
    assert retries, "eight writers on one row should have collided at least once"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_parallel_task_outputs_of_one_session_are_all_recorded():
    session = make_session()
    services.context_for_session(session=session)

    def record(index):
        for step in range(3):
            services.context_record_task_output(
                session=session, task_key=f"t{index}_{step}", output={"n": index}, status="completed", actor="engine"
            )

    _run_threads(record)
    context = services.context_for_session(session=session)
    assert len(context.data["tasks"]) == THREADS * 3
    assert context.version == 1 + THREADS * 3


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_shares_racing_task_outputs_into_one_session_context_keep_both():
    session = make_session()
    services.context_for_session(session=session)
    sources = [
        services.context_create(
            scope=Scope.GLOBAL, name=f"src{i}", data={"shared": {f"s{i}": i}, "tags": [i]}, actor="t"
        )
        for i in range(THREADS // 2)
    ]

    def act(index):
        if index % 2:
            services.context_share(source=sources[index // 2], target_session=session, strategy="deep_merge", actor="t")
        else:
            for step in range(3):
                services.context_record_task_output(
                    session=session, task_key=f"t{index}_{step}", output=step, actor="e"
                )

    _run_threads(act)
    context = services.context_for_session(session=session)
    assert context.data["shared"] == {f"s{i}": i for i in range(THREADS // 2)}
    assert sorted(context.data["tags"]) == list(range(THREADS // 2))
    assert len(context.data["tasks"]) == (THREADS // 2) * 3
    assert context.version == 1 + THREADS // 2 + (THREADS // 2) * 3
