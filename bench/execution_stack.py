"""The whole orchestrator as real processes, for the execution benchmarks.

`running_stack()` brings up, in order, and takes down in reverse (by PID, also on errors and on
SIGTERM/SIGINT):

- a throwaway PostgreSQL database (bench.common.bench_database: created, migrated, dropped);
- the scripted LLM, in a process of its own (ScriptedLLMProcess: its request log, with a `time`
  per request, is a JSON lines file read here);
- the web server: `python -m daphne -b 127.0.0.1 -p <free port> orchestrator.asgi:application`;
- one Celery worker (threads pool) told the LLM's URL through OPENCODE_SCRIPTED_LLM_URL; it starts
  its own OpenCode server on its first session (that start is excluded by the caller's warm-up);
- an operator user with a DRF token, the default agent roster when it is missing, and copies of
  AGENT-IMPLEMENTER until code-writing agents have room for the benchmark's concurrency.

The stack runs with DEBUG off (as in production: no query log, no browsable API renderer).
Everything on disk lives under ORCHESTRATOR_VAR_DIR; its workspaces, repositories and OpenCode
state are cleared at the start (session references restart at IND-000001 in a fresh database, and
a leftover worktree of that name would be reopened) and at the end unless `keep` is set.
"""

import bisect
import json
import os
import re
import secrets
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, bench_database, setup_django

TERMINAL = frozenset({"completed", "partially_completed", "failed", "timeout", "stopped", "cancelled", "orphaned"})


def production_like_environment():
    """DEBUG off for this process and every child (settings read the environment at import)."""
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_urlsafe(32))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # One bench user drives every session: no write throttle, no cap on its open sessions.
    os.environ.setdefault("API_THROTTLE_WRITE", "")
    os.environ.setdefault("SESSION_LIMIT_PER_USER", "0")


@dataclass
class Stack:
    api_url: str
    ws_url: str
    token: str
    llm: object
    worker: subprocess.Popen
    web: subprocess.Popen
    var_dir: Path
    database_url: str
    added_agents: list

    def repository(self, name=None):
        """A fresh git repository under the first allowed repository root, of its own: its README
        names it, so its first commit, which OpenCode takes for the project's id, is unique
        (see bench.opencode_direct.make_repository)."""
        from django.conf import settings

        from orchestrator.testing import make_git_repository

        name = name or f"repo-{uuid.uuid4().hex[:8]}"
        return make_git_repository(settings.REPOSITORY_ROOTS[0] / name, {"README.md": f"demo repository {name}\n"})

    def worker_opencode_pid(self):
        from django.conf import settings

        found = opencode_servers_in(Path(settings.WORKSPACE_ROOT))
        return found[0] if found else None

    def opencode_stores(self):
        """The SQLite stores of the OpenCode servers the worker started (a server retires after
        OPENCODE_SERVER_MAX_DIRECTORIES worktrees; its state folder is <host>-<pid>-<time>)."""
        return sorted((self.var_dir / "opencode-state").glob(f"*-{self.worker.pid}-*/data/opencode/opencode.db"))


def _signal_to_exit(signum, frame):
    raise SystemExit(128 + signum)


def _clear_run_folders(var_dir):
    for name in ("workspaces", "repos", "opencode-state"):
        shutil.rmtree(var_dir / name, ignore_errors=True)


@contextmanager
def _web_server(log_path):
    import httpx

    from orchestrator.testing import free_port, stop_process, subprocess_env, wait_until

    port = free_port()
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "orchestrator.asgi:application"],
        cwd=ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answering():
        if process.poll() is not None:
            return True
        try:
            return httpx.get(url + "/api/v1/", timeout=1.0).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_until(answering, timeout=60, interval=0.1, message="the web server to answer")
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited early:\n{Path(log_path).read_text(errors='replace')[-3000:]}")
        yield process, url
    finally:
        stop_process(process)
        log.close()


