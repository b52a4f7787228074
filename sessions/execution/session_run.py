"""Running a claimed session: prepare its worktree, run its plan, finish it.

At the size limit: the run's three phases (prepare, the plan loop, finish) read as one story;
the pieces that stand alone live beside it (task_turn, run_guard, checkpointer, planning_turn,
task_worktrees, merges, acceptance, operator_messages).

`run_session` is called by the Celery job `sessions.execute_session` after it
has claimed the session (queued -> running). It:

1. prepares the session's git worktree and this worker's OpenCode server;
2. runs the session's task graph: the subtasks of its root task, or the root
   task alone when it has none. Ready tasks run up to a per-session limit
   (SESSION_TASK_CONCURRENCY, default 1: sequential). Each task is routed to an
   agent (capacity reserved), prompted in its own OpenCode session on the
   worktree, and followed on OpenCode's event stream until its turn ends
   (task_turn.TaskTurn). In a parallel session each task works in a worktree of
   its own, gated by its acceptance command and merged into the session branch
   (task_worktrees.TaskWorktrees);
3. records everything on the way as SessionEvents (published after commit),
   keeps token and cost figures in step, checkpoints after every completed
   assistant step (checkpointer.StepCheckpointer);
4. ends the session completed, partially_completed or failed, with the diff.

Whether the run may go on (control, deadline, degrade/recover, budgets) is the run guard's
(run_guard.RunGuard).
"""

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from django.conf import settings
from django.db import connection

from agents.models import Agent
from agents.services import NoAgentAvailable, agent_record_result, agent_release, agent_route
from contexts.services import (
    context_for_session,
    context_prompt_block,
    context_record_task_output,
    context_session_ended,
)
from orchestrator.errors import Conflict, DomainError, ValidationFailed
from orchestrator.fsm import reloaded
from orchestrator.logs import log_task
from sessions import services as session_services
from sessions.execution import control, operator_messages, planning_turn, servers, spares, workspace
from sessions.execution.checkpointer import StepCheckpointer
from sessions.execution.run_guard import RunGuard, SessionEnded
from sessions.execution.task_turn import CONTROL_INTERVAL, TaskTurn, TurnEvents, TurnOutcome
from sessions.execution.task_worktrees import TaskWorktrees
from sessions.models import Checkpoint, CodingSession
from sessions.models import SessionStatus as S
from sessions.opencode.client import permission_rules
from sessions.opencode.errors import OpenCodeError
from sessions.planning.services import PLAN_REVIEW
from sessions.recovery import session_retry_automatically
from sessions.sql import ControlRow
from tasks import services as task_services
from tasks.models import Task, TaskStatus

logger = logging.getLogger(__name__)

# How long the plan loop sleeps while its tasks run and none waits for an agent. Every wake-up of
# an idle loop costs the worker's CPU: 20 sessions waiting on their LLMs used 3 % of a core with
# the plan loops and task threads waking 6 times a second each.
PLAN_WAIT = 5.0
PATCH_LIMIT = 200_000
AGENT_RETRY_SECONDS = 1.0
# The first call in a worktree OpenCode has not opened (the task's session create, unless the worktree
# is a spare) waits for OpenCode to open it: ~1 s alone, but a server opens a burst of directories
# together, and 20 at once on 2 busy cores took 18-24 s, up to past the 30 s request timeout.
OPEN_DIRECTORY_TIMEOUT = 120.0
# Routing failures no wait can cure: nobody holds the capabilities the task needs.
NO_AGENT_EVER = frozenset({"missing_capabilities", "no_agent_has_all"})
# What a task that names no capabilities needs, by the session's type: an execution session's
# prompt is work on the code, so it must not land on a read-only planner.
SESSION_TYPE_CAPABILITIES = {
    "execution": ["code_generation"],
    "planning": ["task_decomposition"],
    "review": ["code_review"],
    "debug": ["debugging"],
    "integration": ["configuration"],
}


class WaitForAgent(Exception):
    """Every agent able to take the task is busy (full, offline, in maintenance): try again shortly."""

    def __init__(self, task_id: int, reason: str):
        super().__init__(reason)
        self.task_id = task_id
        self.reason = reason


