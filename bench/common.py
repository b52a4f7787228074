"""Shared set-up for benchmarks: a throwaway database and percentile helpers.

Run a benchmark from the project root, e.g.
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/orchestrator .venv/bin/python -m bench.agents_routing
It creates its own database (named test_<db>_bench), migrates it, and drops it at the end.
"""

import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")


def setup_django():
    import django

    django.setup()


@contextmanager
def bench_database(*, require_postgres=True):
    """Create, migrate and finally drop a database just for this benchmark."""
    setup_django()
    from django.db import connection

    if require_postgres and connection.vendor != "postgresql":
        sys.exit("this benchmark measures PostgreSQL: set DATABASE_URL=postgresql://postgres@127.0.0.1:5432/orchestrator")
    settings_dict = connection.settings_dict
    settings_dict.setdefault("TEST", {})
    if connection.vendor == "postgresql":
        settings_dict["TEST"]["NAME"] = f"test_{settings_dict['NAME']}_bench"
    old_name = settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        yield connection
    finally:
        from django.db import connections

        for other in connections.all():
            other.close()
        connection.creation.destroy_test_db(old_name, verbosity=0, keepdb=False)


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summarize_ms(label, seconds_list):
    values = [s * 1000 for s in seconds_list]
    print(
        f"{label}: n={len(values)} p50={percentile(values, 0.5):.2f} ms "
        f"p99={percentile(values, 0.99):.2f} ms max={max(values):.2f} ms mean={statistics.fmean(values):.2f} ms"
    )


@contextmanager
def timed(label):
    started = time.perf_counter()
    yield
    print(f"{label}: {(time.perf_counter() - started) * 1000:.1f} ms")
