"""Issue 24, finding 10: the benchmarks' multi-process clients are spawned (not forked from a
process whose threads hold locks), and a client that never finishes fails the run with a message
within a bounded time instead of hanging it."""

import threading

import pytest

from bench import sessions_api

# Held by a thread of the parent while the clients run, as the broadcaster and the connection
# pool hold theirs: a forked child would inherit it held, and wait on it forever.
HELD_BY_PARENT = threading.Lock()


def work_count_agents(context, index, i):
    from agents.models import Agent

    if not HELD_BY_PARENT.acquire(timeout=5):
        raise RuntimeError("a lock held by the parent's thread was inherited held")
    HELD_BY_PARENT.release()
    Agent.objects.count()


def work_hang_in_client_one(context, index, i):
    if index == 1:
        threading.Event().wait()  # never set: this client hangs


@pytest.mark.django_db(transaction=True)
def test_client_processes_do_not_inherit_the_parent_threads_locks_and_reach_its_database():
    taken, done = threading.Event(), threading.Event()

    def hold():
        with HELD_BY_PARENT:
            taken.set()
            done.wait(timeout=120)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(timeout=10)
    try:
        assert sessions_api.run_processes(2, 3, work_count_agents, {}) > 0
    finally:
        done.set()
        holder.join(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_a_client_that_hangs_fails_the_run_with_a_message(monkeypatch):
    monkeypatch.setattr(sessions_api, "CLIENT_RUN_TIMEOUT", 5.0)
    with pytest.raises(RuntimeError, match=r"client process\(es\) \[1\] did not finish within 5 s"):
        sessions_api.run_processes(2, 1, work_hang_in_client_one, {})
