"""Running a claimed session: workspace, plan, one OpenCode turn per task, end state.

`run_session` is called by the Celery job `sessions.execute_session` after it
has claimed the session (queued -> running). It:

1. prepares the session's git worktree and this worker's OpenCode server;
2. runs the session's task graph: the subtasks of its root task, or the root
   task alone when it has none. Ready tasks run up to a per-session limit
   (SESSION_TASK_CONCURRENCY, default 1: sequential). Each task is routed to an
   agent (capacity reserved), prompted in its own OpenCode session on the
   worktree, and followed on OpenCode's event stream until its turn ends;
3. records everything on the way as SessionEvents (published after commit),
   keeps token and cost figures in step, checkpoints after every completed
   assistant step (OpenCode message id + a hidden git ref; taken on a checkpoint
   thread so git never delays the next event, and waited for at the turn's end);
4. ends the session completed, partially_completed or failed, with the diff.

Control: every half second the run looks at its session row (task threads at the worker's shared
read of all its sessions' rows, sessions/execution/control.py, which also heartbeats them). When an operator
(or the reconciler) has moved it out of running/degraded, or another worker
owns it, the OpenCode turn is aborted and the run stops. The deadline, stall
detection, budgets and permission requests are enforced here too.
"""

import logging
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import connection

from agents.services import NoAgentAvailable, agent_record_result, agent_release, agent_route
from contexts.services import context_for_session, context_prompt_block, context_record_task_output, context_session_ended
from orchestrator.errors import Conflict, DomainError, ValidationFailed
from sessions import services as session_services
from sessions.execution import control, servers, spares, workspace
from sessions.execution.translate import TURN_EVENT_TYPES, TurnTranslator
from sessions.execution.approvals import PermissionWatch
from sessions.models import Checkpoint, CodingSession
from sessions.models import SessionStatus as S
from sessions.opencode.client import model_ref, permission_rules
from sessions.opencode.errors import NotFound as OpenCodeNotFound
from sessions.opencode.errors import OpenCodeError
from sessions.recovery import session_retry_automatically
from sessions.opencode.events import RECONNECTED, session_snapshot
from tasks import services as task_services
from tasks.models import Task, TaskStatus

logger = logging.getLogger(__name__)

ACTIVE = frozenset({S.RUNNING, S.DEGRADED})
CONTROL_INTERVAL = 0.5
# How long the plan loop sleeps while its tasks run and none waits for an agent. Every wake-up of
# an idle loop costs the worker's CPU: 20 sessions waiting on their LLMs used 3 % of a core with
# the plan loops and task threads waking 6 times a second each.
PLAN_WAIT = 5.0
STREAM_CONNECT_TIMEOUT = 15.0
PATCH_LIMIT = 200_000
AGENT_RETRY_SECONDS = 1.0
SILENCE_CHECK_SECONDS = 10.0
# The first call in a worktree OpenCode has not opened (the task's session create, unless the worktree
# is a spare) waits for OpenCode to open it: ~1 s alone, but a server opens a burst of directories
# together, and 20 at once on 2 busy cores took 18-24 s, up to past the 30 s request timeout.
OPEN_DIRECTORY_TIMEOUT = 120.0
# Routing failures no wait can cure: nobody holds the capabilities the task needs.
NO_AGENT_EVER = frozenset({"missing_capabilities", "no_agent_has_all"})
# What a task that names no capabilities needs, by the session's type: an execution session's
# prompt is work on the code, so it must not land on a read-only planner.
# OpenCode calls a task thread starts and collects later (the early session create of TaskTurn).
_OPENCODE_CALLS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="opencode-call")
SESSION_TYPE_CAPABILITIES = {
    "execution": ["code_generation"],
    "planning": ["task_decomposition"],
    "review": ["code_review"],
    "debug": ["debugging"],
    "integration": ["configuration"],
}


class WaitForAgent(Exception):
    """Every agent able to take the task is busy (full, offline, in maintenance): try again shortly."""

    def __init__(self, task_id, reason):
        super().__init__(reason)
        self.task_id = task_id
        self.reason = reason


class SessionEnded(Exception):
    """The session left running/degraded (pause, stop, timeout, budget, lost ownership): stop working."""

    def __init__(self, status, reason=""):
        super().__init__(f"session is {status}: {reason}" if reason else f"session is {status}")
        self.status = status
        self.reason = reason


@dataclass
class TurnOutcome:
    completed: bool
    text: str = ""
    error: dict | None = None
    tokens: int = 0
    cost: Decimal = Decimal("0")
    opencode_session_id: str = ""
    diff: dict = field(default_factory=dict)


