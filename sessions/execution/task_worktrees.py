"""Where each task of a session runs, and how its work joins the session branch.

The rule (docs/decisions/0230-parallel-task-worktrees.md): when a session may run more than one task
at once (task_concurrency > 1), every task of its plan runs on a branch of its own,
`ind/<reference>--task-<id>`, checked out from the session branch's head when the task starts, in a
worktree of its own: one a task of the session left once its work was merged (still open in
OpenCode), else a spare (sessions.execution.spares), else a new one at
`<WORKSPACE_ROOT>/<reference>--task-<id>`. OpenCode's first prompt in a directory it has not opened
waited 3-7 s with three opening at once; in a reused or spare one it reaches the LLM at once
(docs/decisions/0231). The session's worktree then only receives merges (and the integration tasks
that resolve their conflicts), so a merge never meets another task's edits in progress. With
task_concurrency 1 (or the root task alone) tasks run in the session's worktree, as they always have.

After a task's turn: its acceptance command, if any (acceptance.py; one more turn on failure), then,
in its own worktree, its work is committed on its branch and merged into the session branch (merges.py),
one merge at a time. A dependent task starts only after its prerequisite completed, and a task completes
only once merged, so merges follow the dependency order. A conflict is left in progress in the session
worktree for an integration task (capability `conflict_resolution`), run on the same thread while the
merge lock is held; unresolved, the merge is aborted, the conflict is recorded and the task fails.
"""

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from django.conf import settings
from django.db import transaction

from agents.models import Agent
from agents.services import NoAgentAvailable, agent_record_result, agent_release, agent_route
from orchestrator.errors import DomainError
from sessions.execution import merges, servers, spares, workspace
from sessions.execution.acceptance import AcceptanceResult, retry_prompt, run_acceptance
from sessions.execution.checkpointer import StepCheckpointer
from sessions.execution.run_guard import SessionEnded
from sessions.execution.task_turn import TaskTurn, TurnEvents, TurnOutcome
from sessions.models import Checkpoint
from tasks import services as task_services
from tasks.models import Task, TaskStatus

logger = logging.getLogger(__name__)

INTEGRATION_CAPABILITY = "conflict_resolution"
# How long an integration task waits for a free agent with conflict_resolution before the conflict
# is recorded as unresolved (the merge lock is held meanwhile: other merges wait too).
INTEGRATION_AGENT_WAIT = 300.0
AGENT_RETRY_SECONDS = 1.0


@dataclass
class TaskPlace:
    """The worktree a task's turn works in, and the checkpointer of that worktree. `own`: the task's
    own worktree (made for it, merged and removed when it ends), else the session's."""

    worktree: workspace.Workspace
    checkpointer: StepCheckpointer
    own: bool

    @property
    def directory(self) -> str:
        return str(self.worktree.path)


def task_branch(reference: str, task_id: int) -> str:
    return f"ind/{reference}--task-{task_id}"


def task_worktree_path(reference: str, task_id: int) -> Path:
    return Path(settings.WORKSPACE_ROOT) / f"{reference}--task-{task_id}"


