"""The console's live monitor under load, and the render time of its heaviest pages.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/h5b REDIS_URL=redis://127.0.0.1:6379/6 \
        .venv/bin/python -m bench.console_live [--clients 200] [--events 1000] [--rate 20]

1. Render time, in this process through Django's test client (the whole view, template and
   queries; DEBUG off): the monitor of a session with 10,000 events, and the task graph page of a
   session with 200 tasks (20 waves of 10, each task depending on one of the wave before).
2. Delivery: a real web server (daphne, a process of its own) serves `--clients` WebSocket
   clients watching one session's console feed (/ws/console/sessions/<id>: rendered HTML), spread
   over `--client-processes` processes so the clients' own parsing does not queue their reads.
   This process then publishes `--events` events through the real path (session_record_event:
   the database row, then the channel layer, Redis pub/sub) at `--rate` per second; one in twenty
   is an `opencode.step`, whose push carries the re-rendered header. Latency is from just before
   the write to the client's receipt (same machine, wall clock). Each client checks it got every
   event once, in order.

Every process it starts (daphne, the client processes) is stopped by PID at the end, also on
errors. The database is created, migrated and dropped (bench.common.bench_database).
"""

import argparse
import asyncio
import multiprocessing
import os
import queue
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, bench_database, percentile
from bench.execution_stack import production_like_environment

EVENT_ID = re.compile(rb'id="event-(\d+)"')
CONNECTS_AT_ONCE = 10  # handshakes one client process has in flight
CONNECT_ATTEMPTS = 3


def _summary(label, values_ms):
    return (f"{label}: n={len(values_ms)} p50={percentile(values_ms, 0.5):.1f} ms "
            f"p99={percentile(values_ms, 0.99):.1f} ms max={max(values_ms):.1f} ms")


# --- fixtures -------------------------------------------------------------------------------------


def _operator():
    from django.contrib.auth.models import Group, User

    from orchestrator.roles import OPERATORS, ensure_role_groups
    from orchestrator.tokens import token_issue

    ensure_role_groups()
    user = User.objects.create_user("bench-operator", password="unused-password")
    user.groups.add(Group.objects.get(name=OPERATORS))
    return user, token_issue(user=user)[1]


def _session_with_events(count):
    from django.utils import timezone

    from sessions import services
    from sessions.models import SessionEvent

    session = services.session_create(title="Console benchmark: a long log", initial_prompt="bench",
                                      repository="/srv/bench")
    from sessions.models import CodingSession

    CodingSession.objects.filter(pk=session.pk).update(status="running", run_started_at=timezone.now())
    kinds = [
        ("tool.completed", {"tool": "bash", "status": "completed", "title": "pytest -q", "input": "{}",
                            "output": "3 passed\n" * 5}),
        ("assistant.text", {"message_id": "m1", "text": "The endpoint is in place and its tests pass."}),
        ("opencode.step", {"tokens": {"input": 1200, "output": 80}, "cost": 0.001, "finish": "tool-calls"}),
    ]
    rows = [SessionEvent(session_id=session.pk, type=kinds[n % 3][0], payload=kinds[n % 3][1])
            for n in range(count)]
    SessionEvent.objects.bulk_create(rows, batch_size=2_000)
    return CodingSession.objects.get(pk=session.pk)


