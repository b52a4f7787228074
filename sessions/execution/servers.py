"""The OpenCode server of this worker process, started on first use.

One server per worker process serves every session the process runs (each
call names its worktree with ?directory=): a server costs ~0.5 GB and is
CPU-bound, so one per session would not scale. With OPENCODE_URL set, an
existing server is used instead. When no LLM provider is configured the
server runs on the scripted demo model, started in this process, unless
OPENCODE_SCRIPTED_LLM_URL names one already running (tests do that to read
its request log).

Servers are started and restarted from one keeper thread that lives as long
as the process: the server asks Linux to be stopped when the thread that
started it dies (see sessions.opencode.server.DIE_WITH_PARENT), so a worker
killed with -9 leaves no server behind, and a short-lived pool thread must
never be that parent.
"""

import logging
import os
import queue
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from django.conf import settings

from sessions.execution.streams import ServerEvents
from sessions.opencode.errors import OpenCodeError
from sessions.opencode.scripted_llm import ScriptedLLM
from sessions.opencode.server import ExistingServer, OpenCodeServer

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_demo_llm = None
_keeper_calls = None


def _keeper():
    while True:
        call, future = _keeper_calls.get()
        try:
            future.set_result(call())
        except BaseException as error:  # handed back to the caller's thread
            future.set_exception(error)


def _in_keeper(call):
    global _keeper_calls
    if _keeper_calls is None:
        _keeper_calls = queue.Queue()
        threading.Thread(target=_keeper, name="opencode-keeper", daemon=True).start()
    future = Future()
    _keeper_calls.put((call, future))
    return future.result()


def _scripted_llm_url():
    global _demo_llm
    if settings.OPENCODE_SCRIPTED_LLM_URL:
        return settings.OPENCODE_SCRIPTED_LLM_URL
    if not settings.OPENCODE_DEMO_MODEL:
        return None
    if _demo_llm is None:
        _demo_llm = ScriptedLLM(log_path=Path(settings.VAR_DIR) / "demo-llm.jsonl")
        _demo_llm.start()
        logger.info("demo model (scripted LLM) listening on %s", _demo_llm.base_url)
    return _demo_llm.base_url


class _Served:
    """A managed server with the worktrees it has served, the runs using it now and its shared
    event stream (made by the first task that asks, see events_of)."""

    def __init__(self, server):
        self.server = server
        self.directories = set()
        self.active = 0
        self.events = None
        self.maps_checked_at = 0.0
        self.maps_full = False

    def stop(self):
        if self.events is not None:
            self.events.stop()
            self.events = None
        self.server.stop()


_current = None
_retiring = []


def _new_server():
    if settings.OPENCODE_URL:
        return ExistingServer()
    state = Path(settings.VAR_DIR) / "opencode-state" / f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    return OpenCodeServer(workdir=settings.WORKSPACE_ROOT, state_dir=state, scripted_llm_url=_scripted_llm_url(),
                          snapshots=settings.OPENCODE_SNAPSHOTS)


def acquire_server(*, directory):
    """The server a run on `directory` should use, started or restarted as needed; pair with release_server.

    OpenCode keeps an inotify instance for every directory it has open, and Linux allows 128 per
    user by default: past that a server stops making progress. Runs close their worktree when they
    end (close_directory); as a safety net against what closing may not release, a managed server
    serves at most OPENCODE_SERVER_MAX_DIRECTORIES worktrees, and only until its memory mappings near the
    kernel's limit (_maps_near_limit); then new runs get a fresh server and
    the old one is stopped when its last run releases it. A directory served before goes back to its server
    while that server lives (a paused task continues in its own OpenCode session).
    """
    global _current
    _cancel_close(directory)  # a worktree kept open after its last run (release_server) is used again
    with _lock:
        served = next((entry for entry in [_current, *_retiring] if entry and directory in entry.directories), None)
        if served is None:
            full = _current is not None and (
                len(_current.directories) >= settings.OPENCODE_SERVER_MAX_DIRECTORIES or _maps_near_limit(_current))
            if _current is None or (full and not settings.OPENCODE_URL):
                if _current is not None:
                    _retiring.append(_current)
                    _stop_if_idle(_current)
                _current = _Served(_new_server())
            served = _current
        served.directories.add(directory)
        served.active += 1
    try:
        _in_keeper(served.server.ensure_running if served.server.url else served.server.start)
    except BaseException:
        release_server(served.server)
        raise
    return served.server


MAPS_CHECK_SECONDS = 2.0


def _maps_near_limit(entry):
    """Whether the server's memory mappings reached OPENCODE_SERVER_MAX_MAP_SHARE of vm.max_map_count.

    OpenCode's mappings grow with the directories it opens (most in bursts of new directories), and
    at the limit it hangs for good (its allocator retries a failing madvise() at 100 % CPU). Read at
    most every MAPS_CHECK_SECONDS: /proc/<pid>/maps of a big server takes ~20 ms to read."""
    now = time.monotonic()
    if now - entry.maps_checked_at >= MAPS_CHECK_SECONDS:
        entry.maps_checked_at = now
        maps, limit = entry.server.memory_maps(), _max_map_count()
        entry.maps_full = bool(maps and limit and maps >= settings.OPENCODE_SERVER_MAX_MAP_SHARE * limit)
        if entry.maps_full:
            logger.warning("OpenCode server %s has %s memory mappings (vm.max_map_count %s): retiring it",
                           entry.server.pid, maps, limit)
    return entry.maps_full