class TaskWorktrees:
    """The task worktrees of one session run, and the merges of their branches.

    Owns: the merge lock (one merge, with its integration task, at a time in the session worktree)
    and the conflicts left unresolved (for the session's result). The session run owns the session
    worktree, the server and the recording."""

    def __init__(self, session_run):
        self.session_run = session_run
        self.merge_lock = threading.Lock()
        self.conflicts: list[dict] = []
        self._cleanup = None  # the thread closing and removing finished task worktrees, once needed
        self._cleanups: list[Future] = []
        self._cleanup_lock = threading.Lock()
        self._idle: list[workspace.Workspace] = []  # worktrees of merged tasks, open in OpenCode, for the next
        self._idle_lock = threading.Lock()

    # --- hooks of the session run --------------------------------------------------------

    def prepare(self) -> None:
        """At the run's start: a merge a lost run left in progress in the session worktree is
        aborted (its task is resumed and merged again; git knows what it already merged)."""
        path = self.session_run.worktree.path
        if merges.merge_in_progress(path=path):
            merges.abort_merge(path=path)
            self.session_run.record([("merge.aborted", {"reason": "left in progress by an earlier run"})])

    def restores_session_worktree(self, checkpoint: Checkpoint) -> bool:
        """Whether a resume checkpoint is the session worktree's (a task worktree's checkpoint is
        restored in that worktree when its task resumes: place_for)."""
        return not (checkpoint.data or {}).get("worktree")

    def parallel(self) -> bool:
        return (self.session_run.task_limit or 1) > 1

    def wants_own(self, task: Task) -> bool:
        """Whether `task` runs in a worktree of its own: a plan task (not the root, not an integration
        task, which works on the session worktree's merge in progress) of a parallel session."""
        return self.parallel() and task.parent_id is not None \
            and INTEGRATION_CAPABILITY not in (task.required_capabilities or [])

    def session_place(self) -> TaskPlace:
        run = self.session_run
        return TaskPlace(worktree=run.worktree, checkpointer=run.checkpointer, own=False)

    def place_for(self, task: Task) -> TaskPlace:
        """The task's place: its own worktree in a parallel session (made now, or reopened and
        brought back to the resume checkpoint when a previous run left it), else the session's."""
        run = self.session_run
        if not self.wants_own(task):
            return self.session_place()
        reference = run.session.reference
        branch = task_branch(reference, task.pk)
        path = task_worktree_path(reference, task.pk)
        if task.status not in (TaskStatus.PENDING, TaskStatus.READY):
            # Where a previous run of the task left its worktree (made here, or a spare it adopted), if
            # anywhere. A task that never started has none: no git process on its way to the prompt.
            path = workspace.worktree_of_branch(repository=run.worktree.repository, branch=branch) or path
        existed = (path / ".git").exists()
        made_at = time.monotonic()
        start = workspace.git("rev-parse", f"refs/heads/{run.worktree.branch}", cwd=run.worktree.path).strip()
        reused = None if existed else self._reused(branch, start)
        worktree = reused or (None if existed else self._from_spare(branch, start))
        if worktree is None:
            worktree = workspace.task_worktree(repository=run.worktree.repository, path=path, branch=branch,
                                               start=start)
        if existed and run.restored_checkpoint is not None:
            self._restore(task, worktree, up_to=run.restored_checkpoint.sequence)
        checkpointer = StepCheckpointer(session=run.session, actor=run.actor)
        checkpointer.worktree = worktree
        checkpointer.data_extra = {"worktree": branch}
        if not existed:
            run.record([("task.worktree", {
                "task_id": task.pk, "path": str(worktree.path), "branch": branch, "start": start,
                "spare": reused is None and worktree.path != path, "reused": reused is not None,
                "seconds": round(time.monotonic() - made_at, 3)})])
        return TaskPlace(worktree=worktree, checkpointer=checkpointer, own=True)

    def _reused(self, branch: str, start: str) -> workspace.Workspace | None:
        """The worktree a merged task of this run left (still open in OpenCode, clean: its work is
        committed and merged), switched to the new task's branch at `start`, or None."""
        with self._idle_lock:
            idle = self._idle.pop() if self._idle else None
        if idle is None:
            return None
        try:
            return workspace.adopt_for_task(repository=idle.repository, path=idle.path, branch=branch, start=start)
        except workspace.GitError as error:
            logger.info("%s: the worktree %s not reused for %s (%s)", self.session_run.session.reference,
                        idle.path, branch, error)
            self._clean_up_later(idle.path, idle.repository, remove=True)
            return None

    def _from_spare(self, branch: str, start: str) -> workspace.Workspace | None:
        """A spare worktree of the repository, already opened by this run's OpenCode server, as the
        task's worktree (OpenCode's first prompt in a directory it has not opened waits ~1 s: see
        spares), or None. Taking one has the spares thread make the missing ones."""
        run = self.session_run
        repository = run.worktree.repository
        spare = spares.take(repository)
        if spare is None:
            return None
        if spare.server is not run.server:
            spares.discard(spare)
            return None
        try:
            worktree = workspace.adopt_for_task(repository=repository, path=spare.path, branch=branch, start=start)
        except workspace.GitError as error:
            logger.info("%s: spare worktree not used for %s (%s)", run.session.reference, branch, error)
            spares.discard(spare)
            return None
        spares.note_run(repository)
        return worktree

    def release(self, place: TaskPlace, task: Task, *, ended: bool, merged: bool) -> None:
        """After the task's thread: its checkpointer stopped; its own worktree kept open for the
        session's next task once its work is merged, else closed in OpenCode and, once the task has
        ended (failed), removed (its branch stays); an interrupted task's stays for its resumption."""
        if not place.own:
            return
        try:
            place.checkpointer.wait()
        finally:
            place.checkpointer.close()
        if merged:
            with self._idle_lock:
                self._idle.append(place.worktree)
            return
        self._clean_up_later(place.worktree.path, place.worktree.repository, remove=ended)

    def _clean_up_later(self, path: Path, repository: Path, *, remove: bool) -> None:
        # Off the task's thread: closing a directory in OpenCode and removing a worktree took ~2 s on a
        # loaded host, and the task's dependents start only once its thread has returned.
        server = self.session_run.server
        with self._cleanup_lock:
            if self._cleanup is None:
                self._cleanup = ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-worktree-cleanup")
            self._cleanups.append(self._cleanup.submit(_clean_up, server, path, repository, remove))

    def close(self) -> None:
        """Close and remove the worktrees merged tasks left; wait for the worktrees being closed and
        removed (before the run releases its server)."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for worktree in idle:
            self._clean_up_later(worktree.path, worktree.repository, remove=True)
        with self._cleanup_lock:
            pending, self._cleanups = self._cleanups, []
            cleanup, self._cleanup = self._cleanup, None
        for future in pending:
            try:
                future.result()
            except (workspace.GitError, OSError) as error:  # a leftover worktree: the cleanup job removes it
                logger.warning("%s: a task worktree was not removed: %s", self.session_run.session.reference, error)
        if cleanup is not None:
            cleanup.shutdown(wait=True)

    def after_turn(self, turn: TaskTurn, task: Task, outcome: TurnOutcome, place: TaskPlace) -> TurnOutcome:
        """The task's acceptance (a second turn when it fails), then its merge into the session branch."""
        if outcome.completed and task.acceptance:
            outcome = self._accept(turn, task, outcome, place)
        if outcome.completed and place.own:
            outcome = self._merge(task, outcome, place)
        return outcome

    def result_extra(self) -> dict:
        return {"conflicts": self.conflicts} if self.conflicts else {}

    # --- acceptance ------------------------------------------------------------------------

    def _accept(self, turn: TaskTurn, task: Task, outcome: TurnOutcome, place: TaskPlace) -> TurnOutcome:
        result = self._run_acceptance(task, task.acceptance, place.worktree.path, attempt=1)
        if result.passed:
            return replace(outcome, acceptance=result.as_payload())
        second = turn.continue_with(retry_prompt(result), reason="acceptance_failed")
        if not second.completed:
            return replace(second, acceptance=result.as_payload())
        result = self._run_acceptance(task, task.acceptance, place.worktree.path, attempt=2)
        if result.passed:
            return replace(second, acceptance=result.as_payload())
        return replace(second, completed=False, acceptance=result.as_payload(), error={
            "type": "acceptance_failed",
            "message": f"the acceptance command failed after a second turn ({_ended(result)})",
            "context": {"acceptance": result.as_payload()},
        })

    def _run_acceptance(self, task: Task, command: str, cwd: Path, *, attempt: int) -> AcceptanceResult:
        result = run_acceptance(command=command, cwd=cwd, timeout=settings.ACCEPTANCE_TIMEOUT_SECONDS)
        self.session_run.record([("acceptance.passed" if result.passed else "acceptance.failed", {
            "task_id": task.pk, "attempt": attempt, **result.as_payload()})])
        return result

    # --- merging -----------------------------------------------------------------------------

    def _merge(self, task: Task, outcome: TurnOutcome, place: TaskPlace) -> TurnOutcome:
        run = self.session_run
        started = time.monotonic()
        merges.commit_task_work(path=place.worktree.path,
                                message=f"{run.session.reference} task {task.pk}: {task.title}")
        message = f"Merge task {task.pk}: {task.title}"
        with self.merge_lock:
            result = merges.merge_branch(path=run.worktree.path, branch=place.worktree.branch, message=message)
            if result.merged:
                run.record([("merge.done", {
                    "task_id": task.pk, "branch": place.worktree.branch, "commit": result.commit,
                    "already_merged": result.already_merged, "seconds": round(time.monotonic() - started, 3)})])
                return outcome
            run.record([("merge.conflict", {"task_id": task.pk, "branch": place.worktree.branch,
                                            "files": result.conflicts})])
            return self._integrate(task, outcome, place, result.conflicts, message)

    def _integrate(self, task: Task, outcome: TurnOutcome, place: TaskPlace, files: list[str],
                   message: str) -> TurnOutcome:
        """An integration task resolves the conflict left in the session worktree (the caller holds
        the merge lock); resolved, the merge is concluded; else aborted and recorded, and the task fails."""
        run = self.session_run
        path = run.worktree.path
        excerpt = merges.conflict_excerpt(path=path, files=files)
        prompt = _integration_prompt(task, place.worktree.branch, files, excerpt)
        integration, agent, why = self._start_integration(task, prompt, files)
        remaining, acceptance, integration_outcome = list(files), None, None
        if integration is not None:
            session_place = self.session_place()
            events = TurnEvents(servers.events_of(run.server), session_place.directory)
            turn = TaskTurn(run, integration, agent, events, place=session_place)
            started = time.monotonic()
            try:
                integration_outcome = turn.run(integration)
            except SessionEnded:
                merges.abort_merge(path=path)
                _drop_task(integration)
                agent_release(agent=agent)
                raise
            finally:
                events.stop()
            remaining = merges.files_with_markers(path=path, files=files) if integration_outcome.completed else files
            if integration_outcome.completed and not remaining and task.acceptance:
                acceptance = self._run_acceptance(integration, task.acceptance, path, attempt=1)
            resolved = integration_outcome.completed and not remaining and (acceptance is None or acceptance.passed)
            agent_record_result(agent=agent, outcome="completed" if resolved else "failed",
                                quality=1.0 if resolved else 0.0, duration=time.monotonic() - started,
                                tokens=integration_outcome.tokens, cost=integration_outcome.cost, release=True)
            if remaining:
                why = "conflict markers remain"
            elif acceptance is not None and not acceptance.passed:
                why = "its acceptance failed"
            elif not resolved:
                why = (integration_outcome.error or {}).get("message", "the integration task failed")
            if resolved:
                commit = merges.conclude_merge(path=path, message=message)
                task_services.task_complete(task=integration, output=integration_outcome.text, result={
                    "text": integration_outcome.text, "files": files, "commit": commit, "agent": agent.name})
                run.record([("task.completed", {"task_id": integration.pk, "title": integration.title,
                                                "agent": agent.name}),
                            ("merge.done", {"task_id": task.pk, "branch": place.worktree.branch, "commit": commit,
                                            "resolved_by": integration.pk})])
                return outcome
        merges.abort_merge(path=path)
        conflict = {"task_id": task.pk, "branch": place.worktree.branch, "files": files, "remaining": remaining,
                    "integration_task_id": integration.pk if integration else None, "reason": why,
                    **({"acceptance": acceptance.as_payload()} if acceptance else {})}
        self.conflicts.append(conflict)
        error = {"type": "merge_conflict", "message": f"merging its branch conflicted in {', '.join(files)} "
                                                      f"and was not resolved ({why})", "context": conflict}
        if integration is not None:
            task_services.task_fail(task=integration, error=error)
            run.record([("task.failed", {"task_id": integration.pk, "title": integration.title, "error": error})])
        return replace(outcome, completed=False, error=error)

    def _start_integration(self, task: Task, prompt: str, files: list[str]) -> tuple[Task | None, Agent | None, str]:
        """(integration task in progress, its agent, "") or (None, None, why none could run)."""
        run = self.session_run
        deadline = time.monotonic() + INTEGRATION_AGENT_WAIT
        while True:
            try:
                decision = agent_route(required_capabilities=[INTEGRATION_CAPABILITY], reserve=True)
                break
            except NoAgentAvailable as error:
                if error.details.get("reason") in ("missing_capabilities", "no_agent_has_all") \
                        or time.monotonic() > deadline:
                    return None, None, f"no agent for conflict resolution: {error.message}"
            if run.guard.ending.wait(AGENT_RETRY_SECONDS):
                raise run.guard.ended_by
        try:
            with transaction.atomic():  # the plan loop never sees it ready: it runs here, now
                integration = task_services.task_create(
                    session=run.session, title=f"Resolve the merge conflict of {task.title}"[:200],
                    description=prompt, required_capabilities=[INTEGRATION_CAPABILITY])
                integration = task_services.task_assign(task=integration, agent=decision.agent, start=True)
        except BaseException:
            agent_release(agent=decision.agent)
            raise
        run.record([("merge.integration_task", {
            "task_id": task.pk, "integration_task_id": integration.pk, "agent": decision.agent.name,
            "files": files})])
        return integration, decision.agent, ""

    def _restore(self, task: Task, worktree: workspace.Workspace, *, up_to: int) -> None:
        checkpoint = Checkpoint.objects.filter(
            session_id=self.session_run.session_id, data__task_id=task.pk, data__worktree=worktree.branch,
            sequence__lte=up_to).order_by("-sequence").first()
        if checkpoint is not None and checkpoint.git_ref:
            workspace.restore_checkpoint(path=worktree.path, commit=checkpoint.git_ref)
            self.session_run.record([("workspace.restored", {
                "task_id": task.pk, "sequence": checkpoint.sequence, "git_ref": checkpoint.git_ref,
                "path": str(worktree.path)})])


