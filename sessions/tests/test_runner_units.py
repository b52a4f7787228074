"""The run's plan loop, without a worker: how long it sleeps while its tasks run."""

import threading
from concurrent.futures import Future
from types import SimpleNamespace

from sessions.execution.runner import CONTROL_INTERVAL, PLAN_WAIT, SessionRun


def finishing_after(seconds):
    future = Future()
    timer = threading.Timer(seconds, future.set_result, args=(None,))
    timer.start()
    return future, timer


def test_the_plan_loop_sleeps_until_a_task_ends_when_none_waits_for_an_agent():
    assert PLAN_WAIT > 3 * CONTROL_INTERVAL
    run = SimpleNamespace(_ending=threading.Event())
    future, timer = finishing_after(3 * CONTROL_INTERVAL)
    try:
        SessionRun._wait_for_tasks(run, {future: 1}, {})
        assert future.done()  # woken by the task's end, not by a control-interval timeout
    finally:
        timer.cancel()


def test_the_plan_loop_wakes_each_control_interval_while_a_task_waits_for_an_agent():
    run = SimpleNamespace(_ending=threading.Event())
    future, timer = finishing_after(PLAN_WAIT)
    try:
        SessionRun._wait_for_tasks(run, {future: 1}, {2: 0.0})
        assert not future.done()  # back after one interval to route the waiting task again
    finally:
        timer.cancel()