def _max_map_count():
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None


# Threads for OpenCode calls a task thread starts and collects later (a task's session create, made
# while the task is routed): created on first use, so importing the engine starts no thread.
CALL_POOL_SIZE = 32
_call_pool = None


def call_pool():
    """The process's pool for OpenCode calls made beside a task thread's own work."""
    global _call_pool
    with _lock:
        if _call_pool is None:
            _call_pool = ThreadPoolExecutor(max_workers=CALL_POOL_SIZE, thread_name_prefix="opencode-call")
        return _call_pool


def events_of(server):
    """The shared event stream (streams.ServerEvents) of a server acquired with acquire_server;
    a new one when it has none yet or its last one failed for good."""
    with _lock:
        entry = next((entry for entry in [_current, *_retiring] if entry is not None and entry.server is server), None)
        if entry is None:
            raise RuntimeError("events_of() needs a server from acquire_server()")
        if entry.events is None or not entry.events.alive:
            entry.events = ServerEvents(server)
        return entry.events


def is_current(server):
    """Whether `server` is the one new runs get (not replaced, not retiring)."""
    with _lock:
        return _current is not None and _current.server is server


def release_server(server, *, close=None, keep_open=False):
    """Pair of acquire_server. `close`: a worktree the caller is done with, closed in OpenCode
    first (see close_directory); with `keep_open`, KEEP_OPEN_SECONDS later, unless a run acquires
    the server for it again before (a session paused for plan review, approved soon after)."""
    if close is not None and keep_open:
        _close_later(server, str(close))
    elif close is not None:
        close_directory(server, close)
    with _lock:
        for entry in [_current, *_retiring]:
            if entry is not None and entry.server is server:
                entry.active = max(0, entry.active - 1)
                if entry in _retiring:
                    _stop_if_idle(entry)
                return


def close_directory(server, directory):
    """Close OpenCode's instance of a worktree nothing runs in any more (end of a run, a spare not
    used). An open instance keeps a file watcher (an inotify instance) and caches for the server's
    life, and costs CPU even idle: measured on a server with 40 directories served and left open,
    1 s of CPU per second while nothing ran, and its third wave of 20 sessions timed out; with each
    directory closed after its job, three waves ran at an even pace and idle cost ~10 ms/s. A later
    run in the same worktree (a resumed or retried session) opens it again (~1 s of OpenCode's time).
    Best effort: a server that is gone has nothing to close."""
    try:
        server.client(directory=str(directory)).dispose_instance()
    except (OpenCodeError, RuntimeError) as error:  # RuntimeError: its client was closed by a stop meanwhile
        logger.info("OpenCode instance of %s not closed: %s", directory, error)


# A session paused for plan review is usually approved within minutes by the person reading the plan.
# Its worktree stays open in OpenCode meanwhile, at most this long, so the approved plan's first
# prompt does not wait for OpenCode to open the directory again (1.5-3 s measured with the scripted
# model; docs/decisions/0231). An open directory costs the idle server ~5 ms of CPU a second.
KEEP_OPEN_SECONDS = 600.0
_closes_lock = threading.Lock()
_closes_due = {}  # directory -> the threading.Timer that closes it


def _close_later(server, directory):
    def close():
        # Under the lock: a run acquiring the directory meanwhile waits, then finds it closed (and
        # OpenCode opens it again), never closed under its feet.
        with _closes_lock:
            if _closes_due.get(directory) is not timer:
                return
            del _closes_due[directory]
            close_directory(server, directory)

    timer = threading.Timer(KEEP_OPEN_SECONDS, close)
    timer.daemon = True
    with _closes_lock:
        previous = _closes_due.pop(directory, None)
        _closes_due[directory] = timer
    if previous is not None:
        previous.cancel()
    timer.start()


def pending_closes() -> set[str]:
    """The directories kept open whose close is still due (release_server(keep_open=True))."""
    with _closes_lock:
        return set(_closes_due)


def _cancel_close(directory):
    with _closes_lock:
        timer = _closes_due.pop(str(directory), None)
    if timer is not None:
        timer.cancel()


def _stop_if_idle(entry):
    if entry.active == 0 and entry in _retiring:
        _retiring.remove(entry)
        entry.stop()


def shutdown():
    """Stop what this process started (called when the worker shuts down)."""
    global _current, _demo_llm
    with _closes_lock:  # the servers stop: nothing is left to close
        timers = list(_closes_due.values())
        _closes_due.clear()
    for timer in timers:
        timer.cancel()
    with _lock:
        for entry in [_current, *_retiring]:
            if entry is not None:
                entry.stop()
        _current = None
        _retiring.clear()
        if _demo_llm is not None:
            _demo_llm.stop()
            _demo_llm = None
