"""WORKER_NICE: a worker's own CPU time yields to the OpenCode servers it starts (autogroup nice)."""

import subprocess
import sys
from pathlib import Path

from django.conf import settings

AUTOGROUPS = Path("/proc/sys/kernel/sched_autogroup_enabled")

# Runs in a session of its own (its own autogroup), so the test process keeps its priority. Then it
# starts a child in a new session, as OpenCode servers are started (start_new_session).
PROBE = """
import os, subprocess, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
from orchestrator.celery import lower_worker_priority
applied = lower_worker_priority(int(sys.argv[1]))
child = subprocess.run(["cat", "/proc/self/autogroup"], capture_output=True, text=True, start_new_session=True)
print(applied, open("/proc/self/autogroup").read().split()[-1], child.stdout.split()[-1])
"""


def test_the_worker_lowers_its_own_autogroup_and_not_the_servers_it_starts_in_sessions_of_their_own():
    autogroups = AUTOGROUPS.exists() and AUTOGROUPS.read_text().strip() == "1"
    result = subprocess.run([sys.executable, "-c", PROBE, "7"], cwd=settings.BASE_DIR, capture_output=True,
                            text=True, timeout=60, start_new_session=True, check=True)
    applied, worker_nice, server_nice = result.stdout.split()
    assert applied == str(autogroups)
    assert int(worker_nice) == (7 if autogroups else 0)
    assert int(server_nice) == 0