def run_session(*, session):
    """Run a session this worker has claimed (the row its claim locked and moved to running; the
    run reads no other copy); returns its final status."""
    return SessionRun(session).run()


class SessionRun:
    def __init__(self, session):
        self.session = session
        self.session_id = session.pk
        self.worker_id = session.worker_id
        self.actor = session_services.Actor.worker(self.worker_id)
        self.ws = None
        self.server = None
        self.last_text = ""
        self.last_error = None
        self.restored_checkpoint = None
        self.last_diff = None  # the latest turn's diff (see finish)
        self.task_limit = None  # tasks of the session that may run at once (execute_plan)
        self.plan = None  # the plan loop's latest tasks.services.PlanState
        self._ending = threading.Event()
        self._ended_by = None
        # Step checkpoints (git snapshots, ~50-100 ms) are taken off the event path, one at a time
        # in order, so OpenCode's next events are recorded while git works; see checkpoint_soon.
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{session.reference}-checkpoint")
        self._pending_checkpoints = []
        self._last_checkpoint = None  # workspace.CheckpointCommit: a step that changed no file reuses it
        self._checkpoint_lock = threading.Lock()
        self._waiting_sessions = {}  # task id -> Future of an OpenCode session kept while it waits for an agent

    # --- the whole run -------------------------------------------------------------

    def run(self):
        control.watch(self.session_id, worker_id=self.worker_id)  # control reads and heartbeats
        try:
            self.prepare()
            self.execute_plan()
            self.finish()
        except SessionEnded as ended:
            logger.info("%s: run stopped (%s)", self.session.reference, ended)
        except (DomainError, workspace.GitError, OpenCodeError) as error:
            self.fail_session(error_type=_error_type(error), message=str(error))
        except Exception as error:
            logger.exception("%s: run failed unexpectedly", self.session.reference)
            self.fail_session(error_type="internal_error", message=f"{type(error).__name__}: {error}")
        finally:
            control.unwatch(self.session_id)  # the task threads have ended (execute_plan waits for them)
            for new_session in self._waiting_sessions.values():  # tasks still waiting for an agent
                self._drop_opencode_session(new_session)
            try:
                self.wait_for_checkpoints()
            except Exception:  # the run has already ended one way or another; keep the first reason
                logger.exception("%s: a step checkpoint failed while the run ended", self.session.reference)
            # That thread's own database connection: `connection` resolves per thread, so look it up there.
            self._checkpointer.submit(lambda: connection.close()).result()
            self._checkpointer.shutdown(wait=True)
            if self.server is not None:
                # Every turn has ended or been aborted: OpenCode can close the worktree (servers.close_directory).
                servers.release_server(self.server, close=self.ws.path)
        return CodingSession.objects.filter(pk=self.session_id).values_list("status", flat=True).first()

    def prepare(self):
        session = self.session
        repository = workspace.resolve_repository(session.repository, allowed_roots=settings.REPOSITORY_ROOTS)
        self.ws = self._spare_workspace(repository) if not session.workspace_path else None
        from_spare = self.ws is not None
        if self.ws is None:
            self.ws = workspace.prepare_workspace(
                repository=repository, root=settings.WORKSPACE_ROOT, reference=session.reference,
                path=session.workspace_path or None,
            )
        spares.note_run(repository)
        restore = session.resume_checkpoint
        if restore is not None and restore.git_ref:
            # A retry or an operator's restore: the worktree goes back to that checkpoint, and
            # interrupted tasks resume in new OpenCode sessions told how far they had got.
            workspace.restore_checkpoint(path=self.ws.path, commit=restore.git_ref)
            self.restored_checkpoint = restore
            session_services.session_take_resume_point(session_id=self.session_id)
            self.record([("workspace.restored", {"sequence": restore.sequence, "git_ref": restore.git_ref})])
        self.server = servers.acquire_server(directory=str(self.ws.path))
        session_services.session_set_runtime(
            session_id=self.session_id,
            workspace_path=str(self.ws.path),
            branch_name=self.ws.branch,
            opencode_server_url=self.server.url or "",
        )
        self.record([("workspace.ready", {
            "path": str(self.ws.path), "branch": self.ws.branch, "base_commit": self.ws.base_commit,
            "spare": from_spare,
        })])
        context_for_session(session=session)

    def _spare_workspace(self, repository):
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

    def execute_plan(self):
        task_services.task_root_for_session(session=self.session)
        limit = self.task_limit = int(
            (self.session.metadata or {}).get("task_concurrency") or settings.SESSION_TASK_CONCURRENCY)
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
                            return
                        self._ending.wait(CONTROL_INTERVAL)  # every ready task waits for an agent
                        continue
                    self._wait_for_tasks(running, deferred)
                    replan = bool(self._finish_done(running, deferred))
            except BaseException as error:
                # Tell the other task threads why, so they abort their turns the same way, then let them finish.
                self._ended_by = error if isinstance(error, SessionEnded) else SessionEnded("ending", str(error))
                self._ending.set()
                wait(running)
                for future in running:
                    failure = future.exception()
                    if failure is not None and not isinstance(failure, SessionEnded):
                        logger.error("%s: a task thread failed while the run stopped", self.session.reference,
                                     exc_info=failure)
                raise

    def _wait_for_tasks(self, running, deferred):
        """Wait for a task thread to finish: up to one control interval while a task waits for an
        agent (it is retried when due), else up to PLAN_WAIT (the task threads watch control and
        end when the run must stop, which wakes this wait)."""
        if running:
            wait(running, timeout=CONTROL_INTERVAL if deferred else PLAN_WAIT, return_when=FIRST_COMPLETED)
        else:
            self._ending.wait(CONTROL_INTERVAL)

    def _finish_done(self, running, deferred):
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

    def turn_diff(self, *, after_step_checkpoint):
        """The session's diff at the end of a turn. A turn that ended normally ended with a step whose
        checkpoint was just taken, and no tool runs after a turn's last step: when no other task runs
        alongside, that checkpoint's tree is the worktree as it is now (one git process, not three)."""
        last = self._last_checkpoint
        if after_step_checkpoint and last is not None and self.task_limit == 1:
            return workspace.diff_between(path=self.ws.path, base_commit=self.ws.base_commit, tree=last.tree)
        return workspace.workspace_diff(path=self.ws.path, base_commit=self.ws.base_commit)

    def finish(self):
        # The plan loop ended on a refresh that found nothing ready and nothing running: its
        # statuses are the plan's final ones.
        summary = self.plan.summary()
        # One task at a time: every turn has ended, so the last one's diff is the session's.
        diff = self.last_diff if self.last_diff is not None and self.task_limit == 1 else \
            workspace.workspace_diff(path=self.ws.path, base_commit=self.ws.base_commit)
        commit = workspace.commit_workspace(
            path=self.ws.path, message=f"{self.session.reference}: {self.session.title}"
        ) if diff["files"] else None
        self.record([("session.diff", _diff_payload(diff))])
        result = {
            "final_text": self.last_text,
            "diff": {key: diff[key] for key in ("files", "additions", "deletions")},
            "tasks": summary,
            "branch": self.ws.branch,
            "commit": commit,
        }
        outcome = summary["outcome"]
        try:
            if outcome == "completed":
                session_services.session_complete(session=self.session_id, actor=self.actor, result=result)
            elif outcome == "partially_completed":
                session_services.session_complete(
                    session=self.session_id, actor=self.actor, result=result, partial=True,
                    reason=f"{summary['completed']} of {summary['total']} tasks completed",
                )
            else:
                error = self.last_error or {
                    "type": "plan_stuck" if outcome is None else "no_task_completed",
                    "message": "tasks remain that can never become ready" if outcome is None else "no task completed",
                    "context": {"tasks": summary},
                }
                session_services.session_fail(session=self.session_id, actor=self.actor, error=error)
                if (error.get("context") or {}).get("retryable"):
                    session_retry_automatically(session_id=self.session_id, reason=f"automatic retry: {error['message']}")
        except Conflict:
            # An operator or the reconciler moved the session meanwhile; their state stands.
            logger.info("%s: left running before it could finish", self.session.reference)
        context_session_ended(session=self.session)

    def fail_session(self, *, error_type, message, context=None):
        try:
            session_services.session_fail(
                session=self.session_id, actor=self.actor,
                error={"type": error_type, "message": message[:2000], "context": context or {}},
            )
        except Conflict:
            logger.info("%s: could not record failure (%s); state changed meanwhile", self.session.reference, message)

    # --- control ---------------------------------------------------------------------

    def check_control(self, *, shared=False):
        """Raise SessionEnded when the run must stop; enforce the deadline. `shared`: look at the
        row of the process's latest shared read (control.latest_row, for the periodic checks of
        task threads) instead of reading it now."""
        if self._ending.is_set():
            raise self._ended_by
        current = control.latest_row(self.session_id) if shared else control.read_row(self.session_id)
        if current is None or current.deleted_at is not None:
            raise SessionEnded("deleted")
        if current.status not in ACTIVE:
            raise SessionEnded(current.status, "changed by someone else")
        if current.worker_id != self.worker_id:
            # "lost": the other worker's run carries the tasks on; this one must not touch them.
            raise SessionEnded("lost", f"now owned by {current.worker_id}")
        if current.elapsed_seconds() > current.max_duration_seconds:
            try:
                session_services.session_timeout(
                    session=self.session_id, actor=self.actor,
                    error={"type": "timeout", "message": f"deadline of {current.max_duration_seconds} s passed",
                           "context": {"elapsed_seconds": round(current.elapsed_seconds(), 1)}},
                )
            except Conflict:
                pass
            raise SessionEnded(S.TIMEOUT, "deadline passed")
        return current

    # --- one task ----------------------------------------------------------------------

    def _run_task_in_thread(self, task_id, resume=False):
        try:
            return self.run_task(Task.objects.select_related("assigned_agent").get(pk=task_id), resume=resume)
        finally:
            if threading.current_thread() is not threading.main_thread():
                connection.close()

    def _take_agent(self, task):
        """(agent, routing records): the agent for `task` with one unit of its capacity reserved.

        A task interrupted by a lost worker still holds its reservation (nobody
        released it), so it keeps its agent (no records); any other task is routed
        afresh, preferring the agent it had. The `task.routed` record is written
        once the task has started.
        """
        if task.status in (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS) and task.assigned_agent_id:
            return task.assigned_agent, []
        decision = agent_route(
            required_capabilities=list(task.required_capabilities or SESSION_TYPE_CAPABILITIES[self.session.session_type]),
            preferred_agent=task.assigned_agent_id or self.session.agent_id,
            reserve=True,
        )
        return decision.agent, [("task.routed", {
            "task_id": task.pk, "title": task.title, "agent": decision.agent.name, "score": decision.score,
            "reason": decision.reason,
            "alternatives": [{"agent": alt.agent.name, "score": alt.score} for alt in decision.alternatives],
        })]

    def _skip_unroutable(self, task, error):
        """No agent can ever take the task (nobody holds what it needs): it is skipped, saying why."""
        self.last_error = {"type": "no_agent", "message": error.message,
                           "context": {"task_id": task.pk, **(error.details or {})}}
        task_services.task_skip(task=task, reason=error.message)
        self.record([("task.failed", {"task_id": task.pk, "title": task.title, "error": self.last_error})])

    def _begin_task(self, task, agent):
        """Bring the task to in_progress, whatever point it was interrupted at."""
        if task.status == TaskStatus.PAUSED:
            return task_services.task_resume(task=task)
        if task.status in (TaskStatus.PENDING, TaskStatus.READY):
            return task_services.task_assign(task=task, agent=agent, start=True)
        if task.status == TaskStatus.ASSIGNED:
            task = task_services.task_start(task=task)
        return task

    def run_task(self, task, resume=False):
        events = TurnEvents(servers.events_of(self.server), str(self.ws.path))
        try:
            self._run_task(task, events, resume)
        finally:
            events.stop()

    def _run_task(self, task, events, resume):
        # A new task's OpenCode session is made while the task is routed and started (neither needs
        # the other): 10-20 ms off the way to the prompt. One made for an attempt that then waited
        # for an agent is kept for the next attempt.
        new_session = None if resume else (
            self._waiting_sessions.pop(task.pk, None) or _OPENCODE_CALLS.submit(self.create_opencode_session, task)
        )
        try:
            agent, routed = self._take_agent(task)
        except NoAgentAvailable as error:
            if error.details.get("reason") not in NO_AGENT_EVER:
                if new_session is not None:
                    self._waiting_sessions[task.pk] = new_session
                raise WaitForAgent(task.pk, error.message) from error
            self._drop_opencode_session(new_session)
            self._skip_unroutable(task, error)
            return
        except BaseException as error:
            self._drop_opencode_session(new_session)
            if isinstance(error, ValidationFailed):
                self._skip_unroutable(task, error)
                return
            raise
        started = time.monotonic()
        outcome = None
        turn = TaskTurn(self, task, agent, events, new_session=new_session)
        try:
            task = self._begin_task(task, agent)
            self.record(routed)  # after the start: one statement, not a savepoint in its transaction
            outcome = turn.run(task, resume=resume)
        except SessionEnded as ended:
            self._end_task_early(task, ended)
            raise
        finally:
            self._drop_opencode_session(turn.new_session)  # made, but the task never started
            if outcome is None:
                agent_release(agent=agent)
            else:  # the track record and the release, in one transaction
                agent_record_result(
                    agent=agent, outcome="completed" if outcome.completed else "failed",
                    quality=1.0 if outcome.completed else 0.0, duration=time.monotonic() - started,
                    tokens=outcome.tokens, cost=outcome.cost, release=True,
                )
        self._record_task_outcome(task, agent, outcome)

    def create_opencode_session(self, task):
        """A new OpenCode session for `task` in the worktree (the session's permission policy applied)."""
        policy = self.session.permission_policy or {}
        created = self.server.client(directory=str(self.ws.path)).create_session(
            title=f"{self.session.reference} · {task.title}"[:120],
            permission=permission_rules(policy) if policy else None,
            timeout=max(OPEN_DIRECTORY_TIMEOUT, settings.OPENCODE_REQUEST_TIMEOUT),
        )
        return created["id"]

    def _drop_opencode_session(self, new_session):
        """Delete an OpenCode session made for a task that did not take it (a Future, or None)."""
        if new_session is None:
            return
        try:
            self.server.client(directory=str(self.ws.path)).delete_session(new_session.result())
        except OpenCodeError as error:
            logger.info("%s: unused OpenCode session not deleted: %s", self.session.reference, error)

    def _end_task_early(self, task, ended):
        task = Task.objects.get(pk=task.pk)
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

    def _record_task_outcome(self, task, agent, outcome):
        # `task` as it started: task_complete and task_fail lock and read the row themselves (and
        # refresh_from_db() is never used on FSM models: django-fsm's refresh flips a class-wide
        # flag, which races between the worker's threads).
        key = f"task_{task.pk}"
        if outcome.completed:
            self.last_text = outcome.text or self.last_text
            task_services.task_complete(
                task=task, output=outcome.text,
                result={"text": outcome.text, "diff": {k: outcome.diff.get(k) for k in ("files", "additions", "deletions")},
                        "opencode_session_id": outcome.opencode_session_id, "agent": agent.name},
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

    def task_prompt(self, task):
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

    def steps_done(self, task, *, up_to_sequence=None):
        """How many assistant steps of `task` its checkpoints record (up to a restore point)."""
        checkpoints = Checkpoint.objects.filter(session_id=self.session_id, data__task_id=task.pk)
        if up_to_sequence is not None:
            checkpoints = checkpoints.filter(sequence__lte=up_to_sequence)
        latest = checkpoints.order_by("-sequence").first()
        return (latest.data or {}).get("task_step", 0) if latest else 0

    # --- checkpoints and health -----------------------------------------------------------

    def checkpoint_soon(self, *, task, message_id, task_step, unchanged=False):
        """Queue a step checkpoint on the run's checkpoint thread and return at once. `unchanged`: the
        step ran no tool, so (with no other task in the worktree) the worktree is as the previous
        checkpoint recorded it, which this one reuses without running git (see _checkpoint_now)."""
        future = self._checkpointer.submit(self._checkpoint_now, task=task, message_id=message_id,
                                           task_step=task_step, reason="step", unchanged=unchanged)
        with self._checkpoint_lock:
            self._pending_checkpoints.append(future)

    def wait_for_checkpoints(self):
        """Wait for every queued checkpoint; raise the first failure (a git error fails the run)."""
        with self._checkpoint_lock:
            pending, self._pending_checkpoints = self._pending_checkpoints, []
        for future in pending:
            future.result()

    def checkpoint(self, *, task, message_id, task_step, reason="step"):
        """Checkpoint now, after any queued ones (so sequences follow the steps)."""
        self.wait_for_checkpoints()
        self._checkpoint_now(task=task, message_id=message_id, task_step=task_step, reason=reason)

    def _checkpoint_now(self, *, task, message_id, task_step, reason, unchanged=False):
        """Commit the worktree on a hidden ref and record it with the OpenCode message id.

        A step that ran no tool while no other task shares the worktree changed nothing: its
        checkpoint is the previous one's commit, as create_checkpoint would find after two git
        processes (every turn ends with such a step, its answer). Edits made to the worktree by hand
        meanwhile show in the next snapshot; the session's commit (`git add -A`) takes them anyway."""
        if unchanged and self._last_checkpoint is not None and self.task_limit == 1:
            made = self._last_checkpoint
        else:
            made = self._last_checkpoint = workspace.create_checkpoint(
                path=self.ws.path, reference=self.session.reference, name=f"{message_id or reason}-{time.time_ns()}",
                parent=self.ws.head, previous=self._last_checkpoint,
            )
        try:
            session_services.session_add_checkpoint(
                session=self.session_id, opencode_message_id=message_id or "", git_ref=made.commit,
                data={"task_id": task.pk, "message_id": message_id, "task_step": task_step, "reason": reason},
                actor=self.actor,
            )
        except Conflict:
            pass  # the session is no longer running; the control check stops the run

    def _degrade(self, reason):
        try:
            session_services.session_degrade(session=self.session_id, actor=self.actor, reason=reason)
            return True
        except Conflict:
            return False

    def _recover(self, reason):
        try:
            session_services.session_recover(session=self.session_id, actor=self.actor, reason=reason)
            return True
        except Conflict:
            return False

    def _enforce_budget(self, current, client, opencode_id):
        """Hard limit: abort and fail. Soft limit: pause, saying why (resuming continues past it).

        `current` is the session row check_control just read."""
        tokens = current.tokens_total
        over_hard = (current.token_budget_hard is not None and tokens >= current.token_budget_hard) or (
            current.cost_budget_hard is not None and current.cost >= current.cost_budget_hard
        )
        if over_hard:
            _abort_quietly(client, opencode_id)
            error = {"type": "budget_exceeded", "message": "hard budget limit reached",
                     "context": {"tokens": tokens, "cost": str(current.cost),
                                 "token_budget_hard": current.token_budget_hard,
                                 "cost_budget_hard": str(current.cost_budget_hard) if current.cost_budget_hard is not None else None}}
            try:
                session_services.session_fail(session=self.session_id, actor=self.actor, error=error)
            except Conflict:
                pass
            raise SessionEnded(S.FAILED, "hard budget limit reached")
        soft_passed = (current.metadata or {}).get("soft_budget_passed")
        over_soft = (current.token_budget_soft is not None and tokens >= current.token_budget_soft) or (
            current.cost_budget_soft is not None and current.cost >= current.cost_budget_soft
        )
        if over_soft and not soft_passed:
            _abort_quietly(client, opencode_id)
            session_services.session_budget_soft_pause(session=self.session_id, actor=self.actor, tokens=tokens, cost=current.cost)
            raise SessionEnded(S.PAUSED, "soft budget limit reached")

    def _expire_permissions(self, client, asked_at, now):
        """A permission request nobody answered gets the configured default reply after its expiry."""
        for request_id, since in list(asked_at.items()):
            if request_id is None or now - since < settings.PERMISSION_TIMEOUT_SECONDS:
                continue
            del asked_at[request_id]
            try:
                client.reply_permission(request_id, settings.PERMISSION_DEFAULT_REPLY)
            except OpenCodeError as error:
                logger.info("permission %s already settled: %s", request_id, error)
                continue
            self.record([("permission.expired", {
                "id": request_id, "reply": settings.PERMISSION_DEFAULT_REPLY,
                "after_seconds": settings.PERMISSION_TIMEOUT_SECONDS,
            })])

    # --- recording -----------------------------------------------------------------------

    def record(self, records, *, task=None):
        """Write events (one transaction for the batch); they are published after commit."""
        if not records:
            return
        if task is not None:
            records = [(kind, {**payload, "task_id": task.pk}) for kind, payload in records]
        session_services.session_record_events(session=self.session_id, entries=records)


class TaskTurn:
    """One OpenCode turn of one task: prompt (or continue, or re-attach), follow the stream, record."""

    def __init__(self, run, task, agent, events, *, new_session=None):
        self.run_ = run
        self.task = task
        self.agent = agent
        self.events = events
        self.client = run.server.client(directory=str(run.ws.path))
        self.opencode_id = ""
        self.translator = None
        self.task_step = 0
        self.usage = {"tokens": 0, "cost": Decimal("0")}
        # A Future of a new OpenCode session made while the task was routed (SessionRun.run_task);
        # None once this turn has taken it.
        self.new_session = new_session

    def run(self, task, *, resume=False):
        run_ = self.run_
        self.task = task
        try:
            how, prompt = self._choose_start(resume)
            task_services.task_set_opencode_session(task=task, opencode_session_id=self.opencode_id)
            session_services.session_set_runtime(session_id=run_.session_id, opencode_session_id=self.opencode_id)
            self.translator = TurnTranslator(self.opencode_id)
            self.events.start()  # before the prompt: nothing is replayed
            if not self.events.connected.wait(STREAM_CONNECT_TIMEOUT):
                raise OpenCodeError("OpenCode's event stream did not connect")
            model = run_.session.model_identifier or self.agent.model_identifier
            if how == "reattach":
                # The turn still runs on this server: follow it without prompting again.
                self.translator.feed({"type": "session.status", "properties": {
                    "sessionID": self.opencode_id, "status": {"type": "busy"}}})
                if session_snapshot(self.client, self.opencode_id, messages_if_busy=False)["finished"]:
                    self._rebuild_after_reconnect()
            else:
                self.client.prompt_async(
                    self.opencode_id, text=prompt, agent=self.agent.opencode_agent or None,
                    model=model_ref(model) if model else None, system=self.agent.system_prompt or None,
                )
            run_.record([("task.prompted", {
                "task_id": task.pk, "opencode_session_id": self.opencode_id, "agent": self.agent.name,
                "opencode_agent": self.agent.opencode_agent, "model": model or "default", "how": how,
                "steps_done": self.task_step,
            })])
            return self._follow(self.events.queue)
        except SessionEnded as ended:
            if self.opencode_id:
                _abort_quietly(self.client, self.opencode_id)
            if ended.status == S.PAUSED:
                run_.checkpoint(task=task, message_id=self.translator.last_message_id if self.translator else "",
                                task_step=self.task_step, reason="pause")
            raise

    def _choose_start(self, resume):
        """("new" | "continue" | "reattach" | "resume", prompt): how this turn begins.

        - continue: the task was paused and its OpenCode session is on this server: ask it to go on.
        - reattach: a lost worker's turn is still running on this server: follow it.
        - resume: the task was interrupted and its OpenCode session is gone (another server, or a
          checkpoint restore): a new OpenCode session, told which steps are done.
        """
        run_, task = self.run_, self.task
        restored = run_.restored_checkpoint
        existing = task.opencode_session_id if resume else ""
        if existing and restored is None:
            try:
                snapshot = session_snapshot(self.client, existing)
            except OpenCodeNotFound:
                snapshot = None
            if snapshot is not None:
                self.opencode_id = existing
                self.task_step = run_.steps_done(task)
                if snapshot["status"] != "idle":
                    return "reattach", ""
                return "continue", (
                    "Continue the task from where it stopped (it was interrupted). "
                    "Do not repeat steps that are already done."
                )
        prompt = run_.task_prompt(task)  # while the OpenCode session is being made
        if self.new_session is not None:
            self.opencode_id, self.new_session = self.new_session.result(), None
        else:
            self.opencode_id = run_.create_opencode_session(task)
        if not resume:
            return "new", prompt
        self.task_step = run_.steps_done(task, up_to_sequence=restored.sequence if restored else None)
        note = (
            f"This task was interrupted and is resumed: its first {self.task_step} steps are done and their "
            f"changes are in the workspace. Continue from there; do not repeat them.\n@@resume {self.task_step}"
        )
        return "resume", prompt + "\n\n" + note

    def _follow(self, events):
        run_, translator = self.run_, self.translator
        steps_seen = 0
        now = time.monotonic()
        last_progress = last_control = last_snapshot = now
        degraded_by_us = False
        permissions = PermissionWatch(run_, self)
        while not translator.finished:
            # Events wake this at once; the timeout only paces the periodic checks below.
            batch = _take_events(events, timeout=CONTROL_INTERVAL)
            now = time.monotonic()
            if batch:
                # Everything that arrived meanwhile is recorded in one transaction, so a burst of
                # OpenCode events does not queue behind one commit per event.
                records = []
                for item in batch:
                    if isinstance(item, Exception):
                        run_.record(records, task=self.task)
                        raise item
                    if item.type == RECONNECTED:
                        run_.record(records, task=self.task)
                        records = []
                        self._rebuild_after_reconnect()
                    records += translator.feed(item.as_dict())
                if records:
                    last_progress = now
                    run_.record(records, task=self.task)
                    if degraded_by_us and translator.status != "retry" and not permissions.waiting_too_long(now):
                        degraded_by_us = not run_._recover("progress resumed")
                permissions.take(translator.permission_requests, now)
                if translator.status == "retry" and not degraded_by_us:
                    retry = translator.retry or {}
                    degraded_by_us = run_._degrade(
                        f"provider retrying (attempt {retry.get('attempt')}): {retry.get('message')}"
                    )
                for step in translator.completed_steps[steps_seen:]:
                    steps_seen += 1
                    self._record_step(step)
            if now - last_control >= CONTROL_INTERVAL:
                last_control = now
                current = run_.check_control(shared=True)
                run_._enforce_budget(current, self.client, self.opencode_id)
                if permissions.asked_at:
                    permissions.forward_replies()
            if (translator.turn_started and now - last_progress > SILENCE_CHECK_SECONDS
                    and now - last_snapshot > SILENCE_CHECK_SECONDS):
                # A quiet stream may have missed the end of the turn: ask OpenCode directly.
                last_snapshot = now
                self._rebuild_after_reconnect()
                if translator.finished:
                    logger.warning("%s: OpenCode session %s ended without its events reaching the worker "
                                   "(%.0f s silent); finished from its messages", run_.session.reference,
                                   self.opencode_id, now - last_progress)
                    run_.record([("opencode.turn_recovered", {"task_id": self.task.pk, "opencode_session_id": self.opencode_id})])
                    for step in translator.completed_steps[steps_seen:]:
                        steps_seen += 1
                        self._record_step(step)
            if not degraded_by_us and now - last_progress > settings.SESSION_STALL_SECONDS:
                degraded_by_us = run_._degrade(f"no OpenCode events for {settings.SESSION_STALL_SECONDS:.0f} s")
            if not degraded_by_us and permissions.waiting_too_long(now):
                degraded_by_us = run_._degrade("a permission request is waiting for an answer")
            permissions.expire(now)
        if degraded_by_us:
            run_._recover("turn ended")
        run_.wait_for_checkpoints()  # the task's outcome comes after its step checkpoints
        diff = run_.last_diff = run_.turn_diff(after_step_checkpoint=(
            steps_seen > 0 and translator.error is None and not translator.rejected_permissions))
        outcome = TurnOutcome(
            completed=translator.error is None and not translator.rejected_permissions,
            text=translator.final_text, tokens=self.usage["tokens"],
            cost=self.usage["cost"], opencode_session_id=self.opencode_id, diff=diff,
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

    def _rebuild_after_reconnect(self):
        """Nothing is replayed after a reconnect (or a missed event): if the turn has ended,
        finish it from OpenCode's messages. The translator ignores what it has already seen."""
        snapshot = session_snapshot(self.client, self.opencode_id, messages_if_busy=False)
        if not snapshot["finished"]:
            return
        translator, records = self.translator, []
        for message in snapshot["messages"]:
            info = message.get("info") or {}
            update = {"type": "message.updated", "properties": {"sessionID": self.opencode_id, "info": info}}
            parts = [{"type": "message.part.updated", "properties": {"sessionID": self.opencode_id, "part": part}}
                     for part in message.get("parts") or []]
            # In the stream's order: a user message is known before its parts (its text is not the
            # assistant's); an assistant step's tools end before the step does (StepUsage.ran_tools).
            for event in [update, *parts] if info.get("role") == "user" else [*parts, update]:
                records += translator.feed(event)
        if snapshot["error"] and translator.error is None:
            records += translator.feed(
                {"type": "session.error", "properties": {"sessionID": self.opencode_id, "error": snapshot["error"]}}
            )
        records += translator.feed({"type": "session.idle", "properties": {"sessionID": self.opencode_id}})
        if records:
            self.run_.record(records, task=self.task)

    def _record_step(self, step):
        run_ = self.run_
        self.task_step += 1
        self.usage["tokens"] += step.input + step.output + step.reasoning
        self.usage["cost"] += Decimal(str(step.cost))
        session_services.session_record_usage(
            session_id=run_.session_id, tokens_input=step.input, tokens_output=step.output,
            tokens_reasoning=step.reasoning, tokens_cache_read=step.cache_read,
            tokens_cache_write=step.cache_write, cost=step.cost, api_calls=1,
        )
        run_.checkpoint_soon(task=self.task, message_id=step.message_id, task_step=self.task_step,
                             unchanged=not step.ran_tools)


class TurnEvents:
    """The events of one worktree, from the server's shared stream (streams.ServerEvents), into
    `queue` between start and stop."""

    def __init__(self, server_events, directory):
        self.queue = queue.Queue()
        self.server_events = server_events
        self.directory = directory
        self.connected = server_events.connected
        self.started = False

    def start(self):
        if not self.started:
            self.started = True
            self.server_events.subscribe(self.directory, self.queue, types=TURN_EVENT_TYPES)

    def stop(self):
        if self.started:
            self.server_events.unsubscribe(self.directory, self.queue)


def _take_events(events, *, timeout, limit=200):
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


def _abort_quietly(client, opencode_id):
    try:
        client.abort(opencode_id)
    except OpenCodeError as error:
        logger.warning("abort of %s failed: %s", opencode_id, error)


def _error_type(error):
    if isinstance(error, ValidationFailed):
        return "invalid_session"
    if isinstance(error, workspace.GitError):
        return "workspace_error"
    if isinstance(error, OpenCodeError):
        return "opencode_error"
    return getattr(error, "code", "error")


def _diff_payload(diff):
    patch = diff["patch"]
    payload = {key: diff[key] for key in ("files", "additions", "deletions")}
    payload["patch"] = patch if len(patch) <= PATCH_LIMIT else patch[:PATCH_LIMIT]
    payload["patch_truncated"] = len(patch) > PATCH_LIMIT
    return payload




