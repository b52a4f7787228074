"""Parts of a session run without a worker: the plan loop's sleep, the diff at a turn's end, a turn
rebuilt from OpenCode's messages, a step checkpoint."""

import json
import threading
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.testing import make_git_repository
from sessions.execution import task_turn, workspace
from sessions.execution.checkpointer import StepCheckpointer
from sessions.execution.session_run import PLAN_WAIT, SessionRun
from sessions.execution.task_turn import CONTROL_INTERVAL, TaskTurn
from sessions.execution.translate import TurnTranslator
from sessions.models import Checkpoint
from sessions.services import Actor
from sessions.tests.factories import CodingSessionFactory


def finishing_after(seconds):
    future = Future()
    timer = threading.Timer(seconds, future.set_result, args=(None,))
    timer.start()
    return future, timer


def test_the_plan_loop_sleeps_until_a_task_ends_when_none_waits_for_an_agent():
    assert PLAN_WAIT > 3 * CONTROL_INTERVAL
    run = SimpleNamespace(guard=SimpleNamespace(ending=threading.Event()))
    future, timer = finishing_after(3 * CONTROL_INTERVAL)
    try:
        SessionRun._wait_for_tasks(run, {future: 1}, {})
        assert future.done()  # woken by the task's end, not by a control-interval timeout
    finally:
        timer.cancel()


def test_the_plan_loop_wakes_each_control_interval_while_a_task_waits_for_an_agent():
    run = SimpleNamespace(guard=SimpleNamespace(ending=threading.Event()))
    future, timer = finishing_after(PLAN_WAIT)
    try:
        SessionRun._wait_for_tasks(run, {future: 1}, {2: 0.0})
        assert not future.done()  # back after one interval to route the waiting task again
    finally:
        timer.cancel()


def test_a_turn_that_ended_after_its_step_checkpoint_takes_its_diff_from_that_checkpoint(tmp_path):
    repository = make_git_repository(tmp_path / "repo")
    worktree = workspace.prepare_workspace(repository=repository, root=tmp_path / "ws", reference="IND-000042")
    (worktree.path / "step.txt").write_text("written by the last step\n")
    checkpoint = workspace.create_checkpoint(path=worktree.path, reference="IND-000042", name="msg_1",
                                             parent=worktree.head)
    # Not possible after a turn's last step with one task at a time; written here to show which tree is used.
    (worktree.path / "later.txt").write_text("not in the checkpoint\n")
    run = SimpleNamespace(worktree=worktree, checkpointer=SimpleNamespace(last_commit=checkpoint), task_limit=1)

    diff = SessionRun.turn_diff(run, after_step_checkpoint=True)
    assert diff["tree"] == checkpoint.tree and [f["file"] for f in diff["files"]] == ["step.txt"]
    # A turn that failed mid-step, or tasks running side by side: the worktree is read again.
    for run.task_limit, after in ((1, False), (2, True)):
        diff = SessionRun.turn_diff(run, after_step_checkpoint=after)
        assert [f["file"] for f in diff["files"]] == ["later.txt", "step.txt"]


def test_a_turn_rebuilt_from_opencode_messages_knows_which_steps_ran_tools(monkeypatch):
    # After a reconnect the turn is rebuilt from GET /session/{id}/message (a real recorded answer):
    # each assistant step's tool parts are fed before the step's end, as the stream delivers them.
    messages = json.loads((Path(__file__).parent / "data" / "recipe-messages.json").read_text())
    opencode_id = messages[0]["info"]["sessionID"]
    monkeypatch.setattr(task_turn, "session_snapshot", lambda *args, **kwargs: {
        "finished": True, "messages": messages, "error": None})
    recorded = []
    turn = SimpleNamespace(client=None, opencode_session_id=opencode_id, translator=TurnTranslator(opencode_id),
                           task=None,
                           session_run=SimpleNamespace(record=lambda records, task=None: recorded.extend(records)))
    TaskTurn.rebuild_after_reconnect(turn)
    assert turn.translator.finished
    assert [step.ran_tools for step in turn.translator.completed_steps] == [True, True, False]
    kinds = [kind for kind, _ in recorded]
    assert kinds.count("opencode.step") == 3 and kinds.count("assistant.text") == 1  # the prompt is not the answer


@pytest.mark.django_db
def test_a_step_that_ran_no_tool_reuses_the_previous_checkpoint_without_git(tmp_path, monkeypatch):
    repository = make_git_repository(tmp_path / "repo")
    worktree = workspace.prepare_workspace(repository=repository, root=tmp_path / "ws", reference="IND-000043")
    session = CodingSessionFactory(status="running", worker_id="w1")
    (worktree.path / "step.txt").write_text("written by a tool\n")
    checkpointer = StepCheckpointer(session=session, actor=Actor.worker("w1"))
    checkpointer.worktree, checkpointer.shared_worktree = worktree, False
    task = SimpleNamespace(pk=7)
    try:
        checkpointer.take(task=task, message_id="msg_1", task_step=1, reason="step")
        first = checkpointer.last_commit
        commands = []
        original = workspace.git
        monkeypatch.setattr(workspace, "git",
                            lambda *args, **kwargs: commands.append(args[0]) or original(*args, **kwargs))

        checkpointer.take(task=task, message_id="msg_2", task_step=2, reason="step", unchanged=True)
        assert commands == [] and checkpointer.last_commit is first
        refs = list(Checkpoint.objects.filter(session=session).order_by("sequence").values_list("git_ref", flat=True))
        assert refs == [first.commit, first.commit]
        # Tasks side by side in the worktree: another one may have changed it, so git looks.
        checkpointer.shared_worktree = True
        checkpointer.take(task=task, message_id="msg_3", task_step=3, reason="step", unchanged=True)
        assert commands == ["add", "write-tree"]
    finally:
        checkpointer.close()
