"""One OpenCode turn of one task: how it begins, following its events until it ends, its outcome."""

import logging
import queue
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings

from agents.models import Agent
from sessions import services as session_services
from sessions.execution import workspace
from sessions.execution.permission_watch import PermissionWatch
from sessions.execution.run_guard import SessionEnded, abort_turn
from sessions.execution.streams import ServerEvents
from sessions.execution.translate import TURN_EVENT_TYPES, StepUsage, TurnTranslator
from sessions.models import SessionStatus as S
from sessions.opencode.client import model_ref
from sessions.opencode.errors import NotFound as OpenCodeNotFound
from sessions.opencode.errors import OpenCodeError
from sessions.opencode.events import RECONNECTED, session_snapshot
from tasks import services as task_services
from tasks.models import Task

logger = logging.getLogger(__name__)

CONTROL_INTERVAL = 0.5
STREAM_CONNECT_TIMEOUT = 15.0
SILENCE_CHECK_SECONDS = 10.0


@dataclass
class TurnOutcome:
    completed: bool
    text: str = ""
    error: dict | None = None
    tokens: int = 0
    cost: Decimal = Decimal("0")
    opencode_session_id: str = ""
    diff: dict = field(default_factory=dict)
    acceptance: dict | None = None  # the last run of the task's acceptance command (task_worktrees)


class TurnEvents:
    """The events of one worktree, from the server's shared stream (streams.ServerEvents), into
    `queue` between start and stop."""

    def __init__(self, server_events: ServerEvents, directory: str):
        self.queue = queue.Queue()
        self.server_events = server_events
        self.directory = directory
        self.connected = server_events.connected
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.server_events.subscribe(self.directory, self.queue, types=TURN_EVENT_TYPES)

    def stop(self) -> None:
        if self.started:
            self.server_events.unsubscribe(self.directory, self.queue)