def _clean_up(server, path: Path, repository: Path, remove: bool) -> None:
    """Close a task's worktree in OpenCode and, with `remove`, remove it (its branch stays)."""
    servers.close_directory(server, str(path))
    if remove:
        workspace.remove_workspace(repository=repository, path=path)


def _ended(result: AcceptanceResult) -> str:
    return f"killed after {result.seconds:g} s" if result.timed_out else f"exit status {result.exit_code}"


def _integration_prompt(task: Task, branch: str, files: list[str], excerpt: str) -> str:
    listing = "".join(f"- {name}\n" for name in files)
    return (
        f"Merging the branch {branch} of the task \"{task.title}\" into the session branch conflicted. "
        "The merge is in progress in this worktree.\n\n"
        f"Conflicting files:\n{listing}\n"
        "Edit each of these files so that it keeps the intent of both sides, and remove every conflict "
        "marker line (<<<<<<<, =======, >>>>>>>). Do not run git commit, git merge or git checkout: "
        "the orchestrator concludes the merge.\n\n"
        f"The conflicting hunks:\n```diff\n{excerpt}\n```"
    )


def _drop_task(task: Task) -> None:
    """An integration task interrupted with its run: cancelled (the merge it served was aborted;
    its task is resumed and merged again by the next run)."""
    try:
        task_services.task_cancel(task=task, reason="interrupted with the run; the merge was aborted")
    except DomainError as error:
        logger.info("integration task %s not cancelled: %s", task.pk, error)
