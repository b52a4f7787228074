"""Recovery time: kill -9 of a worker -> every one of its sessions running again (issue 8, figure 2).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench_recovery REDIS_URL=redis://127.0.0.1:6379/11 \
    ORCHESTRATOR_VAR_DIR=$PWD/var/bench-recovery .venv/bin/python -m bench.execution_recovery [--kills 5] [--sessions 3]

Each round starts a worker, gives it sessions whose script sleeps mid-way, waits until every one has
a checkpoint, kills the worker with SIGKILL, and measures the time until a surviving worker has
claimed each of them again (status running, claimed by another worker). The reconciler runs every
RECONCILE_EVERY seconds here, as beat would run `sessions.reconcile`. The figure is the sum of
detection (SESSION_WORKER_LOST_SECONDS after the last heartbeat), the reconciler's period, SPEC's
first retry backoff (SESSION_RETRY_BASE_SECONDS) and the claim; all four are printed.
"""

import argparse
import os
import signal
import statistics
import time
import uuid

from bench.common import bench_database, percentile

HEARTBEAT = 2.0
LOST_AFTER = 10.0
RETRY_BASE = 10.0
RECONCILE_EVERY = 2.0
SCRIPT = "@@write a.txt A\\n\n@@sleep 600\n@@write b.txt B\\n\n@@final done"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=3)
    options = parser.parse_args()
    os.environ.update({
        "SESSION_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "SESSION_WORKER_LOST_SECONDS": str(LOST_AFTER),
        "SESSION_RETRY_BASE_SECONDS": str(RETRY_BASE),
        "LOG_LEVEL": "WARNING",
    })
    with bench_database():
        run(options)


def run(options):
    from django.conf import settings

    from agents.models import Agent
    from agents.roster import DEFAULT_ROSTER
    from agents.services import agent_register
    from orchestrator.testing import make_git_repository, running_worker, wait_until
    from sessions.models import CodingSession, SessionEvent
    from sessions.opencode.scripted_llm import ScriptedLLM
    from sessions.recovery import session_reconcile
    from sessions.services import session_create, session_start, session_stop

    for entry in DEFAULT_ROSTER:
        if not Agent.objects.filter(name=entry["name"]).exists():
            agent_register(**entry)
    print(f"settings: heartbeat {HEARTBEAT} s, lost after {LOST_AFTER} s, first retry after {RETRY_BASE} s, "
          f"reconciler every {RECONCILE_EVERY} s; {options.sessions} sessions per killed worker")
    times = []
    with ScriptedLLM() as llm:
        env = {"OPENCODE_SCRIPTED_LLM_URL": llm.base_url}
        with running_worker(concurrency=16, env=env) as survivor:
            for round_number in range(1, options.kills + 1):
                with running_worker(concurrency=16, env=env) as doomed:
                    sessions = []
                    for index in range(options.sessions):
                        repository = make_git_repository(
                            settings.REPOSITORY_ROOTS[0] / f"recovery-{uuid.uuid4().hex[:8]}"
                        )
                        session = session_create(title=f"Recovery {round_number}.{index}", initial_prompt=SCRIPT,
                                                 repository=str(repository))
                        sessions.append(session_start(session=session))
                    # Only sessions the doomed worker claimed count for this kill.
                    wait_until(lambda sessions=sessions: all(CodingSession.objects.get(pk=s.pk).status == "running"
                                                             for s in sessions),
                               timeout=120, message="every session to run")
                    wait_until(lambda sessions=sessions: all(
                        SessionEvent.objects.filter(session=s, type="session.checkpoint").exists() for s in sessions
                    ), timeout=120, message="a checkpoint in every session")
                    owned = [s for s in sessions
                             if CodingSession.objects.get(pk=s.pk).worker_id.endswith(f":{doomed.pid}")]
                    killed_at = time.monotonic()
                    os.kill(doomed.pid, signal.SIGKILL)
                    doomed.wait(timeout=10)
                if not owned:
                    print(f"kill {round_number}: the survivor had claimed every session; round not counted")
                    _stop_all(sessions, session_stop)
                    continue
                next_reconcile = killed_at
                while True:
                    now = time.monotonic()
                    if now >= next_reconcile:
                        session_reconcile()
                        next_reconcile = now + RECONCILE_EVERY
                    states = {
                        s.pk: CodingSession.objects.values_list("status", "worker_id").get(pk=s.pk) for s in owned
                    }
                    if all(
                        status == "running" and worker.endswith(f":{survivor.pid}")
                        for status, worker in states.values()
                    ):
                        break
                    if now - killed_at > 300:
                        raise SystemExit(f"round {round_number}: sessions not running again after 300 s: {states}")
                    time.sleep(0.1)
                elapsed = time.monotonic() - killed_at
                times.append(elapsed)
                print(
                    f"kill {round_number}: {len(owned)} sessions of the killed worker running again after "
                    f"{elapsed:.1f} s"
                )
                _stop_all(sessions, session_stop)
    print(f"recovery, kill -9 -> all of its sessions running again: p50 {statistics.median(times):.1f} s, "
          f"max {max(times):.1f} s over {len(times)} kills "
          f"(bound: lost-after {LOST_AFTER} + reconcile period {RECONCILE_EVERY} + first backoff {RETRY_BASE} + claim; "
          f"p90 {percentile(times, 0.9):.1f} s)")


def _stop_all(sessions, session_stop):
    from sessions.models import CodingSession

    for session in sessions:
        current = CodingSession.objects.get(pk=session.pk)
        if current.status in ("running", "degraded", "paused"):
            session_stop(session=current, reason="benchmark round over")


if __name__ == "__main__":
    main()
