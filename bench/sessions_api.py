"""Sessions on PostgreSQL: list latency with 100,000 sessions, create + start and transition throughput.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/h_sessions .venv/bin/python -m bench.sessions_api

Targets (issue 3): list page of 50 p99 <= 50 ms (with a filter, with text
search); create + start >= 200 sessions/s with 8 concurrent clients.
List requests go through the real API stack in-process (URL routing, token
auth, DRF, serialization; no network). Create + start and transitions are
measured through the services (the path every caller takes), and create + start
also through the API. Jobs go to a bench-only queue on the configured broker
and are purged at the end.
"""

import random
import sys
import threading
import time
import uuid
from pathlib import Path

from bench.common import bench_database, percentile, summarize_ms

SESSIONS = 100_000
LIST_ITERATIONS = 200
WORDS = (
    "billing invoices payments ledger parser scheduler importer exporter cache session auth token "
    "upload download search index migration schema queue worker retry timeout metrics logging tracing "
    "config settings router handler middleware template widget dashboard report graph planner review "
    "refactor harden stream batch async sync client server gateway proxy storage bucket archive"
).split()
RARE_WORDS = [f"zephyr{n:03d}" for n in range(200)]


def sentence(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def populate(user):
    from django.db import connection

    from sessions.models import CodingSession

    rng = random.Random(7)
    statuses = ["pending", "queued", "running", "paused", "completed", "failed", "cancelled", "stopped", "degraded"]
    weights = [5, 3, 4, 2, 50, 15, 10, 8, 3]
    repos = [f"/srv/repos/service-{n:02d}" for n in range(20)]
    started = time.perf_counter()
    # Building the trigram indexes once after the load is far cheaper than maintaining them per row.
    from importlib import import_module

    search_indexes = import_module("sessions.migrations.0002_text_search_indexes")
    with connection.schema_editor() as editor:
        search_indexes.drop_indexes(None, editor)
    batch = []
    for number in range(SESSIONS):
        rare = RARE_WORDS[(number // 10) % len(RARE_WORDS)] if number % 10 == 0 else ""
        batch.append(
            CodingSession(
                title=f"{sentence(rng, 4).capitalize()} {rare}".strip(),
                description=sentence(rng, 20),
                initial_prompt=sentence(rng, 60),
                repository=rng.choice(repos),
                session_type=rng.choice(["planning", "execution", "execution", "review", "debug", "integration"]),
                priority=rng.choice([0, 1, 2, 2, 2, 3, 4]),
                status=rng.choices(statuses, weights)[0],
                tags=rng.sample(["backend", "frontend", "db", "infra", "security", "docs"], 2),
                created_by=user,
            )
        )
        if len(batch) == 5000:
            CodingSession.objects.bulk_create(batch)
            batch = []
    if batch:
        CodingSession.objects.bulk_create(batch)
    with connection.schema_editor() as editor:
        search_indexes.create_indexes(None, editor)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE coding_sessions_codingsession")
    print(f"inserted {SESSIONS} sessions in {time.perf_counter() - started:.1f} s")


def api_client_for(user):
    from rest_framework.test import APIClient

    from orchestrator.tokens import token_issue

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=user)[1]}")
    return client


def measure_list(client, label, params_list):
    for params in params_list:  # warm-up: one unmeasured request per parameter set
        client.get("/api/v1/sessions", params)
    timings = []
    sizes = []
    for index in range(LIST_ITERATIONS):
        params = params_list[index % len(params_list)]
        started = time.perf_counter()
        response = client.get("/api/v1/sessions", params)
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.content[:300]
        sizes.append(len(response.json()["results"]))
    summarize_ms(f"{label} (rows/page min {min(sizes)})", timings)
    return percentile([t * 1000 for t in timings], 0.99)


# Bounded waits: a client that hangs (issue 24: a forked child stuck on a lock inherited from a
# parent thread) fails the benchmark with a message instead of blocking it forever.
CLIENT_START_TIMEOUT = 120.0
CLIENT_RUN_TIMEOUT = 600.0


def run_clients(count, per_client, work, context):
    """Run `work(context, client_index, i)` per_client times in each of `count` threads; return
    elapsed s."""
    from django.db import connection

    barrier = threading.Barrier(count + 1)
    errors = []

    def client(index):
        try:
            barrier.wait(timeout=CLIENT_START_TIMEOUT)
            for i in range(per_client):
                work(context, index, i)
        except Exception as exc:  # reported after the run
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=CLIENT_START_TIMEOUT)
    started = time.perf_counter()
    for thread in threads:
        thread.join(timeout=max(1.0, CLIENT_RUN_TIMEOUT - (time.perf_counter() - started)))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    if stuck:
        raise RuntimeError(f"{len(stuck)} client thread(s) did not finish within {CLIENT_RUN_TIMEOUT:.0f} s")
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def child_settings():
    """What a spawned client process must share with this one: it starts from the environment
    alone, so the benchmark's database, queues and limits are handed over explicitly."""
    from django.conf import settings
    from django.db import connection

    return {
        "database_name": connection.settings_dict["NAME"],
        "SESSION_QUEUES": settings.SESSION_QUEUES,
        "API_THROTTLE_RATES": settings.API_THROTTLE_RATES,
        "SESSION_LIMIT_PER_USER": settings.SESSION_LIMIT_PER_USER,
    }


