"""Spare worktrees: worktrees made and opened in OpenCode before a session needs one.

OpenCode's first prompt in a directory it has never served takes about a second before the LLM
hears anything (it lists the files, reads the VCS state, loads the tools, skills and commands of
that directory); in a directory it has already opened, ~70 ms. So once a session of a repository
has run in this worker process, the process keeps WORKSPACE_SPARES worktrees of that repository
ready: detached at the repository's HEAD and opened by its OpenCode server (WARM_UP_PATHS, plain
GET calls: no LLM request). The next session of the repository takes one and gets its branch there
with one `git checkout -b`.

A repository gets spares from its second session in the process on (one used once needs none).
A parallel session (task_concurrency N > 1) runs each task in a worktree of its own, so it takes a
spare for its session worktree and one for each task it starts: from then on the process keeps
N + 1 spares of the repository (the widest such session it has run; at most PARALLEL_SPARES_LIMIT)
instead of WORKSPACE_SPARES, so the next such session's tasks all start warm: three task worktrees
opened cold at once took 3-7 s from prompt to the LLM's first request, a spare ~0.15 s
(docs/decisions/0231).

A spare is used only while it still fits: its folder is there, the repository's HEAD has not
moved, and the server that opened it is still the one new runs get. Otherwise it is removed and
the session takes the cold path (`workspace.prepare_workspace`); a spare removed unused is closed
in OpenCode first (servers.close_directory). Spares are made and removed on
one background thread, never on a session's path. The worker removes its spares when it stops;
the spares of a killed worker are detached worktrees named spare-* that the workspace cleanup job
removes after the retention period.
"""

import itertools
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from sessions.execution import servers, workspace
from sessions.opencode.errors import OpenCodeError

logger = logging.getLogger(__name__)

# What OpenCode loads for a directory before its first LLM request, found by measuring: with all of
# these asked once, the first prompt reaches the LLM in ~70 ms instead of ~1 s; no subset did.
WARM_UP_PATHS = ("/agent", "/provider", "/skill", "/command", "/vcs", "/experimental/tool", "/find/file",
                 "/lsp", "/formatter", "/mcp")


@dataclass(frozen=True)
class Spare:
    repository: Path
    path: Path
    base_commit: str
    server: object


_lock = threading.Lock()
_ready = {}  # repository -> [Spare], oldest first
_making = {}  # repository -> spares queued or being made
_runs = {}  # repository -> sessions started in this process
_wanted = {}  # repository -> spares its widest parallel session needs (its task_concurrency + 1)
_jobs = queue.Queue()
_thread = None
_names = itertools.count(1)
_stopping = threading.Event()
# Spares kept for a repository's parallel sessions: each is a directory its OpenCode server keeps open.
PARALLEL_SPARES_LIMIT = 8

def take(repository):
    """A ready spare of `repository` that still fits, or None (no spare, or it no longer fits)."""
    repository = Path(repository)
    with _lock:
        ready = _ready.get(repository) or []
        spare = ready.pop(0) if ready else None
    if spare is None:
        return None
    if fits(spare):
        return spare
    discard(spare)
    return None


def fits(spare):
    return (
        (spare.path / ".git").exists()
        and servers.is_current(spare.server)
        and workspace.head_commit(spare.repository) == spare.base_commit
    )


def note_run(repository, *, parallel_tasks=0, delay=2.0):
    """A session of `repository` has started in this process (or a task of it has taken a spare).
    From the repository's second session on, have the spares it lacks made in the background: a
    repository used once gets none. `parallel_tasks`: the session's task_concurrency, which may raise
    how many the repository keeps (see the module's docstring; WORKSPACE_SPARES 0 keeps none).
    They start `delay` seconds from now: opening a directory keeps OpenCode busy for a second or so,
    and the session that just started is sending its first prompt to the same server."""
    repository = Path(repository)
    with _lock:
        _runs[repository] = _runs.get(repository, 0) + 1
        if parallel_tasks > 1:
            _wanted[repository] = max(_wanted.get(repository, 0), min(PARALLEL_SPARES_LIMIT, parallel_tasks + 1))
        missing = wanted(repository) - len(_ready.get(repository) or []) - _making.get(repository, 0)
        if _runs[repository] < 2 or missing <= 0 or _stopping.is_set():
            return
        _making[repository] = _making.get(repository, 0) + missing
    due = time.monotonic() + delay
    for _ in range(missing):
        _submit(lambda: _make(repository), due=due)


def wanted(repository):
    """How many spares of `repository` this process keeps (called with the lock held)."""
    if not settings.WORKSPACE_SPARES:
        return 0
    return max(settings.WORKSPACE_SPARES, _wanted.get(Path(repository), 0))


def ready_count(repository):
    """Spares of `repository` ready now (for the benchmarks and tests: nothing waits on it)."""
    with _lock:
        return len(_ready.get(Path(repository)) or [])


def discard(spare):
    """Remove a spare that will not be used (in the background)."""
    _submit(lambda: _remove(spare))


def shutdown():
    """Remove the ready spares now (the worker is stopping); one made after this is removed too."""
    _stopping.set()
    with _lock:
        spares = [spare for ready in _ready.values() for spare in ready]
        _ready.clear()
    for spare in spares:
        _remove(spare)


def _submit(job, *, due=0.0):
    """Run `job` on the spares thread, in submission order, not before the monotonic time `due`."""
    global _thread
    with _lock:
        if (
            _thread is None or not _thread.is_alive()
        ):  # an unexpected error ends the thread: the next job starts another
            _thread = threading.Thread(target=_work, name="spare-worktrees", daemon=True)
            _thread.start()
    _jobs.put((due, job))


def _work():
    while True:
        due, job = _jobs.get()
        # Wait for the job's time, but not past the worker's shutdown (a stopping worker makes no spares).
        _stopping.wait(max(0.0, due - time.monotonic()))
        try:
            job()
        except (workspace.GitError, OpenCodeError, OSError):  # a spare is an optimisation: log and go on
            logger.exception("spare worktrees: a job failed")


def _make(repository):
    try:
        name = f"{workspace.SPARE_PREFIX}{socket.gethostname()}-{os.getpid()}-{next(_names)}"
        path, base_commit = workspace.create_spare(repository=repository, root=settings.WORKSPACE_ROOT, name=name)
        try:
            server = servers.acquire_server(directory=str(path))
            try:
                _open_in_opencode(server, path)
            finally:
                servers.release_server(server)
        except Exception:
            workspace.remove_workspace(repository=repository, path=path)
            raise
        with _lock:
            if not _stopping.is_set():
                _ready.setdefault(repository, []).append(Spare(repository, path, base_commit, server))
                logger.info("spare worktree ready: %s (%s at %s)", path, repository, base_commit[:12])
                return
        workspace.remove_workspace(repository=repository, path=path)  # the worker stopped meanwhile
    finally:
        with _lock:
            _making[repository] = max(0, _making.get(repository, 1) - 1)


def _open_in_opencode(server, path):
    client = server.client(directory=str(path))  # shares the server's connection pool: not closed here
    model = str(client.config().get("model") or "")
    provider, _, model_id = model.partition("/")
    for warm_up in WARM_UP_PATHS:
        params = None
        if warm_up == "/experimental/tool":
            if not model_id:
                continue
            params = {"provider": provider, "model": model_id}
        elif warm_up == "/find/file":
            params = {"query": "README"}
        client.request("GET", warm_up, params=params)


def _remove(spare):
    servers.close_directory(spare.server, spare.path)
    workspace.remove_workspace(repository=spare.repository, path=spare.path)
