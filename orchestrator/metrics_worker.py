"""What a Celery worker contributes to metrics and logs, through Celery's signals (connected when
this module is imported, by OrchestratorConfig.ready):

- each job's outcome and run time (`orchestrator_celery_jobs_total`, `..._job_duration_seconds`);
- the job's id and the session it works on, in the log context (orchestrator.logs);
- its OpenCode servers, sampled from /proc every OPENCODE_SAMPLE_SECONDS by a thread started when
  the worker is ready: the servers are child processes of the worker, so their number and their
  replacements are read from the kernel without reaching into the execution engine; the directories
  they hold open come from the worker's own requests (orchestrator.opencode_directories);
- the event lag (orchestrator.event_lag), matched in the same thread;
- optionally (WORKER_METRICS_PORT) an HTTP endpoint serving this host's multi-process metrics, for
  deployments where the worker does not share PROMETHEUS_MULTIPROC_DIR with a web process.
"""

import logging
import os
import threading
import time
from pathlib import Path

from celery import signals
from django.conf import settings
from django.db import DatabaseError, connection

from orchestrator import event_lag, logs, metrics, opencode_directories

logger = logging.getLogger(__name__)

OPENCODE_SAMPLE_SECONDS = 5.0
OPENCODE_PROCESS_NAMES = ("opencode", ".opencode")
_started = {}  # Celery task id -> perf_counter at prerun
_context_tokens = {}  # Celery task id -> context variable tokens to reset at postrun
_sampler = {"thread": None, "stop": threading.Event()}


def _session_reference(session_id):
    """IND-000042 for id 42 (the same rule as CodingSession.reference, computed without a query)."""
    try:
        number = int(session_id)
    except (TypeError, ValueError):
        return ""
    return f"IND-{number:06d}"


@signals.task_prerun.connect
def job_started(task_id=None, task=None, args=None, kwargs=None, **_):
    _started[task_id] = time.perf_counter()
    arguments = dict(kwargs or {})
    session_id = arguments.get("session_id", args[0] if args and task.name == "sessions.execute_session" else None)
    tokens = [(logs.job_id_var, logs.job_id_var.set(task_id or ""))]
    if session_id is not None:
        tokens.append((logs.session_var, logs.session_var.set(_session_reference(session_id))))
    if arguments.get("task_id") is not None:
        tokens.append((logs.task_id_var, logs.task_id_var.set(str(arguments["task_id"]))))
    _context_tokens[task_id] = tokens


@signals.task_postrun.connect
def job_finished(task_id=None, task=None, state=None, **_):
    started = _started.pop(task_id, None)
    name = getattr(task, "name", "unknown")
    if started is not None:
        metrics.JOB_DURATION.labels(name=name).observe(time.perf_counter() - started)
    metrics.JOBS.labels(name=name, outcome=(state or "unknown").lower()).inc()
    for variable, token in reversed(_context_tokens.pop(task_id, [])):
        try:
            variable.reset(token)
        except ValueError:  # set in another context (a pool that switched threads): clear instead
            variable.set("")


@signals.task_revoked.connect
def job_revoked(request=None, **_):
    metrics.JOBS.labels(name=getattr(request, "task", None) or "unknown", outcome="revoked").inc()


@signals.task_rejected.connect
def job_rejected(message=None, **_):
    name = (getattr(message, "headers", None) or {}).get("task", "unknown")
    metrics.JOBS.labels(name=name, outcome="rejected").inc()


# --- OpenCode servers -------------------------------------------------------------------------


def opencode_children(parent_pid: int) -> list[int]:
    """PIDs of the OpenCode server processes started by `parent_pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == parent_pid and comm.startswith(OPENCODE_PROCESS_NAMES):
            found.append(int(entry.name))
    return sorted(found)


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (its sockets matched with the kernel's socket tables)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == TCP_LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


TCP_LISTEN = "0A"


def process_started_at(pid: int) -> float:
    """When process `pid` started, in seconds since the epoch: its age on the kernel's boot clock
    (start tick against /proc/uptime, both unaffected by wall-clock steps) taken from now."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    started_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))


class OpenCodeSampler:
    """Samples this worker's OpenCode servers into the gauges; counts a restart each time a server
    process appears after another one has been seen (the worker starts at most one at a time)."""

    def __init__(self, parent_pid: int):
        self.parent_pid = parent_pid
        self.seen = set()

    def sample(self):
        pids = opencode_children(self.parent_pid)
        new = [pid for pid in pids if pid not in self.seen]
        if self.seen and new:
            metrics.OPENCODE_RESTARTS.inc(len(new))
        self.seen.update(new)
        metrics.OPENCODE_SERVERS_UP.set(len(pids))
        live_servers = {port: process_started_at(pid) for pid in pids for port in listening_ports(pid)}
        metrics.OPENCODE_DIRECTORIES_OPEN.set(opencode_directories.open_directories(live_servers=live_servers))


def _sample_forever(sampler, stop):
    sample_once(sampler)
    while not stop.wait(OPENCODE_SAMPLE_SECONDS):
        sample_once(sampler)


def sample_once(sampler):
    try:
        sampler.sample()
    except (OSError, ValueError, IndexError) as error:  # /proc raced a process's end: next round
        logger.debug("OpenCode sample skipped: %s", error)
    try:
        event_lag.observe_stored()
    except DatabaseError as error:  # the database is away: the next round catches up
        logger.info("event lag not measured this round: %s", error)
    finally:
        connection.close()  # this thread sleeps between rounds: hand the connection back


def forget_dead_processes():
    """Remove the metric files of processes of this host that no longer run: live gauges must
    count live processes only (a worker killed with -9 never marks itself dead), and without this
    the folder grows by a few files per process ever started. Their counters go with them, which
    Prometheus reads as a counter reset (rate() and increase() handle it)."""
    for path in metrics.multiprocess_dir().glob("*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)


@signals.worker_ready.connect
def start_sampling(**_):
    forget_dead_processes()
    sampler = OpenCodeSampler(os.getpid())
    _sampler["stop"].clear()
    thread = threading.Thread(target=_sample_forever, args=(sampler, _sampler["stop"]),
                              name="opencode-metrics", daemon=True)
    thread.start()
    _sampler["thread"] = thread
    if settings.WORKER_METRICS_PORT:
        from prometheus_client import start_http_server

        start_http_server(settings.WORKER_METRICS_PORT, addr=settings.WORKER_METRICS_ADDRESS,
                          registry=metrics.registry(with_database=False))
        logger.info("worker metrics on %s:%s", settings.WORKER_METRICS_ADDRESS, settings.WORKER_METRICS_PORT)


@signals.worker_shutdown.connect
def stop_sampling(**_):
    from prometheus_client import multiprocess

    _sampler["stop"].set()
    multiprocess.mark_process_dead(os.getpid(), path=str(metrics.multiprocess_dir()))