class ScriptedLLMProcess:
    """The scripted LLM in a process of its own (`python -m sessions.opencode.scripted_llm`), its
    request log read from the JSON lines file it appends to.

    In the bench process it shared the GIL with the clients: the orchestrator side's 20 WebSocket
    clients then delayed the LLM's answers, which are on OpenCode's path, and the direct side's
    single event reader did not (an LLM is a remote service for both). Same interface as
    ScriptedLLM for the bench: base_url, requests_for(key), pid, stop()."""

    def __init__(self, log_path, output_path):
        from orchestrator.testing import subprocess_env, wait_until

        self.log_path, output_path = Path(log_path), Path(output_path)
        self.log_path.unlink(missing_ok=True)
        self._entries, self._offset = [], 0
        # Jobs of a direct batch ask from 20 threads at once: two reading the same new lines would add them twice.
        self._read_lock = threading.Lock()
        self._output = output_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sessions.opencode.scripted_llm", "--port", "0", "--log", str(self.log_path)],
            cwd=ROOT, env=subprocess_env(), stdout=self._output, stderr=subprocess.STDOUT, start_new_session=True,
        )

        def listening():  # its first line: "scripted llm listening on http://127.0.0.1:<port>"
            return self.process.poll() is not None or b"listening on " in output_path.read_bytes()

        try:
            wait_until(listening, timeout=30, interval=0.05, message="the scripted LLM to listen")
            if self.process.poll() is not None:
                raise RuntimeError(f"the scripted LLM exited: {output_path.read_text(errors='replace')[-2000:]}")
        except BaseException:
            self.stop()
            raise
        self.url = output_path.read_text().split("listening on ", 1)[1].split()[0]
        self.base_url = self.url + "/v1"
        self.pid = self.process.pid

    def requests_for(self, key):
        with self._read_lock:
            if self.log_path.exists():
                with self.log_path.open("rb") as log:
                    log.seek(self._offset)
                    data = log.read()
                complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
                self._offset += len(complete)
                self._entries += [json.loads(line) for line in complete.splitlines() if line.strip()]
            return [entry for entry in self._entries if entry["key"] == key]

    def stop(self):
        from orchestrator.testing import stop_process

        stop_process(self.process)
        self._output.close()


