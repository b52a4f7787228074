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
import threading
import time
import uuid

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
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
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


def run_clients(count, per_client, work):
    """Run `work(client_index, i)` per_client times in each of `count` threads; return elapsed s."""
    from django.db import connection

    barrier = threading.Barrier(count + 1)
    errors = []

    def client(index):
        try:
            barrier.wait()
            for i in range(per_client):
                work(index, i)
        except Exception as exc:  # reported after the run
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def _process_client(barrier, results, index, per_client, work):
    from django.db import connections

    for connection in connections.all():
        connection.close()
    barrier.wait()
    try:
        for i in range(per_client):
            work(index, i)
        results.put(None)
    except Exception as exc:  # reported by the parent
        results.put(repr(exc))
    finally:
        for connection in connections.all():
            connection.close()


def run_processes(count, per_client, work):
    """Like run_clients, but each client is its own process (as web server workers are), so the
    figure is not capped by one interpreter's GIL. Returns elapsed seconds."""
    import multiprocessing

    from django.db import connections

    for connection in connections.all():
        connection.close()
        if getattr(connection, "pool", None) is not None:
            # A forked child must not inherit the pool's open sockets (nor its threads, which
            # fork does not copy): each process opens a pool of its own.
            connection.close_pool()
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(count + 1)
    results = context.Queue()
    processes = [
        context.Process(target=_process_client, args=(barrier, results, n, per_client, work)) for n in range(count)
    ]
    for process in processes:
        process.start()
    barrier.wait()
    started = time.perf_counter()
    outcomes = [results.get() for _ in processes]
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    failures = [outcome for outcome in outcomes if outcome]
    if failures:
        raise RuntimeError(failures[0])
    return elapsed


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

        def create_then_start(index, i):
            session = services.session_create(
                title=f"Bench session {index}-{i}", initial_prompt="Make the tests pass.",
                repository="/srv/repos/bench", actor=services.Actor.of_user(user),
            )
            services.session_start(session=session, actor=services.Actor.of_user(user))

        def create_and_start(index, i):
            services.session_create(
                title=f"Bench session {index}-{i}", initial_prompt="Make the tests pass.",
                repository="/srv/repos/bench", actor=services.Actor.of_user(user), start=True,
            )

        for label, work in [("session_create then session_start (2 commits)", create_then_start),
                            ("session_create(start=True) (1 commit)", create_and_start)]:
            for count, per_client in [(1, 300), (8, 60)]:
                elapsed = run_clients(count, per_client, work)
                print(f"create+start, {label}, {count} thread(s): {count * per_client / elapsed:.0f} sessions/s")
            elapsed = run_processes(8, 80, work)
            print(f"create+start, {label}, 8 processes: {8 * 80 / elapsed:.0f} sessions/s (target >= 200/s)")

        api_clients = [api_client_for(user) for _ in range(8)]

        def create_and_start_api(index, i):
            response = api_clients[index].post(
                "/api/v1/sessions",
                {
                    "title": f"Bench API session {index}-{i}",
                    "initial_prompt": "Go.",
                    "repository": "/srv/r",
                    "start": True,
                },
                format="json",
            )
            assert response.status_code == 201, response.content[:300]

        for count, per_client in [(1, 200), (8, 40)]:
            elapsed = run_clients(count, per_client, create_and_start_api)
            target = " (target >= 200/s)" if count == 8 else ""
            print(
                f"create+start via API (1 POST, start=true), {count} thread(s): "
                f"{count * per_client / elapsed:.0f} sessions/s{target}"
            )
        elapsed = run_processes(8, 40, create_and_start_api)
        print(
            f"create+start via API (1 POST, start=true), 8 processes: {8 * 40 / elapsed:.0f} sessions/s (target "
            ">= 200/s)"
        )

        running = []
        for index in range(8):
            session = services.session_create(
                title=f"Transition bench {index}", initial_prompt="x", repository="/srv/r"
            )
            running.append(services.session_start(session=session, immediate=True, worker_id="bench").pk)

        def flip(index, i):
            if i % 2 == 0:
                services.session_degrade(session=running[index])
            else:
                services.session_recover(session=running[index])

        for count, per_client in [(1, 400), (8, 100)]:
            elapsed = run_clients(count, per_client, flip)
            print(
                f"transitions (degrade/recover, each client its own session), {count} thread(s): "
                f"{count * per_client / elapsed:.0f}/s"
            )
        elapsed = run_processes(8, 100, flip)
        print(f"transitions (degrade/recover, each client its own session), 8 processes: {800 / elapsed:.0f}/s")

        print(f"purged {purge(settings.SESSION_QUEUES.values())} bench jobs from the broker")


if __name__ == "__main__":
    main()
