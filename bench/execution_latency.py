"""Execution benchmarks (issue 7): overhead against OpenCode alone, dispatch latency, event latency.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench_exec REDIS_URL=redis://127.0.0.1:6379/13 \\
    ORCHESTRATOR_VAR_DIR=/work/main/var/bench-exec .venv/bin/python -m bench.execution_latency

Options: --rounds 3 (single-job rounds per side), --batches 5 (concurrent rounds per side),
--concurrency 20, --dispatch 30 (sequential sessions for dispatch and event latency, on one repository),
--gap 6 (seconds between their starts), --keep,
--py-spy PATH (sample the worker and daphne during the concurrent batches and print where the
time goes; py-spy is not a project dependency: `pip install --target /tmp/pyspy py-spy`),
--perf PATH (trace the scheduler during every concurrent batch, `perf sched record -a`, and print
what the CPUs ran while OpenCode's main thread waited for one; needs root or perf_event_paranoid <= 0),
--bystander (a second reader of the worker's OpenCode event stream, bench.event_bystander, during the
orchestrator's concurrent batches: splits their event latency into OpenCode's publishing and the
worker's handling; it adds a subscriber to OpenCode, so its overhead figures are not the headline).

Everything runs as real processes started here and stopped by PID at the end (bench.execution_stack):
a throwaway PostgreSQL database, the scripted LLM (in a process of its own, used by both sides: in
this one it shared the GIL with the clients, and the orchestrator side's WebSocket clients delayed
its answers; its request log has the time of every request), daphne (HTTP + WebSocket), one Celery
worker (threads pool, concurrency 24) that starts its own OpenCode server, Redis as broker and
channel layer. DEBUG is off.

The job, on both sides: `@@write out.txt ...`, `@@bash cat out.txt`, `@@final ...` (three LLM
steps, each answered at once by the scripted LLM), in a fresh git worktree of its own repository
(as the project's 20-session test does). Both sides close each job's directory in OpenCode when
the job is done (`POST /instance/dispose`, outside the timed span; the worker does it at the end of
every run): left open, directories pile up in the server (a file watcher each, and CPU: with 40 open,
a full core while idle) and each wave of 20 ran slower than the last until one timed out.

1. Overhead. Direct: bench.opencode_direct's fresh-worktree mode (its repository and worktree
   helpers), on an OpenCode server of this process configured like the worker's: create an
   OpenCode session, prompt, wait for `session.idle` (worktree made before timing). The direct
   server lives through the run like the worker's, and is restarted (and warmed up, outside the
   timed span) only before a batch that could take it near vm.max_map_count (see direct_batch in
   measure()). Every concurrent batch, on either side, starts once the machine is
   quiet (under 0.25 busy cores: what the previous batch left running has ended; wait_for_quiet),
   and OpenCode's main thread is followed through it (/proc schedstat: seconds on a CPU, seconds
   runnable but waiting for one; its JavaScript runs there, so this is what sets the wall). Orchestrator:
   POST /api/v1/sessions (not timed), WebSocket /ws/sessions/{id} connected, the quiet-machine wait
   after both (as the direct side's comes after its worktrees are made), then timed from just
   before POST /start until the WebSocket delivers the transition to `completed` (checked after by
   GET /api/v1/sessions/{id}, the file in the worktree and the LLM's three steps). Each side is
   warmed up once (server starts excluded); batches run strictly direct, orchestrator, direct,
   orchestrator ..., so each server rests through one batch of the other side before each of its
   own: a server's second batch in a row (as the earlier order d,o | o,d | d,o ... gave each side
   twice in 5 rounds) had OpenCode's main thread work 3-6 s more on either side, and the median of
   the paired ratios swung with which side drew those batches. Printed: p50 of each side and the
   ratio, for 1 and for N concurrent (wall time of the batch). Target: ratio <= 1.10 at 20 concurrent.
2. Dispatch latency: just before POST /start is sent -> the scripted LLM receives the first request
   with tools of that session's OpenCode session (LLM log `time`, matched by the OpenCode session
   id). Sequential sessions on one repository, --gap seconds apart, after SHARED_WARM_UP sessions
   there (so the worker keeps spare worktrees of it, already opened in its OpenCode: the steady state
   of a team's repository); p50/p99, target p99 <= 250 ms; with the path broken into segments from
   the session's own event rows and OpenCode's store, and the OpenCode-only segment measured directly
   in a new directory as a floor.
3. Event latency, OpenCode event -> SessionEvent row -> WebSocket client (a `websockets` client
   connected before start). OpenCode's event time: its own store (read-only) gives the tool's end
   time (`state.time.end`, for `tool.completed` rows) and the assistant message's completion time
   (`time.completed`, for `opencode.step` rows); OpenCode publishes the event right after. The row's
   `created_at` and the client's receipt time are on the same clock. Printed: OpenCode -> row,
   row -> client (every event type), and their per-event sum, p50/p99; target p99 <= 100 ms. Also
   printed as an upper bound: the LLM's request time of the step -> row (adds the LLM answer and
   OpenCode's own work for the step).
"""

import argparse
import asyncio
import itertools
import json
import os
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from operator import sub
from pathlib import Path

from bench.common import percentile
from bench.execution_stack import (
    TERMINAL,
    bystander,
    cpu_seconds,
    folded_summary,
    opencode_session_created,
    opencode_times,
    process_size,
    profiled,
    running_stack,
    scheduler_traced,
    scheduler_waits,
    service_cpu_seconds,
    thread_schedule,
    tree_cpu_seconds,
    wait_for_quiet,
)
from bench.opencode_direct import make_repository, make_worktrees

