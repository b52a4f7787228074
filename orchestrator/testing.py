"""Helpers for tests and benchmarks that run real parts: waiting, a real worker."""

import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

from orchestrator.process import stop_processes

BASE_DIR = Path(settings.BASE_DIR)


def wait_until(predicate, *, timeout=30.0, interval=0.05, message="condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def database_url_for_subprocess():
    """The URL of the database the tests are using (the test database), for a child process."""
    current = connection.settings_dict
    if current["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{current['NAME']}"
    user = current.get("USER") or ""
    password = current.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = current.get("HOST") or "127.0.0.1"
    port = current.get("PORT") or "5432"
    return f"postgresql://{auth}{host}:{port}/{current['NAME']}"


def subprocess_env(**extra):
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url_for_subprocess()
    env["ORCHESTRATOR_VAR_DIR"] = str(settings.VAR_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({key: str(value) for key, value in extra.items()})
    return env


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_worker(*, concurrency=4, queues=None, env=None, log_path=None, plain=False):
    """Start a real Celery worker process; stop it (by PID) on exit. With `plain`, the command
    every Celery user types (`celery -A orchestrator worker`): queues, pool and concurrency come
    from the app's configuration.

    Spare worktrees are off unless `env` sets WORKSPACE_SPARES: a test's sessions then run in
    <WORKSPACE_ROOT>/<reference>, and no background git or OpenCode work outlives the test.
    """
    queues = queues or settings.WORKER_QUEUES
    env = {"WORKSPACE_SPARES": 0, **(env or {})}
    log_path = Path(log_path or Path(settings.VAR_DIR) / f"worker-{os.getpid()}-{time.time_ns()}.log")
    log = open(log_path, "wb")
    command = [sys.executable, "-m", "celery", "-A", "orchestrator", "worker"]
    if not plain:
        command += ["--pool", "threads", "--concurrency", str(concurrency), "-Q", ",".join(queues)]
    command += [
        "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        "--hostname", f"test-{os.getpid()}-{time.time_ns()}@%h",
    ]
    process = subprocess.Popen(
        command, cwd=BASE_DIR, env=subprocess_env(**env), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: b"ready." in log_path.read_bytes() or process.poll() is not None,
            timeout=60, message="the Celery worker to be ready",
        )
        if process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log_path.read_text(errors='replace')[-3000:]}")
        process.log_path = log_path
        yield process
    finally:
        stop_process(process)
        log.close()


_JOB_LINE = re.compile(rb"Task [\w.]+\[([0-9a-f-]{36})\] (\w+)")


def wait_for_idle_worker(process, *, timeout=60, quiet_seconds=0.5):
    """Wait until every job the worker received has ended, and none arrived for `quiet_seconds`.

    Read from the worker's own log ("Task name[id] received" / "... succeeded in ..."), so it
    needs no broadcast support from the broker. Tests call it before the database is flushed:
    a job still writing while the tables are truncated deadlocks PostgreSQL.
    """
    def busy_jobs():
        last_word = {}  # in log order: a retried job is received again under the same id
        for job_id, word in _JOB_LINE.findall(process.log_path.read_bytes()):
            last_word[job_id] = word
        return {job_id.decode() for job_id, word in last_word.items() if word == b"received"}

    quiet = {"since": None}

    def idle():
        if process.poll() is not None:
            return True  # a stopped worker writes nothing
        if busy_jobs():
            quiet["since"] = None
            return False
        quiet["since"] = quiet["since"] or time.monotonic()
        return time.monotonic() - quiet["since"] >= quiet_seconds

    wait_until(idle, timeout=timeout, interval=0.05, message="the worker to finish its jobs")


def stop_process(process, *, timeout=15):
    """Stop a child process and its process group: TERM, then KILL after `timeout`."""
    stop_processes([process], grace_seconds=timeout)



def make_git_repository(path, files=None):
    """A small git repository with one commit, for sessions to work on."""
    from sessions.execution.workspace import init_repository

    return init_repository(path, files or {"README.md": "demo repository\n"})


def answered_directives(llm, keys):
    """The directives the scripted LLM answered in full for these conversations: for each request
    it abandoned (the client hung up), the earliest matching request is left out."""
    abandoned = [(entry["key"], entry["step"]) for entry in llm.abandoned]
    answered = []
    for entry in llm.requests:
        if entry["key"] not in keys or entry["kind"] == "title":
            continue
        if (entry["key"], entry["step"]) in abandoned:
            abandoned.remove((entry["key"], entry["step"]))
            continue
        answered.append(entry["directive"])
    return answered


def api_token(user):
    """A newly issued API token for `user`, as `.key` (the token itself; only its digest is
    stored) and `.row` (the ApiToken)."""
    from types import SimpleNamespace

    from orchestrator.tokens import token_issue

    row, raw = token_issue(user=user)
    return SimpleNamespace(key=raw, row=row)


def run_socket_scenario(scenario):
    """Run `scenario` (an async function driving WebsocketCommunicators) to its end, then leave
    the channel layer and the database connections as a next test needs them.

    Broadcasts an earlier test handed over are sent first, or they would reach this test's
    sockets. The in-process layers keep groups and pollers per process: they are flushed after
    the scenario. A Redis layer is left alone (its flush empties the whole shared prefix). The ORM
    calls ran in asgiref's thread-sensitive worker thread: its connection is closed there, so the
    test database can be dropped at the end."""
    from asgiref.sync import async_to_sync, sync_to_async
    from channels.layers import InMemoryChannelLayer, get_channel_layer
    from django.db import connections

    from orchestrator import broadcaster

    broadcaster.wait_for_broadcasts()

    async def wrapped():
        try:
            return await scenario()
        finally:
            layer = get_channel_layer()
            if isinstance(layer, InMemoryChannelLayer):
                await layer.flush()
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    return async_to_sync(wrapped)()


def record_event(session, type, **payload):
    """One session event, written through the service (published after commit)."""
    from sessions import services

    return services.session_record_event(session=session, type=type, payload=payload)


def require_binary(name: str, hint: str = "") -> str:
    """The path of `name` on PATH. Absent: the test skips with the reason, or fails when
    ORCHESTRATOR_REQUIRE_SERVICES=1 (.ci/run's services leg), so CI never passes on a skip."""
    import os
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        reason = f"needs {name} on PATH" + (f" ({hint})" if hint else "")
        if os.environ.get("ORCHESTRATOR_REQUIRE_SERVICES") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path