def _apply_child_settings(values):
    from bench.common import setup_django

    setup_django()
    from django.conf import settings
    from django.db import connections

    settings.DATABASES["default"]["NAME"] = values["database_name"]
    connections["default"].settings_dict["NAME"] = values["database_name"]
    for name in ("SESSION_QUEUES", "API_THROTTLE_RATES", "SESSION_LIMIT_PER_USER"):
        setattr(settings, name, values[name])


def _process_client(barrier, results, index, per_client, work, context, values):
    _apply_child_settings(values)
    from django.db import connections

    try:
        barrier.wait(timeout=CLIENT_START_TIMEOUT)
        for i in range(per_client):
            work(context, index, i)
        results.put((index, None))
    except Exception as exc:  # reported by the parent
        results.put((index, repr(exc)))
    finally:
        for connection in connections.all():
            connection.close()


def run_processes(count, per_client, work, context):
    """Like run_clients, but each client is its own process (as web server workers are), so the
    figure is not capped by one interpreter's GIL. Returns elapsed seconds.

    Processes are spawned, not forked: a fork copies the locks that this process's threads (the
    broadcaster, the connection pool) hold at that moment, and a child that needs one waits
    forever. `work` must be a module-level function and `context` picklable."""
    import multiprocessing
    import queue

    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(count + 1)
    results = spawn.Queue()
    values = child_settings()
    processes = [
        spawn.Process(target=_process_client, args=(barrier, results, n, per_client, work, context, values))
        for n in range(count)
    ]
    for process in processes:
        process.start()
    try:
        try:
            barrier.wait(timeout=CLIENT_START_TIMEOUT)
        except threading.BrokenBarrierError:
            raise RuntimeError(
                f"client processes did not all start within {CLIENT_START_TIMEOUT:.0f} s "
                f"(exit codes: {[p.exitcode for p in processes]})"
            ) from None
        started = time.perf_counter()
        outcomes = {}
        while len(outcomes) < count:
            remaining = CLIENT_RUN_TIMEOUT - (time.perf_counter() - started)
            try:
                index, outcome = results.get(timeout=max(0.1, remaining))
            except queue.Empty:
                missing = sorted(set(range(count)) - set(outcomes))
                raise RuntimeError(
                    f"client process(es) {missing} did not finish within {CLIENT_RUN_TIMEOUT:.0f} s"
                ) from None
            outcomes[index] = outcome
        elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    failures = [outcome for outcome in outcomes.values() if outcome]
    if failures:
        raise RuntimeError(failures[0])
    return elapsed


# --- client work (module level, so that spawned processes can run it) ----------------------

_users = {}
_api_clients = {}


def _user(context):
    from django.contrib.auth.models import User

    if context["user_id"] not in _users:
        _users[context["user_id"]] = User.objects.get(pk=context["user_id"])
    return _users[context["user_id"]]


def work_create_then_start(context, index, i):
    from sessions import services

    actor = services.Actor.of_user(_user(context))
    session = services.session_create(
        title=f"Bench session {index}-{i}", initial_prompt="Make the tests pass.",
        repository=context["repository"], actor=actor,
    )
    services.session_start(session=session, actor=actor)


def work_create_and_start(context, index, i):
    from sessions import services

    services.session_create(
        title=f"Bench session {index}-{i}", initial_prompt="Make the tests pass.",
        repository=context["repository"], actor=services.Actor.of_user(_user(context)), start=True,
    )


def work_create_and_start_api(context, index, i):
    if index not in _api_clients:
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {context['token']}")
        _api_clients[index] = client
    response = _api_clients[index].post(
        "/api/v1/sessions",
        {"title": f"Bench API session {index}-{i}", "initial_prompt": "Go.", "repository": context["repository"],
         "start": True},
        format="json",
    )
    assert response.status_code == 201, response.content[:300]


def work_flip(context, index, i):
    from sessions import services
    from sessions.models import CodingSession

    session = CodingSession(pk=context["running"][index])  # the services lock the row by its id
    if i % 2 == 0:
        services.session_degrade(session=session)
    else:
        services.session_recover(session=session)