SCRIPT = (
    "Benchmark job {number}.\n"
    "@@write out.txt job {number}\\n\n"
    "@@bash cat out.txt\n"
    "@@final job {number} done"
)
EXPECTED_STEPS = ["write", "bash", "final"]
JOB_TIMEOUT = 300.0
# Sessions on the shared repository before parts 2 and 3 are measured: the worker keeps spare
# worktrees of a repository from its second session on (sessions.execution.spares).
OPENCODE_PART = "the worker's OpenCode server"
SHARED_WARM_UP = 3
SILENCE_RECONNECT = 30.0  # seconds without a message before the client reconnects with ?after=
TOOL_STEP = {"write": 0, "bash": 1}


# --- printing -----------------------------------------------------------------------------------


def max_map_count():
    return int(Path("/proc/sys/vm/max_map_count").read_text())


def ms(seconds):
    return seconds * 1000.0


def line(label, values_ms, *, target_p99=None, target_p50=None):
    """One figure line: n, p50, p99, max, and the verdict against the target."""
    if not values_ms:
        print(f"  {label}: no samples")
        return
    p50, p99 = percentile(values_ms, 0.5), percentile(values_ms, 0.99)
    text = f"  {label}: n={len(values_ms)} p50={p50:.1f} ms p99={p99:.1f} ms max={max(values_ms):.1f} ms"
    if target_p99 is not None:
        text += f"   [target p99 <= {target_p99:.0f} ms: {'MET' if p99 <= target_p99 else 'MISSED'}]"
    if target_p50 is not None:
        text += f"   [target p50 <= {target_p50:.0f} ms: {'MET' if p50 <= target_p50 else 'MISSED'}]"
    print(text)


# --- the direct side ------------------------------------------------------------------------------


class IdleWatch:
    """One reader of OpenCode's global event stream that flags each session's `session.idle`.

    (EventCollector.wait rescans every kept event and wakes every waiter on each event: with 20
    waiting threads and tens of thousands of events that cost the bench process more CPU than the
    jobs. Here a waiter sleeps on its own flag.) Events are not replayed
    after a reconnect, so a waiter then also asks the server whether its session has finished.
    """

    def __init__(self, stream):
        self.stream = stream
        self._flags = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="direct-idle-watch", daemon=True)

    def start(self, timeout=15.0):
        self._thread.start()
        if not self.stream.connected.wait(timeout):
            raise RuntimeError("OpenCode's global event stream did not connect")
        return self

    def stop(self):
        self.stream.stop()
        self._thread.join(timeout=5)

    def flag(self, session_id):
        with self._lock:
            return self._flags.setdefault(session_id, threading.Event())

    def _read(self):
        for event in self.stream:
            if event.type == "session.idle" and event.session_id:
                self.flag(event.session_id).set()

    def wait(self, session_id, client, timeout):
        from sessions.opencode.events import session_snapshot

        flag = self.flag(session_id)
        deadline = time.monotonic() + timeout
        while not flag.wait(0.5):
            if self.stream.reconnects and session_snapshot(client, session_id)["finished"]:
                return True
            if time.monotonic() > deadline:
                return False
        return True