def opencode_servers_in(workdir):
    """PIDs of `opencode serve` processes whose working folder is `workdir` (the worker's server
    runs in WORKSPACE_ROOT; one left after its worker had to be killed is stopped by PID)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if len(cmdline) > 1 and cmdline[0].endswith(b"opencode") and cmdline[1] == b"serve" and cwd == str(workdir):
            pids.append(int(entry.name))
    return pids


def _operator_token():
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from orchestrator.roles import OPERATORS, ensure_role_groups
    from orchestrator.tokens import token_issue

    ensure_role_groups()
    user = get_user_model().objects.create_user(username=f"bench-operator-{uuid.uuid4().hex[:6]}", password=None)
    user.groups.add(Group.objects.get(name=OPERATORS))
    return token_issue(user=user)[1]


def _ensure_roster(concurrency):
    """The default roster, plus copies of AGENT-IMPLEMENTER (named AGENT-BENCH-IMPLEMENTER-n) until the
    agents able to take an execution session's task (code_generation) have room for `concurrency`
    sessions at once: the default roster has room for 8 (IMPLEMENTER 5, GENERALIST 3), and a
    session whose task finds no agent fails. Returns the names of the agents added."""
    from agents.models import Agent
    from agents.roster import DEFAULT_ROSTER
    from agents.services import agent_register

    for entry in DEFAULT_ROSTER:
        if not Agent.objects.filter(name=entry["name"]).exists():
            agent_register(**entry)
    capacity = sum(agent.max_concurrent_tasks for agent in Agent.objects.all()
                   if "code_generation" in (agent.capabilities or []))
    implementer = next(entry for entry in DEFAULT_ROSTER if entry["name"] == "AGENT-IMPLEMENTER")
    added = []
    while capacity < concurrency:
        name = f"AGENT-BENCH-IMPLEMENTER-{len(added) + 1}"
        agent = agent_register(**{**implementer, "name": name})
        capacity += agent.max_concurrent_tasks
        added.append(name)
    return added


@contextmanager
def running_stack(*, worker_concurrency=24, agent_capacity=20, keep=False, worker_env=None):
    """Yield a `Stack`; everything started is stopped by PID on the way out."""
    production_like_environment()
    setup_django()
    from django.conf import settings

    from orchestrator.testing import database_url_for_subprocess, running_worker

    previous = {sig: signal.signal(sig, _signal_to_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    var_dir = Path(settings.VAR_DIR)
    _clear_run_folders(var_dir)
    Path(settings.REPOSITORY_ROOTS[0]).mkdir(parents=True, exist_ok=True)
    logs = var_dir / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            stack.enter_context(bench_database())
            if settings.REDIS_URL:
                import redis

                # The bench owns this Redis database: jobs of an earlier interrupted run must not
                # reach the new worker.
                redis.Redis.from_url(settings.REDIS_URL).flushdb()
            token = _operator_token()
            added_agents = _ensure_roster(agent_capacity)
            llm = ScriptedLLMProcess(logs / "llm-requests.jsonl", logs / "llm.log")
            stack.callback(llm.stop)
            web, url = stack.enter_context(_web_server(logs / "web.log"))
            workdir = Path(settings.WORKSPACE_ROOT)

            def stop_orphans():
                for pid in opencode_servers_in(workdir):
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

            # Registered before the worker is entered, so it runs after the worker has stopped.
            stack.callback(stop_orphans)
            worker = stack.enter_context(
                running_worker(
                    concurrency=worker_concurrency,
                    env={
                        "OPENCODE_SCRIPTED_LLM_URL": llm.base_url,
                        "WORKSPACE_SPARES": settings.WORKSPACE_SPARES,
                        **(worker_env or {}),
                    },
                    log_path=logs / "worker.log",
                )
            )
            yield Stack(
                api_url=url, ws_url=url.replace("http://", "ws://"), token=token, llm=llm,
                worker=worker, web=web, var_dir=var_dir, database_url=database_url_for_subprocess(),
                added_agents=added_agents,
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep:
            _clear_run_folders(var_dir)


def _read_stores(database_paths, query):
    """Rows of `query` from each OpenCode SQLite store, read-only (the servers may still run)."""
    for database_path in database_paths or ():
        connection = sqlite3.connect(f"file:{database_path}?mode=ro", uri=True, timeout=10)
        try:
            yield from connection.execute(query)
        finally:
            connection.close()


def opencode_times(database_paths, *, call_ids=(), message_ids=()):
    """OpenCode's own times (epoch seconds) from its SQLite stores: {call_id: tool end} and
    {message_id: assistant message completed}."""
    tools, messages = {}, {}
    wanted_calls, wanted_messages = set(call_ids), set(message_ids)
    for call_id, end in _read_stores(database_paths, (
        "SELECT json_extract(data, '$.callID'), json_extract(data, '$.state.time.end') FROM part "
        "WHERE json_extract(data, '$.type') = 'tool'"
    )):
        if call_id in wanted_calls and end is not None:
            tools[call_id] = end / 1000
    for message_id, completed in _read_stores(database_paths, (
        "SELECT id, json_extract(data, '$.time.completed') FROM message "
        "WHERE json_extract(data, '$.role') = 'assistant'"
    )):
        if message_id in wanted_messages and completed is not None:
            messages[message_id] = completed / 1000
    return tools, messages


def opencode_session_created(database_paths, session_ids):
    """{OpenCode session id: its creation time (epoch seconds)} from the servers' stores."""
    wanted = set(session_ids)
    return {
        session_id: created / 1000
        for session_id, created in _read_stores(database_paths, "SELECT id, time_created FROM session")
        if session_id in wanted
    }


