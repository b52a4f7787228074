"""Task graph benchmark: analysis of a 10,000-task, 30,000-edge DAG loaded from PostgreSQL,
and decomposition of a depth-3 tree.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/h_tasks .venv/bin/python -m bench.tasks_graph

Targets: analysis (queries + order, waves, critical path, slack) <= 1 s; decomposition <= 200 ms.
"""

import os
import random
import time

from bench.common import bench_database, percentile, summarize_ms

TASKS = 10_000
EDGES = 30_000
ROUNDS = 5


def build_session_graph(random_source):
    from django.db import connection

    from tasks import services
    from tasks.models import Task, TaskDependency
    from tasks.tests.factories import SessionFactory

    session = SessionFactory(title="Benchmark graph")
    root = services.task_root_for_session(session=session)
    rows = []
    for index in range(TASKS):
        likely = random_source.uniform(0.25, 6)
        row = Task(
            session=session, parent=root, title=f"Task {index}", order=index,
            optimistic_hours=likely * 0.5, likely_hours=likely, pessimistic_hours=likely * 2,
        )
        row.derive_estimate()
        rows.append(row)
    Task.objects.bulk_create(rows, batch_size=2000)
    ids = [row.pk for row in rows]
    # Edges only point forward in a random permutation: acyclic by construction.
    pairs = set()
    while len(pairs) < EDGES:
        a, b = sorted(random_source.sample(range(TASKS), 2))
        pairs.add((ids[a], ids[b]))
    kinds = ["finish_to_start"] * 8 + ["start_to_start", "finish_to_finish"]
    TaskDependency.objects.bulk_create(
        (
            TaskDependency(prerequisite_id=a, dependent_id=b, dependency_type=random_source.choice(kinds))
            for a, b in pairs
        ),
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_task; ANALYZE tasks_taskdependency")
    return root


def main():
    random_source = random.Random(5)
    with bench_database() as connection:
        from django.db import reset_queries
        from django.test.utils import CaptureQueriesContext

        from tasks import selectors, services
        from tasks.decomposition import plan_decomposition
        from tasks.estimates import pert
        from tasks.services import task_decompose
        from tasks.tests.factories import SessionFactory

        started = time.perf_counter()
        root = build_session_graph(random_source)
        print(f"inserted {TASKS} tasks and {EDGES} edges in {time.perf_counter() - started:.1f} s")

        timings, cpu = [], []
        for _ in range(ROUNDS):
            reset_queries()
            with CaptureQueriesContext(connection) as queries:
                begin, begin_cpu = time.perf_counter(), time.process_time()
                graph = selectors.task_graph(task=root)
                timings.append(time.perf_counter() - begin)
                cpu.append(time.process_time() - begin_cpu)
        print(f"load average when measured: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        summarize_ms("graph analysis from the database (10,000 tasks, 30,000 edges), wall", timings)
        summarize_ms("  same, CPU time of this process (excludes PostgreSQL's own work)", cpu)
        print(
            f"  queries per analysis: {len(queries.captured_queries)}; critical path {len(graph['critical_path'])} "
            f"tasks, {len(graph['waves'])} waves, total {graph['total_expected_hours']:.1f} h expected"
        )
        print(f"  target p50 <= 1000 ms: {'met' if percentile(timings, 0.5) <= 1.0 else 'MISSED'}")

        plan_times, write_times, sizes = [], [], []
        for _ in range(ROUNDS * 4):
            begin = time.perf_counter()
            plan = plan_decomposition(title="Build the orders microservice", estimate=pert(100, 200, 300), max_depth=3)
            plan_times.append(time.perf_counter() - begin)
            sizes.append((plan.depth, sum(1 for _ in plan.walk())))
        for index in range(ROUNDS * 2):
            session = SessionFactory(title=f"Decompose {index}")
            target = services.task_root_for_session(session=session)
            services.task_update(task=target, optimistic_hours=100, likely_hours=200, pessimistic_hours=300)
            begin = time.perf_counter()
            task_decompose(task=target, template="microservice", max_depth=3)
            write_times.append(time.perf_counter() - begin)
        depth, count = sizes[0]
        summarize_ms(f"decomposition plan, depth {depth}, {count} subtasks (pure)", plan_times)
        summarize_ms(f"decomposition written to the database, depth {depth}, {count} subtasks", write_times)
        print(f"  target p50 <= 200 ms: {'met' if percentile(write_times, 0.5) <= 0.2 else 'MISSED'}")


if __name__ == "__main__":
    main()
