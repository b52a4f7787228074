"""Step checkpoints of a session run: a git snapshot of the worktree after every assistant step,
recorded with the OpenCode message id, off the event path."""

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from django.db import connection

from orchestrator.errors import Conflict
from sessions import services as session_services
from sessions.execution import workspace
from sessions.models import CodingSession
from sessions.services import Actor
from tasks.models import Task


class StepCheckpointer:
    """The step checkpoints of one session run.

    Owns: the run's checkpoint thread (git snapshots take tens of milliseconds, so they are taken
    one at a time, in order, while OpenCode's next events are recorded), the checkpoints queued on
    it and not yet waited for, and the last checkpoint's commit, which a step that changed no file
    reuses without running git. `worktree` is set once the run has prepared it; `shared_worktree`
    says whether other tasks of the session may change the worktree at the same time.
    """

    def __init__(self, *, session: CodingSession, actor: Actor):
        self.session = session
        self.actor = actor
        self.worktree = None  # workspace.Workspace, once the run has prepared it
        self.shared_worktree = False
        self.data_extra = {}  # added to each checkpoint's data (a task worktree's branch: task_worktrees)
        self.last_commit = None  # workspace.CheckpointCommit of the latest checkpoint
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{session.reference}-checkpoint")
        self._pending = []
        self._pending_lock = threading.Lock()

    def take_soon(self, *, task: Task, message_id: str, task_step: int, unchanged: bool = False) -> None:
        """Queue a step checkpoint on the checkpoint thread and return at once. `unchanged`: the step
        ran no tool, so (with no other task in the worktree) the worktree is as the previous
        checkpoint recorded it, which this one reuses without running git (see take)."""
        future = self._thread.submit(self.take, task=task, message_id=message_id, task_step=task_step,
                                     reason="step", unchanged=unchanged)
        with self._pending_lock:
            self._pending.append(future)

    def wait(self) -> None:
        """Wait for every queued checkpoint; raise the first failure (a git error fails the run)."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def take_now(self, *, task: Task, message_id: str, task_step: int, reason: str = "step") -> None:
        """Checkpoint now, after any queued ones (so sequences follow the steps)."""
        self.wait()
        self.take(task=task, message_id=message_id, task_step=task_step, reason=reason)

    def take(self, *, task: Task, message_id: str, task_step: int, reason: str, unchanged: bool = False) -> None:
        """Commit the worktree on a hidden ref and record it with the OpenCode message id.

        A step that ran no tool while no other task shares the worktree changed nothing: its
        checkpoint is the previous one's commit, as create_checkpoint would find after two git
        processes (every turn ends with such a step, its answer). Edits made to the worktree by hand
        meanwhile show in the next snapshot; the session's commit (`git add -A`) takes them anyway."""
        if unchanged and self.last_commit is not None and not self.shared_worktree:
            made = self.last_commit
        else:
            made = self.last_commit = workspace.create_checkpoint(
                path=self.worktree.path, reference=self.session.reference,
                name=f"{message_id or reason}-{time.time_ns()}", parent=self.worktree.head,
                previous=self.last_commit,
            )
        try:
            session_services.session_add_checkpoint(
                session=self.session, opencode_message_id=message_id or "", git_ref=made.commit,
                data={"task_id": task.pk, "message_id": message_id, "task_step": task_step, "reason": reason,
                      **self.data_extra},
                actor=self.actor,
            )
        except Conflict:
            pass  # the session is no longer running; the control check stops the run

    def close(self) -> None:
        """Stop the checkpoint thread, giving its database connection back (`connection` resolves
        per thread, so it is closed there)."""
        closed: Future = self._thread.submit(lambda: connection.close())
        closed.result()
        self._thread.shutdown(wait=True)