def purge(queue_names):
    from orchestrator.celery import app

    purged = 0
    with app.connection_for_write() as connection:
        for name in sorted(set(queue_names)):
            queue = connection.SimpleQueue(name)
            purged += queue.clear() or 0
            queue.close()
    return purged


def main():
    with bench_database():
        from django.conf import settings
        from django.contrib.auth.models import Group, User

        from sessions import services
        suffix = uuid.uuid4().hex[:8]
        settings.SESSION_QUEUES = {p: f"bench-{suffix}-{name}" for p, name in settings.SESSION_QUEUES.items()}
        # The benchmark is one user writing as fast as it can: no throttle, no cap on open sessions.
        settings.API_THROTTLE_RATES = {scope: None for scope in settings.API_THROTTLE_RATES}
        settings.SESSION_LIMIT_PER_USER = 0
        user = User.objects.create_user("bench", password="x")
        user.groups.add(Group.objects.get_or_create(name="operators")[0])
        populate(user)
        client = api_client_for(user)
        print(f"broker: {settings.CELERY_BROKER_URL.split('://')[0]}")
        print()

        p99s = [
            measure_list(client, "list 50, no filter", [{"page_size": 50}]),
            measure_list(client, "list 50, status=running", [{"page_size": 50, "status": "running"}]),
            measure_list(
                client,
                "list 50, status=failed&repository=..",
                [{"page_size": 50, "status": "failed", "repository": f"/srv/repos/service-{n:02d}"} for n in range(20)],
            ),
            measure_list(
                client,
                "list 50, priority=CRITICAL&type=review",
                [{"page_size": 50, "priority": "CRITICAL", "type": "review"}],
            ),
            measure_list(client, "list 50, tag=security", [{"page_size": 50, "tag": "security"}]),
            measure_list(
                client, "list 50, search=<rare word> (50 matches)", [{"page_size": 50, "search": w} for w in RARE_WORDS]
            ),
            measure_list(client, "list 50, search=<common word>", [{"page_size": 50, "search": w} for w in WORDS[:20]]),
            measure_list(
                client, "list 50, search=<absent word>", [{"page_size": 50, "search": f"qqxj{n}"} for n in range(20)]
            ),
        ]
        print(f"list p99 worst {max(p99s):.2f} ms (target <= 50 ms)")
        print()

        from orchestrator.testing import make_git_repository
        from orchestrator.tokens import token_issue

        repository = make_git_repository(Path(settings.REPOSITORY_ROOTS[0]) / f"bench-{suffix}")
        context = {"user_id": user.pk, "token": token_issue(user=user)[1],
                   "repository": str(repository)}
        for label, work in [("session_create then session_start (2 commits)", work_create_then_start),
                            ("session_create(start=True) (1 commit)", work_create_and_start)]:
            for count, per_client in [(1, 300), (8, 60)]:
                elapsed = run_clients(count, per_client, work, context)
                print(f"create+start, {label}, {count} thread(s): {count * per_client / elapsed:.0f} sessions/s")
            elapsed = run_processes(8, 80, work, context)
            print(f"create+start, {label}, 8 processes: {8 * 80 / elapsed:.0f} sessions/s (target >= 200/s)")

        for count, per_client in [(1, 200), (8, 40)]:
            elapsed = run_clients(count, per_client, work_create_and_start_api, context)
            target = " (target >= 200/s)" if count == 8 else ""
            print(
                f"create+start via API (1 POST, start=true), {count} thread(s): "
                f"{count * per_client / elapsed:.0f} sessions/s{target}"
            )
        elapsed = run_processes(8, 40, work_create_and_start_api, context)
        print(
            f"create+start via API (1 POST, start=true), 8 processes: {8 * 40 / elapsed:.0f} sessions/s "
            "(target >= 200/s)"
        )

        running = []
        for index in range(8):
            session = services.session_create(title=f"Transition bench {index}", initial_prompt="x",
                                              repository=str(repository))
            running.append(services.session_start(session=session, immediate=True, worker_id="bench").pk)
        context = {**context, "running": running}

        for count, per_client in [(1, 400), (8, 100)]:
            elapsed = run_clients(count, per_client, work_flip, context)
            print(
                f"transitions (degrade/recover, each client its own session), {count} thread(s): "
                f"{count * per_client / elapsed:.0f}/s"
            )
        elapsed = run_processes(8, 100, work_flip, context)
        print(f"transitions (degrade/recover, each client its own session), 8 processes: {800 / elapsed:.0f}/s")

        print(f"purged {purge(settings.SESSION_QUEUES.values())} bench jobs from the broker")


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as failure:
        sys.exit(f"bench.sessions_api failed: {failure}")