class Direct:
    """The job straight against an OpenCode server of this process (bench.opencode_direct's
    fresh-worktree mode, with this benchmark's script)."""

    def __init__(self, llm, root):
        from django.conf import settings

        from sessions.opencode.scripted_llm import opencode_config
        from sessions.opencode.server import OpenCodeServer

        self.llm = llm
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # A longer request timeout than the worker's 30 s: 20 creates at once in new directories make
        # OpenCode open 20 of them together, and on a busy machine the last create took over 30 s.
        self.server = OpenCodeServer(workdir=self.root / "workdir", state_dir=self.root / "state",
                                     binary=settings.OPENCODE_BIN, config=opencode_config(llm.base_url),
                                     request_timeout=120)
        self.watch = None
        self.made = 0

    def start(self):
        self.server.start()
        self.client = self.server.client()
        self.watch = IdleWatch(self.server.events(global_stream=True)).start()
        return self

    def stop(self):
        if self.watch is not None:
            self.watch.stop()
        self.server.stop()

    def restart(self, warm_up_number):
        """A fresh server with one warm-up job done (all outside the timed span): see measure()."""
        self.stop()
        self.start()
        self.job(self.worktrees(1)[0], warm_up_number)

    def worktrees(self, count):
        """One fresh worktree per job, each of its own repository (see the module docstring)."""
        paths = []
        for _ in range(count):
            folder = self.root / f"job-{self.made}"
            self.made += 1
            paths.extend(make_worktrees(make_repository(folder), folder, ["job"]))
        return paths

    def job(self, directory, number):
        """One job; returns (seconds, dispatch seconds: before create -> LLM's first tool request,
        its Marks)."""
        directory = str(directory)
        before = time.time()
        started = time.perf_counter()
        session_id = self.client.create_session(title=f"bench {number}", directory=directory)["id"]
        self.watch.flag(session_id)
        self.client.prompt_async(session_id, text=SCRIPT.format(number=number), directory=directory)
        idle = self.watch.wait(session_id, self.client.with_directory(directory), JOB_TIMEOUT)
        elapsed = time.perf_counter() - started
        ended = time.time()
        # As the worker does at the end of a run (servers.close_directory), after the timed span.
        self.client.dispose_instance(directory=directory)
        if not idle:
            from sessions.opencode.events import session_snapshot

            snapshot = session_snapshot(self.client.with_directory(directory), session_id)
            steps = [(entry["kind"], round(entry["time"] - before, 1)) for entry in self.llm.requests_for(session_id)]
            raise RuntimeError(
                f"direct job {number} ({session_id}, {directory}) did not finish in {JOB_TIMEOUT:.0f} s: "
                f"status {snapshot['status_detail']}, finished {snapshot['finished']}, "
                f"{len(snapshot['messages'])} messages, LLM requests (kind, s after create) {steps}, "
                f"stream reconnects {self.watch.stream.reconnects}")
        if (Path(directory) / "out.txt").read_text() != f"job {number}\n":
            raise RuntimeError(f"direct job {number}: out.txt is wrong")
        requests = [entry for entry in self.llm.requests_for(session_id) if entry["tools"]]
        if [entry["kind"] for entry in requests] != EXPECTED_STEPS:
            raise RuntimeError(f"direct job {number}: LLM steps {[e['kind'] for e in requests]}")
        first = min(entry["time"] for entry in requests)
        return elapsed, first - before, Marks(before, first, max(entry["time"] for entry in requests), ended)

    def batch(self, directories, first_number):
        """All jobs at once in threads; returns (wall seconds, [(seconds, dispatch seconds)] per job)."""
        results = [None] * len(directories)
        failures = []

        def work(index, directory):
            try:
                results[index] = self.job(directory, first_number + index)
            except Exception as error:  # noqa: BLE001 - raised after the batch
                failures.append(error)

        threads = [
            threading.Thread(target=work, args=(index, directory)) for index, directory in enumerate(directories)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        if failures:
            raise failures[0]
        return wall, results


# --- the orchestrator side ------------------------------------------------------------------------


@dataclass
class Run:
    number: int
    session_id: int
    reference: str
    create_seconds: float
    start_sent: float = 0.0  # epoch, just before POST /start
    post_start_seconds: float = 0.0
    seconds: float = 0.0  # POST /start sent -> terminal transition received on the WebSocket
    received: list = field(default_factory=list)  # (epoch at receipt, event, live: not a replay)
    drops: list = field(default_factory=list)  # close codes of WebSocket drops (reconnected)
    detail: dict = field(default_factory=dict)

    @property
    def opencode_session_id(self):
        return (self.detail.get("opencode") or {}).get("session_id")


class Orchestrator:
    def __init__(self, stack):
        self.stack = stack
        self.numbers = 0
        self.headers = {"Authorization": f"Token {stack.token}"}

    def next_numbers(self, count):
        first = self.numbers
        self.numbers += count
        return range(first, first + count)

    async def _create(self, http, number, repository=None):
        if repository is None:
            repository = await asyncio.to_thread(self.stack.repository, f"repo-{number}")
        started = time.perf_counter()
        response = await http.post("/api/v1/sessions", json={
            "title": f"Benchmark job {number}", "initial_prompt": SCRIPT.format(number=number),
            "repository": str(repository),
        })
        response.raise_for_status()
        body = response.json()
        return Run(number=number, session_id=body["id"], reference=body["reference"],
                   create_seconds=time.perf_counter() - started)

    async def _connect(self, run, after=None):
        import websockets

        query = f"?after={after}" if after is not None else ""
        return await websockets.connect(
            f"{self.stack.ws_url}/ws/sessions/{run.session_id}{query}", additional_headers=self.headers,
            max_size=None,
        )

    async def _run(self, http, run, socket):
        import websockets

        connected_at = time.time()
        last_id = 0
        run.start_sent = time.time()
        started = time.perf_counter()
        response = await http.post(f"/api/v1/sessions/{run.session_id}/start", json={})
        run.post_start_seconds = time.perf_counter() - started
        response.raise_for_status()
        deadline = started + JOB_TIMEOUT
        while True:
            try:
                window = min(SILENCE_RECONNECT, deadline - time.perf_counter())
                raw = await asyncio.wait_for(socket.recv(), timeout=max(0.1, window))
            except TimeoutError:
                if time.perf_counter() >= deadline:
                    raise
                # A client's rule for a quiet socket: reconnect with the last id seen, as after a drop.
                # Counted ("silent"): a missed broadcast shows up here instead of hanging the run.
                run.drops.append("silent")
                await socket.close()
                socket = await self._connect(run, after=last_id)
                connected_at = time.time()
                continue
            except websockets.ConnectionClosed as closed:
                # The documented recovery: reconnect with the last id seen; the server replays the
                # rest from the database. Replayed events are not live and are left out of latencies.
                run.drops.append(closed.rcvd.code if closed.rcvd else None)
                socket = await self._connect(run, after=last_id)
                connected_at = time.time()
                continue
            now = time.time()
            event = json.loads(raw)
            last_id = max(last_id, event["id"])
            run.received.append((now, event, epoch(event["created_at"]) >= connected_at))
            if event["type"] == "session.transition" and event["payload"].get("to") in TERMINAL:
                run.seconds = time.perf_counter() - started
                break
        return socket

    async def _finish(self, http, run, socket):
        """After the batch (checks, not the job): close the socket, read the session for check()."""
        await socket.close()
        response = await http.get(f"/api/v1/sessions/{run.session_id}")
        response.raise_for_status()
        run.detail = response.json()

    async def _batch(self, numbers, repository=None, ready=None):
        import httpx

        limits = httpx.Limits(max_connections=2 * len(numbers) + 4)
        async with httpx.AsyncClient(base_url=self.stack.api_url, headers=self.headers, timeout=60,
                                     limits=limits) as http:
            runs = [await self._create(http, number, repository) for number in numbers]
            sockets = [await self._connect(run) for run in runs]
            if ready is not None:  # sessions created and sockets connected: the caller's last word
                await asyncio.to_thread(ready)
            started = time.perf_counter()
            sockets = await asyncio.gather(
                *(self._run(http, run, socket) for run, socket in zip(runs, sockets, strict=True))
            )
            wall = time.perf_counter() - started
            # Each socket closed and each session read once all have finished, as the direct side's
            # jobs do nothing with the server once their session is idle but close its directory
            # (which the worker does too): done as each ended, they added requests to the server
            # while the batch's other sessions ran.
            await asyncio.gather(*(self._finish(http, run, socket) for run, socket in zip(runs, sockets, strict=True)))
            return wall, runs

    def batch(self, count, repository=None, ready=None):
        """`count` sessions started at once, each in a repository of its own unless `repository` is
        given; `ready()` runs once they are created and their WebSockets connected, just before the
        starts. Returns (wall seconds, runs), each checked."""
        wall, runs = asyncio.run(self._batch(list(self.next_numbers(count)), repository, ready))
        for run in runs:
            self.check(run)
        return wall, runs

    def single(self, repository=None):
        return self.batch(1, repository)[1][0]

    def check(self, run):
        status = run.detail.get("status")
        if status != "completed":
            error = (run.detail.get("metrics") or {}).get("error")
            raise RuntimeError(f"{run.reference} ended {status}: {error}")
        out = Path(run.detail["opencode"]["workspace_path"]) / "out.txt"
        if not out.exists() or out.read_text() != f"job {run.number}\n":
            raise RuntimeError(f"{run.reference}: out.txt missing or wrong in its worktree")
        steps = [entry["kind"] for entry in self.stack.llm.requests_for(run.opencode_session_id) if entry["tools"]]
        if steps != EXPECTED_STEPS:
            raise RuntimeError(f"{run.reference}: LLM steps {steps}")


# --- figures from the runs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Marks:
    """Epoch times of one job: started (create call / POST /start sent), the LLM's first and last
    requests with tools, done (idle seen / `completed` received)."""

    started: float
    first_request: float
    last_request: float
    done: float


def run_marks(run, llm):
    times = [entry["time"] for entry in llm.requests_for(run.opencode_session_id) if entry["tools"]]
    return Marks(run.start_sent, min(times), max(times), run.start_sent + run.seconds)


def print_timelines(timelines):
    """Where a concurrent batch's wall goes, each side: offsets from the batch's start (p50 / max over
    the jobs of every batch), and each job's tail (the LLM's last request -> done)."""
    print("  timeline of the concurrent batches, s from the batch's start (p50 / max):")
    for side, batches in timelines.items():
        offsets = {"LLM first request": [], "LLM last request": [], "done": [], "tail (last request -> done)": []}
        for jobs in batches:
            start = min(marks.started for marks in jobs)
            for marks in jobs:
                offsets["LLM first request"].append(marks.first_request - start)
                offsets["LLM last request"].append(marks.last_request - start)
                offsets["done"].append(marks.done - start)
                offsets["tail (last request -> done)"].append(marks.done - marks.last_request)
        print(f"    {side}: " + "; ".join(
            f"{name} {percentile(values, 0.5):.2f} / {max(values):.2f}" for name, values in offsets.items()))


def print_tail(runs, llm):
    """The orchestrator's tail by its event rows: s from the LLM's last request to each event row
    written after it (created_at), and to its receipt on the WebSocket (p50 / max)."""
    rows, received = {}, {}
    for run in runs:
        last = run_marks(run, llm).last_request
        for at, event, _ in run.received:
            created = epoch(event["created_at"])
            if created >= last:
                kind = (
                    event["type"]
                    if event["type"] != "session.transition"
                    else f"transition to {event['payload'].get('to')}"
                )
                rows.setdefault(kind, []).append(created - last)
                received.setdefault(kind, []).append(at - last)
    print(
        "  the orchestrator's tail, s after the LLM's last request: row written / received on the WebSocket "
        "(p50 / max):"
    )
    for kind, values in sorted(rows.items(), key=lambda item: percentile(item[1], 0.5)):
        print(f"    {kind} (n={len(values)}): row {percentile(values, 0.5):.2f} / {max(values):.2f}; "
              f"received {percentile(received[kind], 0.5):.2f} / {max(received[kind]):.2f}")


def epoch(iso):
    return datetime.fromisoformat(iso).timestamp()


def llm_step_times(llm, key):
    """{step index: time of the last request of that step} for one OpenCode session (tools only)."""
    times = {}
    for entry in llm.requests_for(key):
        if entry["tools"] and entry["kind"] in ("write", "bash", "final"):
            times[entry["step"]] = entry["time"]
    return times


def first_tool_request(llm, key):
    times = [entry["time"] for entry in llm.requests_for(key) if entry["tools"]]
    return min(times) if times else None


def event_latencies(runs, llm, opencode_stores, bystander_seen=None):
    """Per-event figures (ms): opencode->row, row->client, opencode->client, llm->row, by kind; with
    `bystander_seen` ({(kind, key): epoch read}), opencode->bystander and bystander->row too."""
    call_ids, message_ids = set(), set()
    for run in runs:
        for _, event, _ in run.received:
            if event["type"] == "tool.completed":
                call_ids.add(event["payload"].get("call_id"))
            elif event["type"] == "opencode.step":
                message_ids.add(event["payload"].get("message_id"))
    tool_end, message_done = opencode_times(opencode_stores, call_ids=call_ids, message_ids=message_ids)
    figures = {name: [] for name in (
        "row_client_all", "opencode_row_tool", "opencode_row_step", "row_client_tracked",
        "opencode_client", "llm_row_tool", "llm_row_step", "opencode_bystander", "bystander_row",
    )}
    bystander_seen = bystander_seen or {}
    for run in runs:
        steps = llm_step_times(llm, run.opencode_session_id)
        step_rows = 0
        for received_at, event, live in run.received:
            row_at = epoch(event["created_at"])
            payload = event["payload"]
            opencode_at = llm_at = None
            if event["type"] == "tool.completed":
                opencode_at = tool_end.get(payload.get("call_id"))
                llm_at = steps.get(TOOL_STEP.get(payload.get("tool")))
                kind = "tool"
                read_at = bystander_seen.get(("tool", payload.get("call_id")))
            elif event["type"] == "opencode.step":
                opencode_at = message_done.get(payload.get("message_id"))
                llm_at = steps.get(step_rows)
                step_rows += 1
                kind = "step"
                read_at = bystander_seen.get(("step", payload.get("message_id")))
            else:
                kind = read_at = None
            if not live:
                continue
            figures["row_client_all"].append(ms(received_at - row_at))
            if kind is None:
                continue
            if llm_at is not None:
                figures[f"llm_row_{kind}"].append(ms(row_at - llm_at))
            if read_at is not None and opencode_at is not None:
                figures["opencode_bystander"].append(ms(read_at - opencode_at))
                figures["bystander_row"].append(ms(row_at - read_at))
            if opencode_at is not None:
                figures[f"opencode_row_{kind}"].append(ms(row_at - opencode_at))
                figures["row_client_tracked"].append(ms(received_at - row_at))
                figures["opencode_client"].append(ms(received_at - opencode_at))
    return figures


def print_event_figures(title, figures):
    print(title)
    line("OpenCode tool end -> tool.completed row", figures["opencode_row_tool"])
    line("OpenCode step completed -> opencode.step row", figures["opencode_row_step"])
    line("row created_at -> WebSocket client, these two kinds", figures["row_client_tracked"])
    line("row created_at -> WebSocket client, every event", figures["row_client_all"], target_p99=100)
    line("SUM per event: OpenCode event -> row -> WebSocket client", figures["opencode_client"], target_p99=100)
    line("upper bound: LLM request of the step -> tool.completed row", figures["llm_row_tool"])
    line("upper bound: LLM request of the step -> opencode.step row", figures["llm_row_step"])
    if figures["opencode_bystander"]:
        print("  split by a second reader of OpenCode's stream (--bystander), these two kinds:")
        line("  OpenCode's time -> the event read off its stream (OpenCode publishing)", figures["opencode_bystander"])
        line("  the event read off its stream -> row (the worker)", figures["bystander_row"])


def started_in_spare(run):
    return any(event["type"] == "workspace.ready" and event["payload"].get("spare") for _, event, _ in run.received)


def dispatch_breakdown(runs, llm, opencode_stores):
    """Dispatch latency (ms) per run and its segments, from the runs' own event rows; and each run's
    (total, [(segment, ms)]) for a look at the slowest."""
    created = opencode_session_created(opencode_stores, [run.opencode_session_id for run in runs])
    totals, segments, ours, per_run = [], {}, [], []

    def add(name, value):
        segments.setdefault(name, []).append(ms(value))
        per_run[-1][1].append((name, ms(value)))

    for run in runs:
        first = first_tool_request(llm, run.opencode_session_id)
        if first is None:
            continue
        totals.append(ms(first - run.start_sent))
        per_run.append((ms(first - run.start_sent), []))
        rows = {}
        for _, event, _ in run.received:
            key = event["type"]
            if key == "session.transition":
                key = "-> " + event["payload"].get("to", "")
            rows.setdefault(key, epoch(event["created_at"]))
        opencode_created = created.get(run.opencode_session_id)
        marks = [
            ("POST /start sent", run.start_sent),
            ("queued row (API)", rows.get("-> queued")),
            ("running row (broker + worker claim)", rows.get("-> running")),
            ("workspace.ready row (git worktree, OpenCode health)", rows.get("workspace.ready")),
            ("task.routed row (plan, context, routing)", rows.get("task.routed")),
            ("OpenCode session created (task start, create call)", opencode_created),
            ("task.prompted row (event stream, prompt_async accepted)", rows.get("task.prompted")),
            ("LLM first request (OpenCode's own work)", first),
        ]
        for (_, before), (name, after) in itertools.pairwise(marks):
            if before is not None and after is not None:
                add(name, after - before)
        if rows.get("task.prompted") is not None:
            ours.append(ms(rows["task.prompted"] - run.start_sent))
    return totals, segments, ours, per_run


# --- main -------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="single-job rounds per side")
    # Several batches: the paired ratio of one pair of 20-session batches on this 2-core VM ranged
    # from 0.95 to 1.37 within one run; the headline is the median of the batches' paired ratios.
    parser.add_argument("--batches", type=int, default=5, help="concurrent rounds per side")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--dispatch", type=int, default=30, help="sequential sessions for parts 2 and 3")
    # Sessions of a team start minutes apart, not back to back: the gap lets the worker ready its spare
    # worktrees between starts (bursts of starts are what part 1's concurrent batches measure).
    parser.add_argument("--gap", type=float, default=6.0, help="seconds between the sequential sessions' starts")
    parser.add_argument("--keep", action="store_true", help="keep workspaces, repositories and OpenCode state")
    parser.add_argument("--py-spy", default=None, metavar="PATH",
                        help="py-spy binary: sample the worker and daphne during the orchestrator's concurrent batches")
    parser.add_argument("--perf", default=None, metavar="PATH",
                        help="perf binary: trace the scheduler during the concurrent batches (what delays OpenCode)")
    parser.add_argument("--bystander", action="store_true",
                        help="a second reader of the worker's OpenCode event stream during the orchestrator's "
                             "concurrent batches: splits their event latency into OpenCode's publishing and the "
                             "worker's handling (adds a subscriber to OpenCode: not for the overhead figures)")
    options = parser.parse_args(argv)
    began = time.perf_counter()
    with running_stack(worker_concurrency=max(24, options.concurrency + 4), agent_capacity=options.concurrency,
                       keep=options.keep) as stack:
        from django.conf import settings

        print(f"stack: daphne pid {stack.web.pid} at {stack.api_url}, celery worker pid {stack.worker.pid} "
              f"(threads), scripted LLM {stack.llm.base_url}, database {stack.database_url}, "
              f"broker/channels {settings.REDIS_URL}, DEBUG={settings.DEBUG}, "
              f"vm.max_map_count {max_map_count()}")
        if stack.added_agents:
            print(f"agents added for capacity (the default roster runs 8 execution sessions at once): "
                  f"{', '.join(stack.added_agents)}")
        orchestrator = Orchestrator(stack)
        direct_root = stack.var_dir / "direct"
        shutil.rmtree(direct_root, ignore_errors=True)
        direct = Direct(stack.llm, direct_root)
        try:
            started = time.perf_counter()
            direct.start()
            print(f"direct OpenCode server {direct.server.version} started in "
                  f"{ms(time.perf_counter() - started):.0f} ms (excluded)")
            measure(options, stack, orchestrator, direct)
        finally:
            direct.stop()
            if not options.keep:
                shutil.rmtree(direct_root, ignore_errors=True)
    print(f"total run time {time.perf_counter() - began:.0f} s")
    return 0


def measure(options, stack, orchestrator, direct):
    llm = stack.llm
    # --- warm-up (the worker's OpenCode server starts here) ---
    started = time.perf_counter()
    warm = orchestrator.single()
    server_url = {"latest": warm.detail["opencode"]["server_url"]}  # for --bystander
    bystander_seen = {}  # (kind, key) -> epoch seconds the bystander read the event
    print(f"orchestrator warm-up session {warm.reference}: {ms(time.perf_counter() - started):.0f} ms "
          "(includes the worker's OpenCode server start; excluded)")
    print(f"direct warm-up job: {ms(direct.job(direct.worktrees(1)[0], 10_000)[0]):.0f} ms (excluded)")

    # --- 1. overhead ---
    direct_single, orch_single, direct_dispatch = [], [], []
    for index in range(options.rounds):
        seconds, dispatch, _ = direct.job(direct.worktrees(1)[0], 10_001 + index)
        direct_single.append(seconds)
        direct_dispatch.append(dispatch)
        orch_single.append(orchestrator.single().seconds)
    direct_walls, orch_walls, pairs, concurrent_runs, direct_jobs, orch_jobs = [], [], [], [], [], []
    direct_busy_dispatch = []
    timelines = {"direct": [], "orchestrator": []}  # per batch, the Marks of its jobs
    # per batch: (wall, OpenCode's main thread on a CPU, waiting for one; the server's mappings and MB after it)
    main_thread = {"direct": [], "orchestrator": []}
    direct_growth, direct_restarts = [], []  # the direct server's mappings added per batch; batches it restarted before
    quiet_waits = []  # seconds each batch waited for the machine to be quiet (wait_for_quiet)
    cpu = {"direct": Counter(), "orchestrator": Counter()}
    profiles = []
    # per side: [(seconds OpenCode's main thread waited for a CPU, {label: CPU seconds meanwhile})] per batch
    scheduler = {"direct": [], "orchestrator": []}
    worker_children = "its child processes (OpenCode servers, retired ones included; git)"
    opencode_part = []  # per orchestrator batch, CPU seconds of the worker's OpenCode server (tool commands included)

    def readings(side):
        """CPU seconds by process now. The worker's OpenCode server is its child and may be retired
        (and reaped) mid-batch, so the worker is read as a tree, and its own time apart."""
        this = os.getpid()
        if side == "direct":
            return {"OpenCode server": cpu_seconds(direct.server.pid), "bench process (client)": cpu_seconds(this),
                    "scripted LLM": cpu_seconds(llm.pid),
                    **service_cpu_seconds()}
        own = cpu_seconds(stack.worker.pid, children=False)
        children = tree_cpu_seconds(stack.worker.pid) - own
        # The worker's OpenCode server apart from git (both are its children), while one server
        # lives through the batch (one retired meanwhile is counted with git: see split_children).
        opencode = stack.worker_opencode_pid()
        opencode_seconds = tree_cpu_seconds(opencode) if opencode else 0.0
        return {"Celery worker": own, worker_children: children,
                OPENCODE_PART: (opencode, opencode_seconds),
                "daphne": cpu_seconds(stack.web.pid), "bench process (client)": cpu_seconds(this),
                "scripted LLM": cpu_seconds(llm.pid),
                **service_cpu_seconds()}

    def account(side, before):
        for name, seconds in readings(side).items():
            if name == OPENCODE_PART:  # (pid, seconds): only a server that lived through the batch
                (pid, seconds), (pid_before, seconds_before) = seconds, before[name]
                if pid and pid == pid_before:
                    opencode_part.append(seconds - seconds_before)
                continue
            cpu[side][name] += seconds - before[name]

    logs = stack.var_dir / "bench-logs"

    def read_trace(side, trace, opencode_pid):
        """What ran while OpenCode's main thread waited for a CPU in this batch (after it, not timed)."""
        if trace is None or not opencode_pid:
            return
        names = {stack.worker.pid: "Celery worker", stack.web.pid: "daphne", os.getpid(): "bench process (client)",
                 llm.pid: "scripted LLM"}
        scheduler[side].append(scheduler_waits(options.perf, trace, opencode_pid, names))
        if not options.keep:
            Path(trace).unlink(missing_ok=True)

    def direct_batch(index):
        # The direct server lives as long as the worker's does (a server's age changes its cost: some
        # batches on the worker's long-lived server had OpenCode's main thread work 3-5 s more), unless
        # the next batch could take its memory mappings near the kernel's vm.max_map_count: twice on
        # this VM a direct server reached it and hung, its allocator retrying a failing madvise() at
        # 100 % CPU. Then it is restarted (and warmed up) outside the timed span; the worker retires
        # its own server at OPENCODE_SERVER_MAX_MAP_SHARE of the limit, inside the timed span, so
        # that part leans in direct's favour. With the kernel's default limit (65,530) that is
        # before nearly every batch; with 262,144 (as the README advises), rarely.
        maps, _ = process_size(direct.server.pid)
        if index and maps is not None and maps + 2 * max(direct_growth, default=20_000) >= 0.9 * max_map_count():
            direct.restart(30_000 + 100 * index)
            direct_restarts.append(index + 1)
            maps, _ = process_size(direct.server.pid)
        worktrees = direct.worktrees(options.concurrency)
        quiet_waits.append(wait_for_quiet())
        before = readings("direct")
        schedule = thread_schedule(direct.server.pid)
        with scheduler_traced(options.perf, logs / f"sched-direct-{index}.data") as trace:
            wall, jobs = direct.batch(worktrees, 20_000 + 100 * index)
        read_trace("direct", trace, direct.server.pid)
        main_thread["direct"].append((wall, *map(sub, thread_schedule(direct.server.pid), schedule),
                                      *process_size(direct.server.pid)))
        if maps is not None and main_thread["direct"][-1][3] is not None:
            direct_growth.append(main_thread["direct"][-1][3] - maps)
        account("direct", before)
        direct_walls.append(wall)
        direct_jobs.extend(seconds for seconds, _, _ in jobs)
        direct_busy_dispatch.extend(dispatch for _, dispatch, _ in jobs)
        timelines["direct"].append([marks for _, _, marks in jobs])
        return wall

    def orchestrator_batch(index):
        opencode = stack.worker_opencode_pid()
        start = {}

        def ready():
            # As on the direct side, whose worktrees are made before it: the sessions are created and
            # their WebSockets connected (not timed), then the machine must be quiet, then the timed
            # starts. CPU is counted from here, like the direct side's.
            quiet_waits.append(wait_for_quiet())
            start["cpu"], start["schedule"] = readings("orchestrator"), thread_schedule(opencode)

        watched = bystander(options.bystander, server_url["latest"], opencode, logs / f"bystander-{index}.jsonl")
        with profiled(options.py_spy, stack.worker.pid, logs / f"worker-profile-{index}.txt") as worker_profile, \
                profiled(options.py_spy, stack.web.pid, logs / f"web-profile-{index}.txt") as web_profile, \
                profiled(options.py_spy, os.getpid(), logs / f"bench-profile-{index}.txt") as bench_profile, \
                scheduler_traced(options.perf, logs / f"sched-orchestrator-{index}.data") as trace, \
                watched as seen:
            orch_wall, runs = orchestrator.batch(options.concurrency, ready=ready)
            if opencode == stack.worker_opencode_pid():  # not retired meanwhile
                main_thread["orchestrator"].append((orch_wall, *map(sub, thread_schedule(opencode), start["schedule"]),
                                                    *process_size(opencode)))
        profiles.append((worker_profile, web_profile, bench_profile))
        bystander_seen.update(seen)
        server_url["latest"] = runs[-1].detail["opencode"]["server_url"]
        read_trace("orchestrator", trace, opencode)
        account("orchestrator", start["cpu"])
        orch_walls.append(orch_wall)
        orch_jobs.extend(item.seconds for item in runs)
        timelines["orchestrator"].append([run_marks(item, llm) for item in runs])
        concurrent_runs.extend(runs)
        return orch_wall

    for index in range(options.batches):
        # Strictly d, o, d, o: each server rests through one batch of the other side before each of its
        # own. (Alternating which side went first ran d,o | o,d | d,o ...: a server's second batch in a
        # row had OpenCode's main thread work 3-6 s more, on either side, and the median of the paired
        # ratios swung with which side drew those batches: module docstring, 1.)
        wall = direct_batch(index)
        orch_wall = orchestrator_batch(index)
        pairs.append(orch_wall / wall)
        print(f"  round {index + 1}: {options.concurrency} concurrent, direct wall {ms(wall):.0f} ms, "
              f"orchestrator wall {ms(orch_wall):.0f} ms, ratio {orch_wall / wall:.2f} "
              f"(waited {quiet_waits[-2]:.1f} + {quiet_waits[-1]:.1f} s for a quiet machine before them)")

    # --- 2 and 3: sequential sessions, all on one repository (as a team's sessions are) ---
    shared = stack.repository("repo-sequential")
    for _ in range(SHARED_WARM_UP):
        orchestrator.single(shared)
    sequential = []
    for _ in range(options.dispatch):
        time.sleep(options.gap)
        sequential.append(orchestrator.single(shared))
    opencode_stores = stack.opencode_stores()

    print()
    print("=== 1. Overhead: the 3-step job (write, bash, final) directly on OpenCode vs through the "
          "orchestrator (POST /start -> `completed` on the WebSocket) ===")
    d1, o1 = percentile(direct_single, 0.5), percentile(orch_single, 0.5)
    print(f"  1 at a time ({options.rounds} rounds each): direct p50 {ms(d1):.0f} ms, orchestrator p50 "
          f"{ms(o1):.0f} ms, ratio {o1 / d1:.2f} (no target at 1; shown for the fixed cost)")
    dn, on = percentile(direct_walls, 0.5), percentile(orch_walls, 0.5)
    ratio = percentile(pairs, 0.5)  # the median of the rounds' paired ratios
    print(
        f"  {options.concurrency} concurrent ({options.batches} rounds each, wall time of the batch): "
        f"direct p50 {ms(dn):.0f} ms, orchestrator p50 {ms(on):.0f} ms, ratio (median of the paired rounds) "
        f"{ratio:.2f} "
        f"(paired per round: {', '.join(f'{p:.2f}' for p in pairs)})   "
        f"[target ratio <= 1.10: {'MET' if ratio <= 1.10 else 'MISSED'}]"
    )
    line(f"per job at {options.concurrency} concurrent, direct", [ms(s) for s in direct_jobs])
    line(f"per job at {options.concurrency} concurrent, orchestrator", [ms(s) for s in orch_jobs])
    jobs_run = options.batches * options.concurrency
    for side in ("direct", "orchestrator"):
        parts = ", ".join(f"{name} {ms(seconds / jobs_run):.0f}" for name, seconds in cpu[side].items())
        print(
            f"  CPU per job at {options.concurrency} concurrent, {side}: "
            f"{ms(sum(cpu[side].values()) / jobs_run):.0f} ms "
            f"({parts}; {os.cpu_count()} CPUs shared with other work)"
        )
    if opencode_part:
        # The rest of the worker's children: git (worktrees, checkpoints, diffs, the final commit).
        per_batch = sum(opencode_part) / len(opencode_part) / options.concurrency
        children = cpu["orchestrator"][worker_children] / jobs_run
        print(f"  of the orchestrator's {ms(children):.0f} ms of worker children per job: OpenCode server "
              f"{ms(per_batch):.0f}, git and the rest {ms(children - per_batch):.0f} "
              f"({len(opencode_part)} of {options.batches} batches on one server throughout)")
    print(
        f"  CPU ratio, orchestrator / direct: {sum(cpu['orchestrator'].values()) / sum(cpu['direct'].values()):.2f} "
        "(the wall ratio can be lower: OpenCode alone leaves part of the cores idle, which the orchestrator's "
        "work fills)"
    )
    print_timelines(timelines)
    print(f"  direct OpenCode server restarted before batches: {direct_restarts or 'none'} "
          f"(its mappings added per batch: {', '.join(str(g) for g in direct_growth)})")
    for side, batches in main_thread.items():
        print(f"  OpenCode's main thread, {side} batches (wall s: on a CPU / runnable, waiting for one; the server's "
              "memory mappings, resident MB after the batch): " + ", ".join(
                  f"{wall:.1f}: {on_cpu:.1f} / {waiting:.1f}; {maps} maps, {rss} MB"
                  for wall, on_cpu, waiting, maps, rss in batches))
    print_tail(concurrent_runs, llm)
    creates = [ms(r.create_seconds) for r in sequential]
    line("POST /api/v1/sessions (create, not in the timed span)", creates)
    line("POST /api/v1/sessions/{id}/start response", [ms(r.post_start_seconds) for r in sequential])

    print()
    print(f"=== 2. Dispatch latency: POST /start sent -> the scripted LLM receives the session's first "
          f"request with tools ({options.dispatch} sequential sessions, PostgreSQL + Redis) ===")
    totals, segments, ours, per_run = dispatch_breakdown(sequential, llm, opencode_stores)
    line("API start -> LLM first prompt", totals, target_p99=250)
    in_spares = sum(1 for run in sequential if started_in_spare(run))
    print(f"  {in_spares} of {len(sequential)} sessions started in a spare worktree (one opened by the worker's "
          f"OpenCode beforehand; {SHARED_WARM_UP} sessions on the repository ran first, excluded)")
    print("  segments (p50 / p99 ms), each from the previous mark:")
    for name, values in segments.items():
        print(f"    {name}: {percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}")
    print("  the slowest three, ms (segments as above):")
    for total, parts in sorted(per_run, key=lambda item: item[0], reverse=True)[:3]:
        print(f"    {total:.0f}: " + ", ".join(f"{name.split(' (')[0]} {value:.0f}" for name, value in parts))
    line("the orchestrator's part: API start -> prompt accepted by OpenCode (task.prompted row)", ours)
    line("floor, direct on OpenCode: before create session -> LLM first prompt",
         [ms(s) for s in direct_dispatch])
    busy, busy_segments, busy_ours, _ = dispatch_breakdown(concurrent_runs, llm, opencode_stores)
    print(f"  for reference, under {options.concurrency} concurrent starts (part 1 batches):")
    line("  API start -> LLM first prompt", busy)
    for name, values in busy_segments.items():
        print(f"      {name}: {percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}")
    line("  the orchestrator's part (API start -> task.prompted row)", busy_ours)
    line("  floor, direct: before create session -> LLM first prompt", [ms(s) for s in direct_busy_dispatch])

    print()
    print("=== 3. Event latency: OpenCode event -> SessionEvent row -> WebSocket client of "
          "/ws/sessions/{id} (client connected before start) ===")
    print("  OpenCode's time = its own store: tool state.time.end / assistant message time.completed; "
          "row = SessionEvent.created_at; client = receipt in this process")
    print_event_figures(f" {options.dispatch} sequential sessions:", event_latencies(sequential, llm, opencode_stores))
    print_event_figures(f" under {options.concurrency} concurrent sessions (part 1 batches):",
                        event_latencies(concurrent_runs, llm, opencode_stores, bystander_seen))
    agents = Counter()
    for item in sequential + concurrent_runs:
        for _, event, _ in item.received:
            if event["type"] == "task.routed":
                agents[event["payload"].get("agent")] += 1
    drops = Counter(code for item in sequential + concurrent_runs for code in item.drops)
    replayed = sum(1 for item in sequential + concurrent_runs for *_, live in item.received if not live)
    print(f"  WebSocket drops (reconnected with ?after=<last id>): {sum(drops.values())} {dict(drops)} in "
          f"{sum(1 for item in sequential + concurrent_runs if item.drops)} of "
          f"{len(sequential + concurrent_runs)} sessions; {replayed} replayed events left out of the latencies")
    if options.perf:
        print()
        print("=== Diagnostics: what the CPUs ran while OpenCode's main thread waited for one (perf sched, "
              "every concurrent batch; CPU seconds per batch, both CPUs; git is OpenCode's and, on the "
              "orchestrator side, the worker's too) ===")
        for side, batches in scheduler.items():
            if not batches:
                continue
            waited = sum(seconds for seconds, _ in batches) / len(batches)
            meanwhile = Counter()
            for _, occupancy in batches:
                meanwhile.update(occupancy)
            parts = ", ".join(f"{label} {seconds / len(batches):.2f}" for label, seconds in meanwhile.most_common(8))
            print(f"  {side}: waited {waited:.2f} s per batch; meanwhile: {parts}")
    if options.py_spy:
        print()
        print(
            "=== Diagnostics: py-spy samples (50 Hz, threads holding the GIL) during the orchestrator's "
            "concurrent batches ==="
        )
        for label, paths in (("Celery worker", [p[0] for p in profiles]), ("daphne", [p[1] for p in profiles]),
                             ("bench process (client)", [p[2] for p in profiles])):
            total, own, leaves = folded_summary(paths, top=15)
            print(f"  {label}: {total} samples; the project's frames by inclusive share:")
            for share, frame in own:
                print(f"    {share * 100:5.1f}%  {frame}")
            print(f"  {label}: leaf frames (where the time is spent):")
            for share, frame in leaves[:10]:
                print(f"    {share * 100:5.1f}%  {frame}")
    print(f"  checks: every session completed, out.txt in its worktree, LLM steps {EXPECTED_STEPS}; "
          f"agents routed: {dict(agents)}")


if __name__ == "__main__":
    sys.exit(main())