class TaskTurn:
    """One OpenCode turn of one task: prompt (or continue, or re-attach), follow the stream, record.

    Owns: the task's OpenCode session id, the translator of its events, the count of its assistant
    steps (done before and during this turn) and their usage, and, while the turn is followed, when
    it last made progress, last checked control and last asked OpenCode for a snapshot, and whether
    this turn degraded the session. The session run (`session_run`) owns the rest: the worktree,
    the server, the recording, the guard and the checkpointer.
    """

    def __init__(self, session_run, task: Task, agent: Agent, events: TurnEvents, *,
                 opencode_session_future: Future | None = None, place=None):
        self.session_run = session_run
        self.task = task
        self.agent = agent
        # The OpenCode agent prompted: the agent's own, unless the turn needs another (a planning
        # turn always runs on the read-only `plan` agent, whichever agent took it).
        self.opencode_agent = agent.opencode_agent
        self.events = events
        # The worktree and checkpointer the turn works with (task_worktrees.TaskPlace): the task's own
        # in a parallel session, else the session's.
        self.place = place or session_run.task_worktrees.session_place()
        self.checkpointer = self.place.checkpointer
        self.client = session_run.server.client(directory=self.place.directory)
        self.opencode_session_id = ""
        self.translator = None
        self.task_step = 0
        self.usage = {"tokens": 0, "cost": Decimal("0")}
        # A Future of the OpenCode session id made while the task was routed (SessionRun.run_task);
        # None once this turn has taken it.
        self.opencode_session_future = opencode_session_future
        # While the turn is followed (see follow):
        self.steps_seen = 0
        self.last_progress = self.last_control = self.last_snapshot = 0.0
        self.degraded_by_us = False
        self.permissions = None

    def run(self, task: Task, *, resume: bool = False) -> TurnOutcome:
        session_run = self.session_run
        self.task = task
        try:
            how, prompt = self._choose_start(resume)
            task_services.task_set_opencode_session(task=task, opencode_session_id=self.opencode_session_id)
            session_services.session_set_runtime(session_id=session_run.session_id,
                                                 opencode_session_id=self.opencode_session_id)
            self.translator = TurnTranslator(self.opencode_session_id)
            self.events.start()  # before the prompt: nothing is replayed
            if not self.events.connected.wait(STREAM_CONNECT_TIMEOUT):
                raise OpenCodeError("OpenCode's event stream did not connect")
            model = session_run.session.model_identifier or self.agent.model_identifier
            if how == "reattach":
                # The turn still runs on this server: follow it without prompting again.
                self.translator.feed({"type": "session.status", "properties": {
                    "sessionID": self.opencode_session_id, "status": {"type": "busy"}}})
                if session_snapshot(self.client, self.opencode_session_id, messages_if_busy=False)["finished"]:
                    self.rebuild_after_reconnect()
            else:
                self.client.prompt_async(
                    self.opencode_session_id, text=prompt, agent=self.opencode_agent or None,
                    model=model_ref(model) if model else None, system=self.agent.system_prompt or None,
                )
            session_run.record([("task.prompted", {
                "task_id": task.pk, "opencode_session_id": self.opencode_session_id, "agent": self.agent.name,
                "opencode_agent": self.opencode_agent, "model": model or "default", "how": how,
                "steps_done": self.task_step,
            })])
            return self.follow(self.events.queue)
        except SessionEnded as ended:
            self._ended(task, ended)
            raise

    def run_next(self, task: Task, *, prompt: str, note: dict) -> TurnOutcome:
        """Another turn of `task` on the OpenCode session its last turn ran on (an operator's
        message, execution/operator_messages.py), followed like the first: events, step
        checkpoints, usage. `note` is added to its "task.prompted" record."""
        session_run = self.session_run
        self.task = task
        try:
            self.translator = self.translator.next_turn()
            self.events.start()
            model = session_run.session.model_identifier or self.agent.model_identifier
            self.client.prompt_async(
                self.opencode_session_id, text=prompt, agent=self.agent.opencode_agent or None,
                model=model_ref(model) if model else None, system=self.agent.system_prompt or None,
            )
            session_run.record([("task.prompted", {
                "task_id": task.pk, "opencode_session_id": self.opencode_session_id, "agent": self.agent.name,
                "opencode_agent": self.agent.opencode_agent, "model": model or "default", "how": "next_turn",
                "steps_done": self.task_step, **note,
            })])
            return self.follow(self.events.queue)
        except SessionEnded as ended:
            self._ended(task, ended)
            raise

    def _ended(self, task: Task, ended: SessionEnded) -> None:
        """The run must stop: abort the turn, and checkpoint where it stood when it pauses."""
        if self.opencode_session_id:
            abort_turn(self.client, self.opencode_session_id)
        if ended.status == S.PAUSED:
            self.checkpointer.take_now(
                task=task, message_id=self.translator.last_message_id if self.translator else "",
                task_step=self.task_step, reason="pause")

    def _choose_start(self, resume: bool) -> tuple[str, str]:
        """("new" | "continue" | "reattach" | "resume", prompt): how this turn begins.

        - continue: the task was paused and its OpenCode session is on this server: ask it to go on.
        - reattach: a lost worker's turn is still running on this server: follow it.
        - resume: the task was interrupted and its OpenCode session is gone (another server, or a
          checkpoint restore): a new OpenCode session, told which steps are done.
        """
        session_run, task = self.session_run, self.task
        restored = session_run.restored_checkpoint
        existing = task.opencode_session_id if resume else ""
        if existing and restored is None:
            try:
                snapshot = session_snapshot(self.client, existing)
            except OpenCodeNotFound:
                snapshot = None
            if snapshot is not None:
                self.opencode_session_id = existing
                self.task_step = session_run.steps_done(task)
                if snapshot["status"] != "idle":
                    return "reattach", ""
                return "continue", (
                    "Continue the task from where it stopped (it was interrupted). "
                    "Do not repeat steps that are already done."
                )
        prompt = session_run.task_prompt(task)  # while the OpenCode session is being made
        if self.opencode_session_future is not None:
            self.opencode_session_id, self.opencode_session_future = self.opencode_session_future.result(), None
        else:
            self.opencode_session_id = session_run.create_opencode_session(task, directory=self.place.directory)
        if not resume:
            return "new", prompt
        self.task_step = session_run.steps_done(task, up_to_sequence=restored.sequence if restored else None)
        note = (
            f"This task was interrupted and is resumed: its first {self.task_step} steps are done and their "
            f"changes are in the workspace. Continue from there; do not repeat them.\n@@resume {self.task_step}"
        )
        return "resume", prompt + "\n\n" + note

    def continue_with(self, prompt: str, *, reason: str) -> TurnOutcome:
        """One more turn on this task's OpenCode session after `run` (an acceptance command's
        failure, with its output: task_worktrees). The events of the ended turn are dropped first:
        the new translator must not take their end for this turn's."""
        session_run, task = self.session_run, self.task
        while True:
            try:
                self.events.queue.get_nowait()
            except queue.Empty:
                break
        self.translator = TurnTranslator(self.opencode_session_id)
        model = session_run.session.model_identifier or self.agent.model_identifier
        try:
            self.client.prompt_async(
                self.opencode_session_id, text=prompt, agent=self.agent.opencode_agent or None,
                model=model_ref(model) if model else None, system=self.agent.system_prompt or None,
            )
            session_run.record([("task.prompted", {
                "task_id": task.pk, "opencode_session_id": self.opencode_session_id, "agent": self.agent.name,
                "opencode_agent": self.agent.opencode_agent, "model": model or "default", "how": reason,
                "steps_done": self.task_step,
            })])
            return self.follow(self.events.queue)
        except SessionEnded as ended:
            abort_turn(self.client, self.opencode_session_id)
            if ended.status == S.PAUSED:
                self.checkpointer.take_now(task=task, message_id=self.translator.last_message_id,
                                           task_step=self.task_step, reason="pause")
            raise

    # --- following the turn ------------------------------------------------------------

    def follow(self, events: queue.Queue) -> TurnOutcome:
        """Follow the turn on `events` until the translator sees it end, then say how it ended.

        Each pass records what arrived (one transaction per burst), then runs the periodic checks:
        control and budgets every CONTROL_INTERVAL, a snapshot from OpenCode when the stream has been
        quiet (its end may have been missed), and the session's health (stall, a permission request
        waiting, expiry of unanswered requests)."""
        now = time.monotonic()
        self.steps_seen = 0
        self.last_progress = self.last_control = self.last_snapshot = now
        self.degraded_by_us = False
        self.permissions = PermissionWatch(self.session_run, self)
        while not self.translator.finished:
            # Events wake this at once; the timeout only paces the periodic checks below.
            batch = _take_events(events, timeout=CONTROL_INTERVAL)
            now = time.monotonic()
            if batch:
                self._record_batch(batch, now)
            if now - self.last_control >= CONTROL_INTERVAL:
                self.last_control = now
                self._check_control()
            self._check_silence(now)
            self._check_health(now)
        if self.degraded_by_us:
            self.session_run.guard.recover("turn ended")
        return self._outcome()

    def _record_batch(self, batch: list, now: float) -> None:
        """Record everything that arrived meanwhile in one transaction (a burst of OpenCode events
        does not queue behind one commit per event); follow the provider's retries, the permission
        requests and the completed steps it announced."""
        session_run, translator = self.session_run, self.translator
        records = []
        for item in batch:
            if isinstance(item, Exception):
                session_run.record(records, task=self.task)
                raise item
            if item.type == RECONNECTED:
                session_run.record(records, task=self.task)
                records = []
                self.rebuild_after_reconnect()
            records += translator.feed(item.as_dict())
        if records:
            self.last_progress = now
            session_run.record(records, task=self.task)
            if self.degraded_by_us and translator.status != "retry" and not self.permissions.waiting_too_long(now):
                self.degraded_by_us = not session_run.guard.recover("progress resumed")
        self.permissions.take(translator.permission_requests, now)
        if translator.status == "retry" and not self.degraded_by_us:
            retry = translator.retry or {}
            self.degraded_by_us = session_run.guard.degrade(
                f"provider retrying (attempt {retry.get('attempt')}): {retry.get('message')}"
            )
        self._record_new_steps()

    def _check_control(self) -> None:
        """The session still runs here (else SessionEnded), within its budgets; forward answers to
        permission requests."""
        current = self.session_run.check_control(shared=True)
        self.session_run.guard.enforce_budget(current, self.client, self.opencode_session_id)
        if self.permissions.asked_at:
            self.permissions.forward_replies()

    def _check_silence(self, now: float) -> None:
        """A quiet stream may have missed the end of the turn: ask OpenCode directly."""
        translator = self.translator
        if not (translator.turn_started and now - self.last_progress > SILENCE_CHECK_SECONDS
                and now - self.last_snapshot > SILENCE_CHECK_SECONDS):
            return
        self.last_snapshot = now
        self.rebuild_after_reconnect()
        if translator.finished:
            logger.warning("%s: OpenCode session %s ended without its events reaching the worker "
                           "(%.0f s silent); finished from its messages", self.session_run.session.reference,
                           self.opencode_session_id, now - self.last_progress)
            self.session_run.record([("opencode.turn_recovered", {
                "task_id": self.task.pk, "opencode_session_id": self.opencode_session_id})])
            self._record_new_steps()

    def _check_health(self, now: float) -> None:
        """Degrade the session while the stream is stalled or a permission request waits too long;
        give unanswered requests their default reply once they expire."""
        guard = self.session_run.guard
        if not self.degraded_by_us and now - self.last_progress > settings.SESSION_STALL_SECONDS:
            self.degraded_by_us = guard.degrade(f"no OpenCode events for {settings.SESSION_STALL_SECONDS:.0f} s")
        if not self.degraded_by_us and self.permissions.waiting_too_long(now):
            self.degraded_by_us = guard.degrade("a permission request is waiting for an answer")
        self.permissions.expire(now)

    def _record_new_steps(self) -> None:
        for step in self.translator.completed_steps[self.steps_seen:]:
            self.steps_seen += 1
            self._record_step(step)

    def _outcome(self) -> TurnOutcome:
        """How the turn ended, once its step checkpoints are in (the task's outcome comes after them)."""
        session_run, translator = self.session_run, self.translator
        self.checkpointer.wait()
        after_step_checkpoint = self.steps_seen > 0 and translator.error is None and not translator.rejected_permissions
        if self.place.own:  # the task's own worktree: its diff since the task started
            last = self.checkpointer.last_commit
            worktree = self.place.worktree
            diff = workspace.diff_between(path=worktree.path, base_commit=worktree.base_commit, tree=last.tree) \
                if after_step_checkpoint and last is not None else \
                workspace.workspace_diff(path=worktree.path, base_commit=worktree.base_commit)
        else:
            diff = session_run.last_diff = session_run.turn_diff(after_step_checkpoint=after_step_checkpoint)
        outcome = TurnOutcome(
            completed=translator.error is None and not translator.rejected_permissions,
            text=translator.final_text, tokens=self.usage["tokens"],
            cost=self.usage["cost"], opencode_session_id=self.opencode_session_id, diff=diff,
        )
        if translator.error is None and translator.rejected_permissions:
            # A rejected tool ends OpenCode's turn without an error; the task did not get done.
            outcome.error = {
                "type": "permission_rejected",
                "message": f"a tool permission was rejected ({', '.join(translator.rejected_permissions)})",
                "context": {"permission_ids": translator.rejected_permissions},
            }
        if translator.error is not None:
            outcome.error = {
                "type": "provider_error" if translator.error["name"] == "APIError" else translator.error["name"],
                "message": translator.error["message"],
                "context": {"opencode_error": translator.error["name"],
                            "retryable": bool(translator.error["data"].get("isRetryable"))},
            }
        return outcome

    def rebuild_after_reconnect(self) -> None:
        """Nothing is replayed after a reconnect (or a missed event): if the turn has ended,
        finish it from OpenCode's messages. The translator ignores what it has already seen."""
        opencode_session_id = self.opencode_session_id
        snapshot = session_snapshot(self.client, opencode_session_id, messages_if_busy=False)
        if not snapshot["finished"]:
            return
        translator, records = self.translator, []
        for message in snapshot["messages"]:
            info = message.get("info") or {}
            update = {"type": "message.updated", "properties": {"sessionID": opencode_session_id, "info": info}}
            parts = [{"type": "message.part.updated", "properties": {"sessionID": opencode_session_id, "part": part}}
                     for part in message.get("parts") or []]
            # In the stream's order: a user message is known before its parts (its text is not the
            # assistant's); an assistant step's tools end before the step does (StepUsage.ran_tools).
            for event in [update, *parts] if info.get("role") == "user" else [*parts, update]:
                records += translator.feed(event)
        if snapshot["error"] and translator.error is None:
            records += translator.feed(
                {"type": "session.error", "properties": {"sessionID": opencode_session_id, "error": snapshot["error"]}}
            )
        records += translator.feed({"type": "session.idle", "properties": {"sessionID": opencode_session_id}})
        if records:
            self.session_run.record(records, task=self.task)

    def _record_step(self, step: StepUsage) -> None:
        session_run = self.session_run
        self.task_step += 1
        self.usage["tokens"] += step.input + step.output + step.reasoning
        self.usage["cost"] += Decimal(str(step.cost))
        session_services.session_record_usage(
            session_id=session_run.session_id, tokens_input=step.input, tokens_output=step.output,
            tokens_reasoning=step.reasoning, tokens_cache_read=step.cache_read,
            tokens_cache_write=step.cache_write, cost=step.cost, api_calls=1,
        )
        self.checkpointer.take_soon(task=self.task, message_id=step.message_id, task_step=self.task_step,
                                           unchanged=not step.ran_tools)


def _take_events(events: queue.Queue, *, timeout: float, limit: int = 200) -> list:
    """The next event (waiting up to `timeout`) and every other one already queued; [] if none came."""
    try:
        batch = [events.get(timeout=timeout)]
    except queue.Empty:
        return []
    while len(batch) < limit:
        try:
            batch.append(events.get_nowait())
        except queue.Empty:
            break
    return batch