def _session_with_tasks(waves, width):
    from sessions import services
    from tasks.models import Task, TaskDependency

    session = services.session_create(title="Console benchmark: a large plan", initial_prompt="bench",
                                      repository="/srv/bench")
    root = Task.objects.create(session=session, title="Root")
    statuses = ["completed", "in_progress", "ready", "pending"]
    previous = []
    for wave in range(waves):
        current = [
            Task.objects.create(session=session, parent=root, title=f"Wave {wave} task {n}", order=wave * width + n,
                                optimistic_hours=0.5, likely_hours=1 + n % 3, pessimistic_hours=4,
                                status=statuses[min(3, wave // 5)])
            for n in range(width)
        ]
        TaskDependency.objects.bulk_create(
            [TaskDependency(prerequisite=a, dependent=b) for a, b in zip(previous, current, strict=False)])
        previous = current
    return session


def render_times(user, session, url_name, runs):
    from django.test import Client
    from django.urls import reverse

    from orchestrator.gc_tuning import tune_collector_for_web

    tune_collector_for_web()  # as the web process does (orchestrator.asgi): its renders are measured
    client = Client()
    client.force_login(user)
    url = reverse(url_name, args=[session.pk])
    times, cpu = [], []
    for _ in range(runs + 3):
        started, started_cpu = time.perf_counter(), time.process_time()
        response = client.get(url)
        elapsed = (time.perf_counter() - started) * 1000
        cpu.append((time.process_time() - started_cpu) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
        times.append(elapsed)
    # The first renders warm the template cache. CPU time is this process's own work: on a shared
    # machine the wall time also counts the time other processes held the CPU.
    return times[3:], cpu[3:], len(response.content)


# --- the web server and the clients -------------------------------------------------------------


def _start_web_server(log_path, profile=None):
    import httpx

    from orchestrator.testing import free_port, subprocess_env, wait_until

    port = free_port()
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
         "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "orchestrator.asgi:application"],
        cwd=ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answering():
        if process.poll() is not None:
            return True
        try:
            return httpx.get(url + "/live", timeout=1.0).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(answering, timeout=60, interval=0.1, message="the web server to answer")
    if process.poll() is not None:
        raise RuntimeError(f"daphne exited early: {Path(log_path).read_text(errors='replace')[-2000:]}")
    return process, log, port


def client_process(url, count, ready, results, expected):
    """`count` WebSocket clients in one process: each records (event id, receipt time) per message
    until it has `expected` events or nothing arrives for 30 s. An event's id is read from the
    id="event-N" of its partial (the header a step's push carries has no such id)."""
    import websockets

    opening = asyncio.Semaphore(CONNECTS_AT_ONCE)

    async def connect():
        # Watchers open their pages over a few seconds, not in one instant: a handshake the web
        # server cannot accept within its websocket_connect_timeout is dropped.
        async with opening:
            for attempt in range(CONNECT_ATTEMPTS):
                try:
                    return await websockets.connect(url, max_size=2 ** 22, open_timeout=60, ping_interval=None)
                except (TimeoutError, OSError, websockets.InvalidHandshake):
                    if attempt == CONNECT_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))

    async def one(received):
        async with await connect() as socket:
            ready.put(1)
            try:
                while len(received) < expected:
                    message = await asyncio.wait_for(socket.recv(decode=False), timeout=30)
                    now = time.time()
                    # A frame carries one event, or several when the server was busy.
                    received.extend((int(match.group(1)), now) for match in EVENT_ID.finditer(message))
            except (TimeoutError, websockets.ConnectionClosed):
                pass

    async def main():
        per_client = [[] for _ in range(count)]
        await asyncio.gather(*(one(received) for received in per_client))
        results.put(per_client)

    asyncio.run(main())


def deliver(port, token, session, clients, processes, events, rate):
    from sessions import services

    url = f"ws://127.0.0.1:{port}/ws/console/sessions/{session.pk}?token={token}"
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    shares = [clients // processes + (1 if n < clients % processes else 0) for n in range(processes)]
    workers = [context.Process(target=client_process, args=(url, share, ready, results, events), daemon=True)
               for share in shares if share]
    try:
        for worker in workers:
            worker.start()
        connected = 0
        deadline = time.monotonic() + 180
        while connected < clients:
            try:
                connected += ready.get(timeout=1)
            except queue.Empty:
                if time.monotonic() > deadline or not all(worker.is_alive() for worker in workers):
                    raise RuntimeError(f"only {connected} of {clients} clients connected") from None
        published, kinds = {}, {}
        interval = 1.0 / rate
        started = time.perf_counter()
        for n in range(events):
            due = started + n * interval
            # Pacing the publisher (not the test of a condition): events arrive at `rate` per second.
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            kind = "opencode.step" if n % 20 == 19 else "assistant.text"
            payload = ({"tokens": {"input": 900, "output": 60}, "cost": 0.001} if kind == "opencode.step"
                       else {"text": f"bench event {n}"})
            before = time.time()
            row = services.session_record_event(session=session, type=kind, payload=payload)
            published[row.pk] = before
            kinds[row.pk] = kind
        per_process = [results.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=10)
    return published, kinds, [client for share in per_process for client in share]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="events published per second")
    parser.add_argument("--log-events", type=int, default=10_000, help="events in the monitor's session")
    parser.add_argument("--tasks-waves", type=int, default=20)
    parser.add_argument("--tasks-width", type=int, default=10)
    parser.add_argument("--render-runs", type=int, default=50)
    parser.add_argument("--web-profile", type=Path, help="run the web server under cProfile, writing here")
    args = parser.parse_args()
    for name, value, low, high in [("clients", args.clients, 1, 2_000), ("events", args.events, 1, 100_000),
                                   ("client-processes", args.client_processes, 1, 32),
                                   ("render-runs", args.render_runs, 1, 10_000)]:
        if not low <= value <= high:
            parser.error(f"--{name} must be between {low} and {high}")
    if not 0 < args.rate <= 10_000:
        parser.error("--rate must be between 0 and 10000")
    if not os.environ.get("REDIS_URL"):
        sys.exit("this benchmark needs Redis for the channel layer: set REDIS_URL=redis://127.0.0.1:6379/<db>")
    production_like_environment()
    with bench_database():
        user, token = _operator()
        logged = _session_with_events(args.log_events)
        planned = _session_with_tasks(args.tasks_waves, args.tasks_width)
        print(f"load average at start: {' '.join(f'{value:.2f}' for value in os.getloadavg())} "
              f"({os.cpu_count()} CPUs)")
        monitor_ms, monitor_cpu, monitor_bytes = render_times(user, logged, "sessions:detail", args.render_runs)
        graph_ms, graph_cpu, graph_bytes = render_times(user, planned, "sessions:graph", args.render_runs)
        label = f"monitor render, {args.log_events} events in the session ({monitor_bytes} bytes)"
        print(_summary(label, monitor_ms))
        print(_summary(label + ", CPU time", monitor_cpu))
        label = f"graph render, {args.tasks_waves * args.tasks_width} tasks ({graph_bytes} bytes)"
        print(_summary(label, graph_ms))
        print(_summary(label + ", CPU time", graph_cpu))

        watched = _session_with_events(0)
        from django.conf import settings

        log_path = Path(settings.VAR_DIR) / "bench-console-live-daphne.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        web, log, port = _start_web_server(log_path, args.web_profile)
        try:
            published, kinds, clients = deliver(port, token, watched, args.clients, args.client_processes,
                                         args.events, args.rate)
        finally:
            from orchestrator.testing import stop_process

            stop_process(web)
            log.close()
        expected = sorted(published)
        latencies, lost, out_of_order, duplicated = [], 0, 0, 0
        by_kind, by_event = {}, {}
        for received in clients:
            ids = [event_id for event_id, _ in received]
            lost += len(set(expected) - set(ids))
            duplicated += len(ids) - len(set(ids))
            out_of_order += sum(1 for a, b in zip(ids, ids[1:], strict=False) if b <= a)
            for event_id, at in received:
                if event_id in published:
                    latencies.append((at - published[event_id]) * 1000)
                    by_kind.setdefault(kinds[event_id], []).append(latencies[-1])
                    by_event.setdefault(event_id, []).append(latencies[-1])
        print(f"delivery: {args.clients} clients x {args.events} events at {args.rate:g}/s "
              f"({len(latencies)} receipts)")
        print(_summary("delivery latency (write to receipt)", latencies))
        for kind, values in sorted(by_kind.items()):
            print("  " + _summary(kind, values))
        # Per event: its first receipt (the way to the web server) and its last (the fan-out).
        print("  " + _summary("first client to receive each event", [min(v) for v in by_event.values()]))
        print("  " + _summary("last client to receive each event", [max(v) for v in by_event.values()]))
        print(f"lost: {lost}  duplicated: {duplicated}  out of order: {out_of_order}")
        print(f"load average at end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
