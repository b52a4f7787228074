"""A plan run sequentially vs side by side in task worktrees (issue 22's benchmark).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/h9 REDIS_URL=redis://127.0.0.1:6379/9 \\
    ORCHESTRATOR_VAR_DIR=$PWD/var/bench-plan .venv/bin/python -m bench.plan_parallel [--rounds 2] [--starts 12]

A plan of 8 tasks, 4 independent pairs (b after a), each task two scripted steps answering after
STEP_SECONDS each, as a real model would; auto approval. One session with task_concurrency 1, one
with 4, alternately, `--rounds` times, on one worker (4 threads) with its OpenCode server. Printed:
- wall time (session start -> completed) of each, and the ratio 4-way / sequential (median of rounds);
- the overhead of worktrees and merges of the 4-way runs: worktree creation, commit + merge (from the
  task.worktree and merge.done events' own timings), summed and per task;
- time from start (the plan approved at creation) to the first task's prompt (task.prompted row),
  over the rounds' sessions and `--starts` more 4-way sessions: p50 / p99 / max.
Every process it starts (the worker, its OpenCode server, the scripted LLM) is stopped by PID.
"""

import argparse
import statistics
import time
import uuid

from bench.common import bench_database, percentile

STEP_SECONDS = 2
TIMELINE = ("task.worktree", "task.prompted", "merge.done", "task.completed", "workspace.ready")
ESTIMATE = {"optimistic": 0.5, "likely": 1, "pessimistic": 2}


def plan(pairs=4, *, sleep=STEP_SECONDS):
    tasks = []
    for pair in range(pairs):
        for half in ("a", "b"):
            key = f"p{pair}{half}"
            tasks.append({
                "key": key, "title": f"Part {key}", "capabilities": ["code_generation"],
                "prompt": f"@@sleep {sleep}\n@@write {key}.txt {key}\\n\n@@sleep {sleep}\n@@final {key} done",
                "files": [f"{key}.txt"], "estimate_hours": ESTIMATE, "after": [f"p{pair}a"] if half == "b" else [],
            })
    return {"summary": "four independent pairs", "tasks": tasks}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeline", action="store_true", help="print the 4-way sessions' task events")
    parser.add_argument("--starts", type=int, default=12, help="extra short 4-way sessions for the start latency")
    options = parser.parse_args()
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
    from sessions.planning.services import session_create_planned
    from sessions.services import session_start

    for entry in DEFAULT_ROSTER:
        if not Agent.objects.filter(name=entry["name"]).exists():
            agent_register(**entry)

    # One repository for every session (each on its own branch): the worker keeps spare worktrees of a
    # repository it has run sessions of, as it would in production.
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"plan-bench-{uuid.uuid4().hex[:8]}")

    def one(concurrency, the_plan, label):
        session = session_create_planned(
            title=label, initial_prompt="Run the plan.", repository=str(repository),
            planning={"plan_approval": "auto", "task_concurrency": concurrency}, plan=the_plan)
        started = time.time()
        session_start(session=session)
        wait_until(lambda: CodingSession.objects.get(pk=session.pk).status in
                   ("completed", "partially_completed", "failed"), timeout=600, interval=0.05,
                   message=f"{label} to end")
        ended = time.time()
        session = CodingSession.objects.get(pk=session.pk)
        if session.status != "completed":
            raise RuntimeError(f"{label} ended {session.status}: {session.error}")
        events = SessionEvent.objects.filter(session=session)
        first_prompt = events.filter(type="task.prompted").order_by("id").first()
        worktree_seconds = [e.payload.get("seconds", 0) for e in events.filter(type="task.worktree")]
        merge_seconds = [e.payload.get("seconds", 0) for e in events.filter(type="merge.done")]
        if options.timeline and concurrency > 1 and len(the_plan["tasks"]) > 2:
            for event in events.filter(type__in=TIMELINE).order_by("id"):
                print(f"  {event.created_at.timestamp() - started:7.2f} s {event.type:<16} "
                      f"task {event.payload.get('task_id', '')}")
        return {"wall": ended - started, "first_prompt": first_prompt.created_at.timestamp() - started,
                "worktree": worktree_seconds, "merge": merge_seconds}

    with ScriptedLLM() as llm:
        env = {"OPENCODE_SCRIPTED_LLM_URL": llm.base_url, "LOG_LEVEL": "WARNING", "WORKSPACE_SPARES": 2}
        with running_worker(concurrency=4, env=env):
            for index in range(2):  # the OpenCode server started, the imports done, the spares made
                one(1, plan(1, sleep=0), f"warm-up {index}")
                time.sleep(4)  # the spares are made 2 s after a session starts, on the spares thread
            sequential, parallel, starts = [], [], []
            for round_number in range(1, options.rounds + 1):
                for concurrency, results in ((1, sequential), (4, parallel)):
                    result = one(concurrency, plan(), f"round {round_number} x{concurrency}")
                    results.append(result)
                    time.sleep(5)  # the spares made again
                    starts.append(result["first_prompt"])
                    print(f"round {round_number}, task_concurrency {concurrency}: wall {result['wall']:.2f} s, "
                          f"start -> first prompt {result['first_prompt'] * 1000:.0f} ms", flush=True)
            for index in range(options.starts):
                # Sessions a few seconds apart, not back to back: each takes spares the spares thread
                # makes again in the background (2 s after a start, ~1 s each).
                time.sleep(5)
                starts.append(one(4, plan(1, sleep=0), f"start {index}")["first_prompt"])

    ratios = [p["wall"] / s["wall"] for s, p in zip(sequential, parallel, strict=True)]
    print(f"\nwall, task_concurrency 1: median {statistics.median(r['wall'] for r in sequential):.2f} s; "
          f"task_concurrency 4: median {statistics.median(r['wall'] for r in parallel):.2f} s")
    print(f"ratio 4-way / sequential: median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}; target <= 0.45)")
    ideal = 2 * 2 * STEP_SECONDS
    print(f"  the scripted model's own time: 8 tasks x 2 steps x {STEP_SECONDS} s = {8 * ideal / 2:.0f} s "
          f"sequential, {ideal:.0f} s on the critical path (2 tasks) 4-way")
    worktree = [s for r in parallel for s in r["worktree"]]
    merge = [s for r in parallel for s in r["merge"]]
    per_session = [sum(r["worktree"]) + sum(r["merge"]) for r in parallel]
    print(f"overhead of the 4-way runs (per session, summed over its 8 tasks): worktrees + merges "
          f"median {statistics.median(per_session):.2f} s")
    print(f"  worktree creation per task: p50 {percentile(worktree, 0.5) * 1000:.0f} ms, "
          f"max {max(worktree) * 1000:.0f} ms (n={len(worktree)})")
    print(f"  commit + merge per task: p50 {percentile(merge, 0.5) * 1000:.0f} ms, "
          f"max {max(merge) * 1000:.0f} ms (n={len(merge)})")
    ms = [s * 1000 for s in starts]
    print(f"start (plan approved at creation) -> first task's prompt: n={len(ms)} p50 {percentile(ms, 0.5):.0f} ms "
          f"p99 {percentile(ms, 0.99):.0f} ms max {max(ms):.0f} ms (target p99 <= 300 ms)")


if __name__ == "__main__":
    main()
