"""Parts of a session run without a worker: the plan loop's sleep, the diff at a turn's end."""

import threading
from concurrent.futures import Future
from types import SimpleNamespace

from orchestrator.testing import make_git_repository
from sessions.execution import workspace
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


def test_a_turn_that_ended_after_its_step_checkpoint_takes_its_diff_from_that_checkpoint(tmp_path):
    repository = make_git_repository(tmp_path / "repo")
    ws = workspace.prepare_workspace(repository=repository, root=tmp_path / "ws", reference="IND-000042")
    (ws.path / "step.txt").write_text("written by the last step\n")
    checkpoint = workspace.create_checkpoint(path=ws.path, reference="IND-000042", name="msg_1", parent=ws.head)
    # Not possible after a turn's last step with one task at a time; written here to show which tree is used.
    (ws.path / "later.txt").write_text("not in the checkpoint\n")
    run = SimpleNamespace(ws=ws, _last_checkpoint=checkpoint, task_limit=1)

    diff = SessionRun.turn_diff(run, after_step_checkpoint=True)
    assert diff["tree"] == checkpoint.tree and [f["file"] for f in diff["files"]] == ["step.txt"]
    # A turn that failed mid-step, or tasks running side by side: the worktree is read again.
    for run.task_limit, after in ((1, False), (2, True)):
        diff = SessionRun.turn_diff(run, after_step_checkpoint=after)
        assert [f["file"] for f in diff["files"]] == ["later.txt", "step.txt"]