def run_session(*, session: CodingSession) -> str | None:
    """Run a session this worker has claimed (the row its claim locked and moved to running; the
    run reads no other copy); returns its final status."""
    return SessionRun(session).run()


class SessionRun:
    """One run of one claimed session, from its worktree to its end state.

    Owns: the worktree and the OpenCode server it runs on, the plan loop (which tasks run, which
    wait for an agent), the task threads and what they leave for the end (the last answer, the
    last error, the last turn's diff), and the OpenCode sessions made for tasks still waiting for
    an agent. Its guard (`guard`) says whether it may go on; its checkpointer (`checkpointer`)
    takes the step checkpoints.
    """

    def __init__(self, session: CodingSession):
        self.session = session
        self.session_id = session.pk
        self.worker_id = session.worker_id
        self.actor = session_services.Actor.worker(self.worker_id)
        self.worktree = None  # workspace.Workspace, once prepared
        self.server = None
        self.last_text = ""
        self.last_error = None
        self.restored_checkpoint = None
        self.last_diff = None  # the latest turn's diff (see finish)
        self.task_limit = None  # tasks of the session that may run at once (execute_plan)
        self.plan = None  # the plan loop's latest tasks.services.PlanState
        self.guard = RunGuard(session=session, actor=self.actor)
        self.checkpointer = StepCheckpointer(session=session, actor=self.actor)
        self.checkpointer.shared_worktree = True  # until execute_plan knows how many tasks run at once
        self.task_worktrees = TaskWorktrees(self)  # where each task runs; merges and acceptance
        # task id -> Future of an OpenCode session id, kept while the task waits for an agent
        self._waiting_sessions: dict[int, Future] = {}  # of OpenCode session ids

    # --- the whole run -------------------------------------------------------------

    def run(self) -> str | None:
        control.watch(self.session_id, worker_id=self.worker_id)  # control reads and heartbeats
        in_review = False  # paused for plan review: its approval soon runs the plan in this worktree
        try:
            self.prepare()
            planning_turn.plan_before_graph(self)  # planning (issue 22): may pause for review, or fail
            self.execute_plan()
            self.finish()
        except SessionEnded as ended:
            logger.info("%s: run stopped (%s)", self.session.reference, ended)
            in_review = ended.status == S.PAUSED and ended.reason == PLAN_REVIEW
        except (DomainError, workspace.GitError, OpenCodeError) as error:
            self.fail_session(error_type=_error_type(error), message=str(error))
        except Exception as error:
            logger.exception("%s: run failed unexpectedly", self.session.reference)
            self.fail_session(error_type="internal_error", message=f"{type(error).__name__}: {error}")
        finally:
            control.unwatch(self.session_id)  # the task threads have ended (execute_plan waits for them)
            for opencode_session_future in self._waiting_sessions.values():  # tasks still waiting for an agent
                self._drop_opencode_session(opencode_session_future)
            try:
                self.checkpointer.wait()
            except Exception:  # the run has already ended one way or another; keep the first reason
                logger.exception("%s: a step checkpoint failed while the run ended", self.session.reference)
            self.checkpointer.close()
            self.task_worktrees.close()  # hook: finished task worktrees closed and removed
            if self.server is not None:
                # Every turn has ended or been aborted: OpenCode can close the worktree (servers.close_directory);
                # kept open a while when the session waits for plan review (servers.KEEP_OPEN_SECONDS).
                servers.release_server(self.server, close=self.worktree.path, keep_open=in_review)
        return CodingSession.objects.filter(pk=self.session_id).values_list("status", flat=True).first()

    def prepare(self) -> None:
        """The worktree (a spare, a new one, or the one a previous run left), the resume point restored,
        the OpenCode server acquired, the runtime fields stored."""
        session = self.session
        repository = workspace.resolve_repository(session.repository, allowed_roots=settings.REPOSITORY_ROOTS)
        self.worktree = self._spare_workspace(repository) if not session.workspace_path else None
        from_spare = self.worktree is not None
        if self.worktree is None:
            self.worktree = workspace.prepare_workspace(
                repository=repository, root=settings.WORKSPACE_ROOT, reference=session.reference,
                path=session.workspace_path or None,
            )
        self.checkpointer.worktree = self.worktree
        spares.note_run(repository, parallel_tasks=self.task_concurrency())
        self.task_worktrees.prepare()  # hook: a merge a lost run left in progress is aborted
        restore = session.resume_checkpoint
        if restore is not None and restore.git_ref:
            # A retry or an operator's restore: the worktree goes back to that checkpoint, and
            # interrupted tasks resume in new OpenCode sessions told how far they had got. A task
            # worktree's checkpoint is restored in that worktree when its task resumes (hook).
            if self.task_worktrees.restores_session_worktree(restore):
                workspace.restore_checkpoint(path=self.worktree.path, commit=restore.git_ref)
            self.restored_checkpoint = restore
            session_services.session_take_resume_point(session_id=self.session_id)
            self.record([("workspace.restored", {"sequence": restore.sequence, "git_ref": restore.git_ref})])
        self.server = servers.acquire_server(directory=str(self.worktree.path))
        session_services.session_set_runtime(
            session_id=self.session_id,
            workspace_path=str(self.worktree.path),
            branch_name=self.worktree.branch,
            opencode_server_url=self.server.url or "",
        )
        self.record([("workspace.ready", {
            "path": str(self.worktree.path), "branch": self.worktree.branch, "base_commit": self.worktree.base_commit,
            "spare": from_spare,
        })])
        context_for_session(session=session)

    def task_concurrency(self) -> int:
        """How many tasks of the session may run at once (its planning option, else the default)."""
        return int((self.session.metadata or {}).get("task_concurrency") or settings.SESSION_TASK_CONCURRENCY)

    def _spare_workspace(self, repository: Path) -> workspace.Workspace | None:
        """The session's first worktree from a spare this worker opened in OpenCode beforehand, or None."""
        spare = spares.take(repository)
        if spare is None:
            return None
        try:
            return workspace.adopt_spare(repository=repository, path=spare.path, reference=self.session.reference,
                                         base_commit=spare.base_commit)
        except workspace.GitError as error:  # its branch exists already: it ran before
            logger.info("%s: spare worktree not used (%s)", self.session.reference, error)
            spares.discard(spare)
            return None

    def execute_plan(self) -> None:
        """The plan loop: until no task is ready and none runs, start ready tasks (interrupted ones
        first) on task threads up to the session's limit, wait for one to end, collect it, refresh
        the plan. A task that found every capable agent busy waits AGENT_RETRY_SECONDS before it is
        routed again. When the run must stop, every task thread is told (guard.end) and waited for."""
        task_services.task_root_for_session(session=self.session)
        limit = self.task_limit = self.task_concurrency()
        self.checkpointer.shared_worktree = limit > 1
        running = {}
        interrupted = None  # task ids, from the first refresh on
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix=f"{self.session.reference}-task") as pool:
            try:
                deferred = {}  # task id -> monotonic time before which it is not routed again
                replan = True
                while True:
                    if not running:
                        # A task thread following its turn checks control itself every half second;
                        # checking here as well doubled the polling of every running session. The
                        # process's shared read (at most STALE_AFTER old) is enough here: a task
                        # started on a session paused meanwhile sees it within half a second and stops.
                        self.check_control(shared=True)
                    now = time.monotonic()
                    if not replan and not any(until <= now for until in deferred.values()):
                        # Nothing finished and no waiting task is due: only watch the running ones.
                        self._wait_for_tasks(running, deferred)
                        replan = bool(self._finish_done(running, deferred))
                        continue
                    replan = False
                    plan = self.plan = task_services.task_refresh_plan(session=self.session)
                    if interrupted is None:
                        # Tasks a pause or a lost worker interrupted go first, continuing where they
                        # stopped (their order needs the rows; the statuses say whether there are any).
                        interrupted = list(task_services.task_interrupted_for_session(
                            session=self.session).values_list("pk", flat=True)) if plan.interrupted() else []
                    # Ready leaves, most urgent first, from the statuses the refresh just read (a
                    # task thread loads its own row).
                    ready_now = plan.ready()
                    # A deferred task that is no longer ready (skipped, cancelled) stops waiting.
                    deferred = {pk: until for pk, until in deferred.items() if pk in ready_now}
                    ready = [pk for pk in ready_now if pk not in running.values() and deferred.get(pk, 0) <= now]
                    while interrupted and len(running) < limit:
                        task_id = interrupted.pop(0)
                        running[pool.submit(self._run_task_in_thread, task_id, True)] = task_id
                    for task_id in ready[: max(0, limit - len(running))]:
                        running[pool.submit(self._run_task_in_thread, task_id)] = task_id
                    if not running:
                        if not deferred:
                            if planning_turn.replan_after_failure(self):  # replanning (issue 22)
                                replan = True
                                continue
                            return
                        self.guard.ending.wait(CONTROL_INTERVAL)  # every ready task waits for an agent
                        continue
                    self._wait_for_tasks(running, deferred)
                    replan = bool(self._finish_done(running, deferred))
            except BaseException as error:
                # Tell the other task threads why, so they abort their turns the same way, then let them finish.
                self.guard.end(error)
                wait(running)
                for future in running:
                    failure = future.exception()
                    if failure is not None and not isinstance(failure, SessionEnded):
                        logger.error("%s: a task thread failed while the run stopped", self.session.reference,
                                     exc_info=failure)
                raise

    def _wait_for_tasks(self, running: dict[Future, int], deferred: dict[int, float]) -> None:
        """Wait for a task thread to finish: up to one control interval while a task waits for an
        agent (it is retried when due), else up to PLAN_WAIT (the task threads watch control and
        end when the run must stop, which wakes this wait)."""
        if running:
            wait(running, timeout=CONTROL_INTERVAL if deferred else PLAN_WAIT, return_when=FIRST_COMPLETED)
        else:
            self.guard.ending.wait(CONTROL_INTERVAL)

    def _finish_done(self, running: dict[Future, int], deferred: dict[int, float]) -> list[Future]:
        """Collect finished task threads; a task that found every capable agent busy is retried later."""
        finished = [future for future in running if future.done()]
        for future in finished:
            task_id = running.pop(future)
            try:
                future.result()
                deferred.pop(task_id, None)
            except WaitForAgent as waiting:
                # One event when the wait begins; every attempt is logged (capacity diagnosis).
                logger.info("%s: task %s waits for an agent: %s", self.session.reference, task_id, waiting.reason)
                if task_id not in deferred:
                    self.record([("task.waiting_for_agent", {"task_id": task_id, "reason": waiting.reason})])
                deferred[task_id] = time.monotonic() + AGENT_RETRY_SECONDS
        return finished

    def turn_diff(self, *, after_step_checkpoint: bool) -> dict:
        """The session's diff at the end of a turn. A turn that ended normally ended with a step whose
        checkpoint was just taken, and no tool runs after a turn's last step: when no other task runs
        alongside, that checkpoint's tree is the worktree as it is now (one git process, not three)."""
        last = self.checkpointer.last_commit
        if after_step_checkpoint and last is not None and self.task_limit == 1:
            return workspace.diff_between(
                path=self.worktree.path, base_commit=self.worktree.base_commit, tree=last.tree
            )
        return workspace.workspace_diff(path=self.worktree.path, base_commit=self.worktree.base_commit)

    def finish(self) -> None:
        """End the session from its plan's outcome: commit the worktree, record the diff, complete,
        complete partially or fail (retrying automatically when the error is retryable)."""
        # The plan loop ended on a refresh that found nothing ready and nothing running: its
        # statuses are the plan's final ones.
        summary = planning_turn.outcome_summary(self)  # planning tasks and replaced ones left out (issue 22)
        self.task_worktrees.close()  # hook: no task worktree outlives the session's end
        # One task at a time: every turn has ended, so the last one's diff is the session's.
        diff = self.last_diff if self.last_diff is not None and self.task_limit == 1 else \
            workspace.workspace_diff(path=self.worktree.path, base_commit=self.worktree.base_commit)
        commit = workspace.commit_workspace(
            path=self.worktree.path, message=f"{self.session.reference}: {self.session.title}"
        ) if diff["files"] else None
        self.record([("session.diff", _diff_payload(diff))])
        result = {
            "final_text": self.last_text,
            "diff": {key: diff[key] for key in ("files", "additions", "deletions")},
            "tasks": summary,
            "branch": self.worktree.branch,
            "commit": commit,
            **self.task_worktrees.result_extra(),  # hook: merge conflicts left unresolved
        }
        outcome = summary["outcome"]
        try:
            if outcome == "completed":
                session_services.session_complete(session=self.session, actor=self.actor, result=result)
            elif outcome == "partially_completed":
                session_services.session_complete(
                    session=self.session, actor=self.actor, result=result, partial=True,
                    reason=f"{summary['completed']} of {summary['total']} tasks completed",
                )
            else:
                error = self.last_error or {
                    "type": "plan_stuck" if outcome is None else "no_task_completed",
                    "message": "tasks remain that can never become ready" if outcome is None else "no task completed",
                    "context": {"tasks": summary},
                }
                session_services.session_fail(session=self.session, actor=self.actor, error=error)
                if (error.get("context") or {}).get("retryable"):
                    session_retry_automatically(
                        session_id=self.session_id, reason=f"automatic retry: {error['message']}"
                    )
        except Conflict:
            # An operator or the reconciler moved the session meanwhile; their state stands.
            logger.info("%s: left running before it could finish", self.session.reference)
        context_session_ended(session=self.session)

    def fail_session(self, *, error_type: str, message: str, context: dict | None = None) -> None:
        try:
            session_services.session_fail(
                session=self.session, actor=self.actor,
                error={"type": error_type, "message": message[:2000], "context": context or {}},
            )
        except Conflict:
            logger.info("%s: could not record failure (%s); state changed meanwhile", self.session.reference, message)

    # --- control ---------------------------------------------------------------------

    def check_control(self, *, shared: bool = False) -> ControlRow:
        """See RunGuard.check_control."""
        return self.guard.check_control(shared=shared)

    # --- one task ----------------------------------------------------------------------

    def _run_task_in_thread(self, task_id: int, resume: bool = False) -> None:
        try:
            return self.run_task(Task.objects.select_related("assigned_agent").get(pk=task_id), resume=resume)
        finally:
            if threading.current_thread() is not threading.main_thread():
                connection.close()

    def _take_agent(self, task: Task) -> tuple[Agent, list]:
        """(agent, routing records): the agent for `task` with one unit of its capacity reserved.

        A task interrupted by a lost worker still holds its reservation (nobody
        released it), so it keeps its agent (no records); any other task is routed
        afresh, preferring the agent it had. The `task.routed` record is written
        once the task has started.
        """
        if task.status in (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS) and task.assigned_agent_id:
            return task.assigned_agent, []
        decision = agent_route(
            required_capabilities=list(
                task.required_capabilities or SESSION_TYPE_CAPABILITIES[self.session.session_type]
            ),
            preferred_agent=task.assigned_agent_id or self.session.agent_id,
            reserve=True,
        )
        return decision.agent, [("task.routed", {
            "task_id": task.pk, "title": task.title, "agent": decision.agent.name, "score": decision.score,
            "reason": decision.reason,
            "alternatives": [{"agent": alt.agent.name, "score": alt.score} for alt in decision.alternatives],
        })]

    def _skip_unroutable(self, task: Task, error: DomainError) -> None:
        """No agent can ever take the task (nobody holds what it needs): it is skipped, saying why."""
        self.last_error = {"type": "no_agent", "message": error.message,
                           "context": {"task_id": task.pk, **(error.details or {})}}
        task_services.task_skip(task=task, reason=error.message)
        self.record([("task.failed", {"task_id": task.pk, "title": task.title, "error": self.last_error})])

    def _begin_task(self, task: Task, agent: Agent) -> Task:
        """Bring the task to in_progress, whatever point it was interrupted at."""
        if task.status == TaskStatus.PAUSED:
            return task_services.task_resume(task=task)
        if task.status in (TaskStatus.PENDING, TaskStatus.READY):
            return task_services.task_assign(task=task, agent=agent, start=True)
        if task.status == TaskStatus.ASSIGNED:
            task = task_services.task_start(task=task)
        return task

    def run_task(self, task: Task, resume: bool = False) -> None:
        """Run one task to its outcome on this thread (its turn's events subscribed meanwhile), in its
        place (task_worktrees: its own worktree in a parallel session, else the session's)."""
        # A new task's OpenCode session is made while the task is routed and started (neither needs
        # the other): 10-20 ms off the way to the prompt. One made for an attempt that then waited
        # for an agent is kept for the next attempt. A task with a worktree of its own gets its
        # session once the worktree exists (after routing: a task waiting for an agent makes none).
        log_task(task.pk)  # its log records carry the task's id (orchestrator.logs)
        own_worktree = self.task_worktrees.wants_own(task)
        opencode_session_future = None if resume or own_worktree else (
            self._waiting_sessions.pop(task.pk, None) or servers.call_pool().submit(self.create_opencode_session, task)
        )
        try:
            agent, routed = self._take_agent(task)
        except NoAgentAvailable as error:
            if error.details.get("reason") not in NO_AGENT_EVER:
                if opencode_session_future is not None:
                    self._waiting_sessions[task.pk] = opencode_session_future
                raise WaitForAgent(task.pk, error.message) from error
            self._drop_opencode_session(opencode_session_future)
            self._skip_unroutable(task, error)
            return
        except BaseException as error:
            self._drop_opencode_session(opencode_session_future)
            if isinstance(error, ValidationFailed):
                self._skip_unroutable(task, error)
                return
            raise
        started = time.monotonic()
        outcome = place = events = turn = None
        try:
            place = self.task_worktrees.place_for(task)  # hook: task_worktrees
            if place.own and not resume:  # its OpenCode session made while the task starts (see above)
                opencode_session_future = servers.call_pool().submit(
                    self.create_opencode_session, task, directory=place.directory)
            events = TurnEvents(servers.events_of(self.server), place.directory)
            turn = TaskTurn(self, task, agent, events, opencode_session_future=opencode_session_future, place=place)
            task = self._begin_task(task, agent)
            self.record(routed)  # after the start: one statement, not a savepoint in its transaction
            outcome = turn.run(task, resume=resume)
            outcome = operator_messages.deliver_pending(turn=turn, task=task, outcome=outcome)
            outcome = self.task_worktrees.after_turn(turn, task, outcome, place)  # hook: acceptance, merge
        except SessionEnded as ended:
            self._end_task_early(task, ended)
            raise
        finally:
            if events is not None:
                events.stop()
            # made, but the task never started
            self._drop_opencode_session(turn.opencode_session_future if turn else opencode_session_future,
                                        directory=place.directory if place is not None else None)
            if place is not None:  # hook: task_worktrees
                self.task_worktrees.release(place, task, ended=outcome is not None,
                                            merged=outcome is not None and outcome.completed and place.own)
            if outcome is None:
                agent_release(agent=agent)
            else:  # the track record and the release, in one transaction
                agent_record_result(
                    agent=agent, outcome="completed" if outcome.completed else "failed",
                    quality=1.0 if outcome.completed else 0.0, duration=time.monotonic() - started,
                    tokens=outcome.tokens, cost=outcome.cost, release=True,
                )
        self._record_task_outcome(task, agent, outcome)

    def create_opencode_session(self, task: Task, directory: str | None = None) -> str:
        """A new OpenCode session for `task` in the worktree (the session's, unless `directory` names
        the task's own), the session's permission policy applied."""
        policy = self.session.permission_policy or {}
        created = self.server.client(directory=directory or str(self.worktree.path)).create_session(
            title=f"{self.session.reference} · {task.title}"[:120],
            permission=permission_rules(policy) if policy else None,
            timeout=max(OPEN_DIRECTORY_TIMEOUT, settings.OPENCODE_REQUEST_TIMEOUT),
        )
        return created["id"]

    def _drop_opencode_session(self, opencode_session_future: Future | None, directory: str | None = None) -> None:
        """Delete an OpenCode session made for a task that did not take it (a Future, or None)."""
        if opencode_session_future is None:
            return
        try:
            client = self.server.client(directory=directory or str(self.worktree.path))
            client.delete_session(opencode_session_future.result())
        except OpenCodeError as error:
            logger.info("%s: unused OpenCode session not deleted: %s", self.session.reference, error)

    def _end_task_early(self, task: Task, ended: SessionEnded) -> None:
        task = reloaded(task)
        if task.status != TaskStatus.IN_PROGRESS:
            return
        if ended.status in (S.PAUSED, S.STOPPED, S.TIMEOUT):
            # Interrupted, not failed: a resume (paused) or a retry (stopped, timed out) carries it on
            # from its last checkpoint. A failed task would leave a retried session nothing to run.
            task_services.task_pause(task=task)
        elif ended.status in ("lost", "ending", "deleted"):
            return  # another run (or nobody) carries on; leave the task as it is
        else:
            task_services.task_fail(task=task, error={"type": ended.status, "message": str(ended), "context": {}})

    def _record_task_outcome(self, task: Task, agent: Agent, outcome: TurnOutcome) -> None:
        # `task` as it started: task_complete and task_fail lock and read the row themselves.
        key = f"task_{task.pk}"
        if outcome.completed:
            self.last_text = outcome.text or self.last_text
            task_services.task_complete(
                task=task,
                output=outcome.text,
                result={
                    "text": outcome.text,
                    "diff": {k: outcome.diff.get(k) for k in ("files", "additions", "deletions")},
                    "opencode_session_id": outcome.opencode_session_id,
                    "agent": agent.name,
                    **({"acceptance": outcome.acceptance} if outcome.acceptance else {}),
                },
            )
        else:
            self.last_error = {
                "type": (outcome.error or {}).get("type", "task_failed"),
                "message": (outcome.error or {}).get("message", "the task failed"),
                "context": {"task_id": task.pk, **((outcome.error or {}).get("context") or {})},
            }
            task_services.task_fail(task=task, error=self.last_error)
        context_record_task_output(
            session=self.session, task_key=key, actor=f"worker {self.worker_id}",
            output=outcome.text if outcome.completed else self.last_error["message"],
            status="completed" if outcome.completed else "failed",
        )
        self.record([("task.completed" if outcome.completed else "task.failed", {
            "task_id": task.pk, "title": task.title, "agent": agent.name,
            "diff": {k: outcome.diff.get(k) for k in ("files", "additions", "deletions")},
            **({} if outcome.completed else {"error": self.last_error}),
        })])

    def task_prompt(self, task: Task) -> str:
        """What the agent is asked: the task, the session's goal, and the shared context."""
        is_root = task.parent_id is None
        body = self.session.initial_prompt if is_root else "\n".join(
            part for part in (f"Task: {task.title}", task.description) if part
        )
        parts = [body]
        if not is_root:
            parts.insert(0, f"Session goal: {self.session.title}")
        # Read the context afresh: tasks that finished since the run began wrote their outputs to it.
        block = context_prompt_block(context=context_for_session(session=self.session))
        if block:
            parts.append(block)
        return "\n\n".join(parts)

    def steps_done(self, task: Task, *, up_to_sequence: int | None = None) -> int:
        """How many assistant steps of `task` its checkpoints record (up to a restore point)."""
        checkpoints = Checkpoint.objects.filter(session_id=self.session_id, data__task_id=task.pk)
        if up_to_sequence is not None:
            checkpoints = checkpoints.filter(sequence__lte=up_to_sequence)
        latest = checkpoints.order_by("-sequence").first()
        return (latest.data or {}).get("task_step", 0) if latest else 0

    # --- recording -----------------------------------------------------------------------

    def record(self, records: list[tuple[str, dict]], *, task: Task | None = None) -> None:
        """Write events (one transaction for the batch); they are published after commit."""
        if not records:
            return
        if task is not None:
            records = [(kind, {**payload, "task_id": task.pk}) for kind, payload in records]
        session_services.session_record_events(session=self.session, entries=records)


def _error_type(error: Exception) -> str:
    if isinstance(error, ValidationFailed):
        return "invalid_session"
    if isinstance(error, workspace.GitError):
        return "workspace_error"
    if isinstance(error, OpenCodeError):
        return "opencode_error"
    return getattr(error, "code", "error")


def _diff_payload(diff: dict) -> dict:
    patch = diff["patch"]
    payload = {key: diff[key] for key in ("files", "additions", "deletions")}
    payload["patch"] = patch if len(patch) <= PATCH_LIMIT else patch[:PATCH_LIMIT]
    payload["patch_truncated"] = len(patch) > PATCH_LIMIT
    return payload
