"""Routing among 10,000 agents with random capability sets (PostgreSQL).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/h_agents .venv/bin/python -m bench.agents_routing

Prints p50/p99 of one routing decision (dry run and reserving), and routings/s
with 8 concurrent clients (threads, each its own connection). Target: p99 <= 20 ms.
"""

import random
import threading
import time

from bench.common import bench_database, percentile, summarize_ms

AGENTS = 10_000
DECISIONS = 1_000
CLIENTS = 8
PER_CLIENT = 250
TARGET_P99_MS = 20.0


def populate(rng):
    from agents.models import Agent, AgentType
    from agents.routing import CAPABILITIES, TIERS, capability_mask

    Agent.objects.all().delete()
    rows = []
    for index in range(AGENTS):
        capacity = rng.randint(1, 50)
        rows.append(
            Agent(
                name=f"AGENT-BENCH-{index:05d}",
                agent_type=rng.choice(AgentType.values),
                capability_mask=capability_mask(rng.sample(CAPABILITIES, rng.randint(3, 10))),
                max_concurrent_tasks=capacity,
                current_load=rng.randint(0, capacity),
                tier=rng.choices(TIERS, weights=(5, 15, 50, 20, 10))[0],
            )
        )
    Agent.objects.bulk_create(rows, batch_size=2000)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE agents_agent")


def requirement(rng):
    from agents.models import AgentType
    from agents.routing import CAPABILITIES

    return {
        "required_capabilities": rng.sample(CAPABILITIES, rng.randint(1, 3)),
        "preferred_type": rng.choice([None, *AgentType.values]),
    }


def run_series(rng, *, reserve, count):
    from agents.services import NoAgentAvailable, agent_route

    timings, misses = [], 0
    for _ in range(count):
        kwargs = requirement(rng)
        started = time.perf_counter()
        try:
            agent_route(reserve=reserve, **kwargs)
        except NoAgentAvailable:
            misses += 1
        timings.append(time.perf_counter() - started)
    return timings, misses


def run_concurrent(seed):
    from django.db import connection

    results, lock = [], threading.Lock()
    barrier = threading.Barrier(CLIENTS + 1)

    def client(index):
        rng = random.Random(seed + index)
        try:
            barrier.wait()
            timings, misses = run_series(rng, reserve=True, count=PER_CLIENT)
            with lock:
                results.append((timings, misses))
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    timings = [value for series, _ in results for value in series]
    misses = sum(miss for _, miss in results)
    return timings, misses, elapsed


def main():
    rng = random.Random(42)
    with bench_database():
        started = time.perf_counter()
        populate(rng)
        print(f"populated {AGENTS} agents in {time.perf_counter() - started:.1f} s")
        run_series(rng, reserve=False, count=50)  # warm-up

        timings, misses = run_series(rng, reserve=False, count=DECISIONS)
        summarize_ms(f"one routing decision, dry run ({misses} without candidate)", timings)
        p99_dry = percentile([t * 1000 for t in timings], 0.99)

        timings, misses = run_series(rng, reserve=True, count=DECISIONS)
        summarize_ms(f"one routing decision, reserving ({misses} without candidate)", timings)
        p99_reserve = percentile([t * 1000 for t in timings], 0.99)

        timings, misses, elapsed = run_concurrent(seed=1000)
        summarize_ms(f"{CLIENTS} concurrent clients, reserving ({misses} without candidate)", timings)
        print(
            f"throughput: {len(timings) / elapsed:.0f} routings/s with {CLIENTS} clients ({len(timings)} in "
            f"{elapsed:.2f} s)"
        )
        worst = max(p99_dry, p99_reserve)
        verdict = "met" if worst <= TARGET_P99_MS else "MISSED"
        print(f"target: p99 <= {TARGET_P99_MS:.0f} ms single client -> {verdict} (worst p99 {worst:.2f} ms)")


if __name__ == "__main__":
    main()