def cpu_seconds(pid, *, children=True):
    """CPU time of a process and its reaped children (git, tool commands), in seconds; with
    `children=False` the process's own only."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command: state is field 3; utime, stime, cutime, cstime are fields 14-17.
    return sum(int(value) for value in fields[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid):
    """CPU time of a process, its reaped children and, recursively, its live ones. A child that ends
    (a retired OpenCode server, say) moves from live to reaped without changing this sum."""
    total = cpu_seconds(pid)
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            total += sum(tree_cpu_seconds(int(child)) for child in listing.read_text().split())
        except OSError:
            continue
    return total


def busy_cores(window):
    """How many cores the whole machine kept busy over the next `window` seconds (/proc/stat)."""
    def read():
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])
    busy_before, total_before = read()
    time.sleep(window)
    busy_after, total_after = read()
    return os.cpu_count() * (busy_after - busy_before) / max(1, total_after - total_before)


def wait_for_quiet(*, below=0.25, window=0.5, timeout=30.0):
    """Wait until the machine's load falls below `below` cores (what the last batch left running:
    the worker's end-of-run work, OpenCode closing directories, PostgreSQL's autovacuum), so each
    timed batch starts on a quiet machine. Returns the seconds waited."""
    started = time.monotonic()
    while busy_cores(window) >= below and time.monotonic() - started < timeout:
        pass
    return time.monotonic() - started


def thread_schedule(pid, tid=None):
    """(seconds on a CPU, seconds runnable but waiting for one) of a thread (the main one by default)."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/task/{tid or pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def process_size(pid):
    """(memory mappings, resident MB) of a process, or (None, None)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_bytes().count(b"\n")
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return None, None
    return maps, rss_kb // 1024


def service_cpu_seconds():
    """CPU seconds of the local PostgreSQL (its postmaster's tree: backends that ended are in its
    reaped children's time) and Redis servers, by name; 0 for one not found (or not readable)."""
    found = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
            parent = Path(comm.parent, "stat").read_text().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        found.setdefault(name, []).append((int(comm.parent.name), int(parent)))
    postgres = found.get("postgres", [])
    postgres_pids = {pid for pid, _ in postgres}
    postmasters = [pid for pid, parent in postgres if parent not in postgres_pids]
    return {
        "PostgreSQL": sum(tree_cpu_seconds(pid) for pid in postmasters),
        "Redis": sum(cpu_seconds(pid) for pid, _ in found.get("redis-server", [])),
    }


@contextmanager
def profiled(py_spy, pid, output):
    """Sample `pid` with py-spy while the block runs: only threads holding the GIL (Python CPU time),
    folded stacks to `output`; no-op without py-spy."""
    if not py_spy or pid is None:
        yield None
        return
    process = subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", "50", "--nonblocking", "--gil", "--format", "raw",
         "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        yield output
    finally:
        # py-spy writes its output when interrupted.
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def bystander(enabled, server_url, opencode_pid, output, *, connect_timeout=10.0):
    """Read the OpenCode server's global event stream from a process of its own while the block
    runs (bench.event_bystander), yielding a dict filled at the end: {(kind, key): epoch seconds
    read}. No-op (an empty dict) when not enabled, or when the server is not the one of `server_url`."""
    seen = {}
    password = _environ(opencode_pid).get("OPENCODE_SERVER_PASSWORD") if enabled and opencode_pid else None
    if not password or not server_url:
        yield seen
        return
    Path(output).unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.event_bystander", server_url, password, str(output)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # Its "connected" line, or nothing by the deadline (it failed or hangs): said, not hidden.
        readable, _, _ = select.select([process.stdout], [], [], connect_timeout)
        if not readable or process.stdout.readline().strip() != b"connected":
            print(f"  bystander: not connected to {server_url} within {connect_timeout:.0f} s; "
                  "this batch has no split")
        yield seen
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if Path(output).exists():
            for raw in Path(output).read_text().splitlines():
                entry = json.loads(raw)
                if entry.get("key"):
                    seen.setdefault((entry["kind"], entry["key"]), entry["received"])


def _environ(pid):
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def folded_summary(paths, *, top=20, own=("sessions/", "orchestrator/", "agents/", "tasks/", "contexts/", "bench/")):
    """(samples, [(inclusive share, frame)] of the project's own frames, [(share, leaf frame)])."""
    inclusive, leaves, total = {}, {}, 0
    for path in paths:
        if not Path(path).exists():
            continue
        for raw in Path(path).read_text(errors="replace").splitlines():
            stack, _, count = raw.rpartition(" ")
            if not count.isdigit():
                continue
            count = int(count)
            total += count
            frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")
                      if frame and not frame.startswith(("process ", "thread "))]
            if frames:
                leaves[frames[-1]] = leaves.get(frames[-1], 0) + count
            for frame in set(frames):
                if any(f"/{part}" in frame or f"({part}" in frame for part in own):
                    inclusive[frame] = inclusive.get(frame, 0) + count
    def ranked(table):
        return [(count / total, frame) for frame, count in sorted(table.items(), key=lambda item: -item[1])[:top]]
    return total, (ranked(inclusive) if total else []), (ranked(leaves) if total else [])


