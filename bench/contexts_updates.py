"""Context write throughput under optimistic locking, and merge time on large documents.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/h_contexts .venv/bin/python -m bench.contexts_updates

1. One hot context, 8 writer threads doing read-modify-write (read the row,
   context_set with the version read, retry on StaleVersion): successful
   updates/s, retries, latency of a successful update including its retries.
2. The same 8 writers on 8 separate contexts (no contention).
   Also the engine's path on one hot session context: 8 threads calling
   context_record_task_output, which retries inside the service from a fresh
   read, so its collision window is only the service's own read-to-update.
3. Merge of two 10,000-key documents (half the keys shared, half of those
   conflicting, nested objects and lists): the pure merge per strategy, and the
   service merge that writes the result and its history into the target.

Targets (this project's own, no SPEC figure): hot context >= 150 updates/s,
separate contexts >= 300 updates/s, pure merge <= 250 ms, written merge <= 3 s.
"""

import os
import random
import threading
import time

from bench.common import bench_database, summarize_ms

WRITERS = 8
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
KEYS = 10_000

TARGETS = {"hot": 150, "separate": 300, "pure_merge_ms": 250, "service_merge_ms": 3000}


def run_writers(context_ids, seconds):
    """Each writer updates context_ids[i % len] until the deadline; answers (updates, retries, latencies)."""
    from django.db import connection

    from contexts import services
    from contexts.models import Context
    from orchestrator.errors import StaleVersion

    latencies = []
    counts = {"updates": 0, "retries": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(WRITERS)
    deadline_box = {}

    def writer(index):
        context_id = context_ids[index % len(context_ids)]
        mine, my_retries, my_latencies = 0, 0, []
        try:
            barrier.wait()
            deadline = deadline_box.setdefault("at", time.perf_counter() + seconds)
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                while True:
                    current = Context.objects.get(pk=context_id)
                    changes = {"counter": current.data.get("counter", 0) + 1, f"writers.w{index}": mine}
                    try:
                        services.context_set(
                            context=current, changes=changes, expected_version=current.version, actor=f"bench-{index}"
                        )
                        break
                    except StaleVersion:
                        my_retries += 1
                my_latencies.append(time.perf_counter() - started)
                mine += 1
        finally:
            connection.close()
            with lock:
                counts["updates"] += mine
                counts["retries"] += my_retries
                latencies.extend(my_latencies)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(WRITERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return counts["updates"], counts["retries"], latencies, elapsed


def _make_session():
    from sessions.models import CodingSession

    return CodingSession.objects.create(title="bench", initial_prompt="bench", repository="bench/repo")


def run_engine_writers(session, seconds):
    from django.db import connection

    from contexts import services

    latencies, counts, lock = [], {"updates": 0}, threading.Lock()
    barrier = threading.Barrier(WRITERS)
    deadline_box = {}

    def writer(index):
        mine, my_latencies = 0, []
        try:
            barrier.wait()
            deadline = deadline_box.setdefault("at", time.perf_counter() + seconds)
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                services.context_record_task_output(
                    session=session, task_key=f"w{index}_{mine}", output={"ok": True}, actor="bench"
                )
                my_latencies.append(time.perf_counter() - started)
                mine += 1
        finally:
            connection.close()
            with lock:
                counts["updates"] += mine
                latencies.extend(my_latencies)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(WRITERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts["updates"], latencies, time.perf_counter() - started


def verify(context_ids, expected_updates):
    from contexts.models import Context, ContextChange

    rows = Context.objects.filter(pk__in=context_ids)
    counter = sum(row.data.get("counter", 0) for row in rows)
    versions = sum(row.version - 1 for row in rows)
    history_versions = (
        ContextChange.objects.filter(context_id__in=context_ids).values("context_id", "version").distinct().count()
    )
    ok = counter == versions == history_versions == expected_updates
    return ok, counter, versions, history_versions


def make_documents():
    rng = random.Random(6)
    source, target = {}, {}
    for index in range(KEYS):
        value = {"n": index, "tags": [f"t{index % 7}", f"u{index % 5}"], "note": f"value {index}"}
        source[f"k{index}"] = value
    for index in range(KEYS // 2, KEYS + KEYS // 2):
        value = {"n": index, "tags": [f"t{index % 3}"], "note": f"value {index}"}
        if index < KEYS and rng.random() < 0.5:
            value = dict(source[f"k{index}"])  # shared and equal: not a conflict
        target[f"k{index}"] = value
    return source, target


def main():
    with bench_database():
        from django.db import connection

        from contexts import documents, services
        from contexts.documents import ChangeTimes
        from contexts.models import Context, Scope
        from orchestrator.errors import Conflict

        print(
            f"PostgreSQL {connection.pg_version}, {WRITERS} writer threads, {SECONDS:.0f} s per run, CPUs: "
            f"{os.cpu_count()}"
        )

        hot = services.context_create(scope=Scope.GLOBAL, name="hot", data={"counter": 0}, actor="bench")
        updates, retries, latencies, elapsed = run_writers([hot.pk], SECONDS)
        ok, *figures = verify([hot.pk], updates)
        print(
            f"hot context, {WRITERS} writers: {updates / elapsed:.0f} updates/s (target >= {TARGETS['hot']}), "
            f"{updates} updates, {retries} retries ({retries / max(updates, 1):.2f} per update), "
            f"no lost writes: {ok} (counter, versions, history versions = {figures})"
        )
        summarize_ms("  successful update incl. retries", latencies)

        separate = [
            services.context_create(scope=Scope.GLOBAL, name=f"sep{i}", data={"counter": 0}, actor="bench").pk
            for i in range(WRITERS)
        ]
        updates, retries, latencies, elapsed = run_writers(separate, SECONDS)
        ok, *figures = verify(separate, updates)
        print(
            f"8 separate contexts, {WRITERS} writers: {updates / elapsed:.0f} updates/s "
            f"(target >= {TARGETS['separate']}), {updates} updates, {retries} retries, no lost writes: {ok}"
        )
        summarize_ms("  successful update", latencies)

        session = _make_session()
        engine_context = services.context_for_session(session=session)
        updates, latencies, elapsed = run_engine_writers(session, SECONDS)
        engine_context.refresh_from_db()
        print(
            f"hot session context, engine path (context_record_task_output), {WRITERS} writers: "
            f"{updates / elapsed:.0f} updates/s, {updates} updates, all recorded: "
            f"{len(engine_context.data.get('tasks', {})) == updates and engine_context.version == updates + 1}"
        )
        summarize_ms("  recorded output incl. internal retries", latencies)

        source_doc, target_doc = make_documents()
        conflicts = len(documents.merge(source=source_doc, target=target_doc, strategy="prefer_source").conflicts)
        print(
            f"merge of two {KEYS}-key documents ({documents.document_size(source_doc) // 1024} KiB each, "
            f"{conflicts} conflicting leaf paths):"
        )
        times = {"source_times": ChangeTimes({}, 1.0), "target_times": ChangeTimes({}, 2.0)}
        manual_resolutions = {
            c.path: c.source for c in documents.merge(source=source_doc, target=target_doc, strategy="manual").conflicts
        }
        for strategy in documents.STRATEGIES:
            kwargs = dict(times) if strategy == "last_write_wins" else {}
            if strategy == "manual":
                kwargs["resolutions"] = manual_resolutions
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                documents.merge(source=source_doc, target=target_doc, strategy=strategy, **kwargs)
                runs.append(time.perf_counter() - started)
            summarize_ms(f"  pure {strategy:<16} (target <= {TARGETS['pure_merge_ms']} ms)", runs)

        started = time.perf_counter()
        diff = documents.diff(target_doc, source_doc)
        print(f"  diff: {(time.perf_counter() - started) * 1000:.1f} ms, {len(diff.paths)} paths")

        source = services.context_create(scope=Scope.GLOBAL, name="merge-source", data=source_doc, actor="bench")
        for strategy in documents.STRATEGIES:
            target = services.context_create(
                scope=Scope.GLOBAL, name=f"merge-target-{strategy}", data=target_doc, actor="bench"
            )
            if strategy == "manual":
                started = time.perf_counter()
                try:
                    services.context_merge(sources=[source], target=target, strategy=strategy, actor="bench")
                except Conflict as exc:
                    listed = len(exc.details["conflicts"])
                print(
                    f"  service manual, first call (409, {listed} conflicts listed): "
                    f"{(time.perf_counter() - started) * 1000:.0f} ms"
                )
            started = time.perf_counter()
            outcome = services.context_merge(
                sources=[source],
                target=target,
                strategy=strategy,
                actor="bench",
                resolutions=manual_resolutions if strategy == "manual" else None,
            )
            elapsed = time.perf_counter() - started
            written = Context.objects.get(pk=target.pk)
            print(
                f"  service {strategy:<16} write + history: {elapsed * 1000:.0f} ms (target <= "
                f"{TARGETS['service_merge_ms']} ms), "
                f"{len(outcome.changes.paths)} history rows, version {written.version}"
            )


if __name__ == "__main__":
    main()