@contextmanager
def scheduler_traced(perf, output):
    """Record the kernel's scheduler events on every CPU (`perf sched record -a`) while the block runs;
    no-op without perf. Read with scheduler_waits."""
    if not perf:
        yield None
        return
    from orchestrator.testing import wait_until

    Path(output).unlink(missing_ok=True)
    process = subprocess.Popen([perf, "sched", "record", "-a", "-o", str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # perf writes its file's header once its buffers are open: the batch starts after that.
        wait_until(lambda: process.poll() is not None or (Path(output).exists() and Path(output).stat().st_size > 0),
                   timeout=10, interval=0.02, message="perf sched record to start")
        if process.poll() is not None:
            raise RuntimeError(
                f"perf sched record exited with {process.returncode} (needs root or perf_event_paranoid <= 0)"
            )
        yield output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # perf writes its file when interrupted
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


_TIMEHIST = re.compile(r"^\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:/(\d+))?\]\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s+(\S+)")


def scheduler_waits(perf, data, main_pid, names):
    """(seconds OpenCode's main thread was runnable but waiting for a CPU, {label: CPU seconds the
    CPUs spent on it meanwhile}) from a scheduler trace; `names` labels process ids (pid -> label),
    other processes go by command name. The main thread waits after a wakeup (perf's "sch delay")
    and after being preempted (switched out runnable, state R: all the time until it runs again);
    what ran on each CPU is read from the switches' run times."""
    output = subprocess.run([perf, "sched", "timehist", "--state", "-i", str(data)],
                            capture_output=True, text=True, timeout=600).stdout
    spans, waits, previous = {}, [], None
    for raw in output.splitlines():
        match = _TIMEHIST.match(raw)
        if not match:
            continue
        end, cpu, comm, tid, pid, delay_ms, run_ms, state = match.groups()
        end, tid, pid = float(end), int(tid), int(pid or tid)
        start = end - float(run_ms) / 1000
        if pid == main_pid:
            label = "OpenCode main thread" if tid == pid else "OpenCode's other threads"
        else:
            label = names.get(pid) or comm.split("-")[0].split(":")[0].split("/")[0]
        spans.setdefault(int(cpu), []).append((start, end, label))
        if tid == main_pid:
            if previous is not None and previous[1] == "R":
                waits.append((previous[0], start))
            elif float(delay_ms) > 0:
                waits.append((start - float(delay_ms) / 1000, start))
            previous = (end, state)
    occupancy = {}
    for cpu_spans in spans.values():
        cpu_spans.sort()
        starts = [span[0] for span in cpu_spans]
        for begin, finish in waits:
            index = max(0, bisect.bisect_left(starts, begin) - 64)  # spans are short; look back a little
            for start, end, label in cpu_spans[index:]:
                if start >= finish:
                    break
                overlap = min(end, finish) - max(start, begin)
                if overlap > 0:
                    occupancy[label] = occupancy.get(label, 0.0) + overlap
    return sum(finish - begin for begin, finish in waits), occupancy
