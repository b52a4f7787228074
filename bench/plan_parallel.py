"""A plan run sequentially vs side by side in task worktrees (issue 22's benchmark).

    rm -rf var/bench-plan; DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench_plan \\
    REDIS_URL=redis://127.0.0.1:6379/9 ORCHESTRATOR_VAR_DIR=$PWD/var/bench-plan \\
    .venv/bin/python -m bench.plan_parallel [--rounds 3] [--starts 12] [--approvals 12]

A plan of 8 tasks, 4 independent pairs (b after a), each task two scripted steps answering after
STEP_SECONDS each, as a real model would; auto approval. One session with task_concurrency 1, one
with 4, alternately, `--rounds` times, on one worker (4 threads) with its OpenCode server. The worker
has run a sequential and a parallel session of the repository first (warm-up), so it keeps the spare
worktrees a 4-way session takes (sessions.execution.spares); before each measured session the
benchmark waits until they are ready (counted from the worker's log and the sessions' events).
Printed:
- wall time (session start -> completed) of each, and the ratio 4-way / sequential (median of rounds);
- the overhead of planning: each round also runs the 4-way session in mode `planner`, its plan the
  answer of a planning turn on OpenCode (the scripted model answers it after STEP_SECONDS): the time
  from start to the plan approved, and that session's wall time;
- the overhead of worktrees and merges of the 4-way runs: worktree creation, commit + merge (from the
  task.worktree and merge.done events' own timings), summed and per task;
- time from start (the plan approved at creation) to the first task's prompt (task.prompted row),
  over the rounds' sessions and `--starts` more 4-way sessions: p50 / p99 / max;
- time from approval to the first task's prompt: `--approvals` sessions (half task_concurrency 1,
  half 4) created with a plan and plan_approval required, started, paused in plan_review by the
  worker, then approved (plan_approve, as the API's approve does): p50 / p99 / max.
Every process it starts (the worker, its OpenCode server, the scripted LLM) is stopped by PID.
"""

import argparse
import json
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
    parser.add_argument("--approvals", type=int, default=12, help="sessions approved in plan_review")
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
    from sessions.planning.services import plan_approve, session_create_planned
    from sessions.services import session_start
    from tasks.models import Task

    for entry in DEFAULT_ROSTER:
        if not Agent.objects.filter(name=entry["name"]).exists():
            agent_register(**entry)

    # One repository for every session (each on its own branch): the worker keeps spare worktrees of a
    # repository it has run sessions of, as it would in production.
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"plan-bench-{uuid.uuid4().hex[:8]}")

    def one(concurrency, the_plan, label, *, planner=False):
        """A session of `the_plan`: supplied at creation, or (`planner`) answered by a planning turn on
        OpenCode after STEP_SECONDS, as a planner model would (the scripted model's @@plan)."""
        work = f"Run the plan.\n@@sleep {STEP_SECONDS}\n@@plan {json.dumps(the_plan)}" if planner else "Run the plan."
        session = session_create_planned(
            title=label, initial_prompt=work, repository=str(repository),
            planning={"plan_approval": "auto", "task_concurrency": concurrency,
                      **({"mode": "planner"} if planner else {})}, plan=None if planner else the_plan)
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
        plan_tasks = Task.objects.filter(session=session).exclude(plan_key="").exclude(plan_key__startswith="@")
        first_prompt = events.filter(type="task.prompted", payload__task_id__in=list(
            plan_tasks.values_list("pk", flat=True))).order_by("id").first()
        approved = events.filter(type="plan.approved").order_by("id").first()
        worktree_seconds = [e.payload.get("seconds", 0) for e in events.filter(type="task.worktree")]
        merge_seconds = [e.payload.get("seconds", 0) for e in events.filter(type="merge.done")]
        if options.timeline and concurrency > 1 and len(the_plan["tasks"]) > 2:
            for event in events.filter(type__in=TIMELINE).order_by("id"):
                print(f"  {event.created_at.timestamp() - started:7.2f} s {event.type:<16} "
                      f"task {event.payload.get('task_id', '')}")
        return {"wall": ended - started, "first_prompt": first_prompt.created_at.timestamp() - started,
                "approved": approved.created_at.timestamp() - started,
                "worktree": worktree_seconds, "merge": merge_seconds}

    def spares_taken():
        """Spares the sessions took so far: their session worktrees and their tasks' worktrees."""
        events = SessionEvent.objects.filter(type__in=("workspace.ready", "task.worktree"))
        return sum(1 for payload in events.values_list("payload", flat=True) if payload.get("spare"))

    def wait_for_spares(worker, count):
        """Until the worker has `count` spares of the repository ready: those it logged as ready
        minus those the sessions took (a condition, not a fixed sleep)."""
        def ready():
            made = worker.log_path.read_bytes().count(b"spare worktree ready")
            return made - spares_taken() >= count
        wait_until(ready, timeout=120, interval=0.1, message=f"{count} spare worktrees to be ready")

    def approval_to_first_prompt(concurrency, label, llm):
        session = session_create_planned(
            title=label, initial_prompt="Run the plan.", repository=str(repository),
            planning={"plan_approval": "required", "task_concurrency": concurrency}, plan=plan(1, sleep=0))
        session_start(session=session)
        wait_until(lambda: CodingSession.objects.filter(pk=session.pk, status="paused").exists(), timeout=120,
                   interval=0.05, message=f"{label} to pause in plan_review")
        asked = len(llm.requests)
        approved = time.time()
        plan_approve(session=CodingSession.objects.get(pk=session.pk))
        wait_until(lambda: CodingSession.objects.get(pk=session.pk).status in
                   ("completed", "partially_completed", "failed"), timeout=120, interval=0.05,
                   message=f"{label} to end")
        first_prompt = SessionEvent.objects.filter(session=session, type="task.prompted").order_by("id").first()
        if first_prompt is None:
            raise RuntimeError(f"{label} prompted no task: {CodingSession.objects.get(pk=session.pk).error}")
        # One session at a time here: the LLM's first request after the approval is this session's.
        first_request = min(entry["time"] for entry in llm.requests[asked:])
        return concurrency, first_prompt.created_at.timestamp() - approved, first_request - approved

    with ScriptedLLM() as llm:
        env = {"OPENCODE_SCRIPTED_LLM_URL": llm.base_url, "LOG_LEVEL": "INFO", "WORKSPACE_SPARES": 2}
        with running_worker(concurrency=4, env=env) as worker:
            # The OpenCode server started, the imports done; a parallel session has the worker keep
            # task_concurrency + 1 spares of the repository.
            one(1, plan(1, sleep=0), "warm-up sequential")
            one(4, plan(1, sleep=0), "warm-up parallel")
            spares_kept = 4 + 1
            sequential, parallel, planned, starts, approvals = [], [], [], [], []
            for round_number in range(1, options.rounds + 1):
                for concurrency, results, planner in ((1, sequential, False), (4, parallel, False), (4, planned, True)):
                    wait_for_spares(worker, spares_kept)
                    label = f"round {round_number} x{concurrency}{' planner' if planner else ''}"
                    result = one(concurrency, plan(), label, planner=planner)
                    results.append(result)
                    if not planner:
                        starts.append(result["first_prompt"])
                    planning = f"start -> plan approved {result['approved']:.2f} s, " if planner else ""
                    print(f"{label}: wall {result['wall']:.2f} s, {planning}start -> first task's prompt "
                          f"{result['first_prompt'] * 1000:.0f} ms", flush=True)
            for index in range(options.starts):
                wait_for_spares(worker, spares_kept)
                starts.append(one(4, plan(1, sleep=0), f"start {index}")["first_prompt"])
            for index in range(options.approvals):
                wait_for_spares(worker, spares_kept)
                approvals.append(approval_to_first_prompt(1 + 3 * (index % 2), f"approval {index}", llm))

    ratios = [p["wall"] / s["wall"] for s, p in zip(sequential, parallel, strict=True)]
    print(f"\nwall, task_concurrency 1: median {statistics.median(r['wall'] for r in sequential):.2f} s; "
          f"task_concurrency 4: median {statistics.median(r['wall'] for r in parallel):.2f} s")
    print(f"ratio 4-way / sequential: median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}; target <= 0.45)")
    ideal = 2 * 2 * STEP_SECONDS
    print(f"  the scripted model's own time: 8 tasks x 2 steps x {STEP_SECONDS} s = {8 * ideal / 2:.0f} s "
          f"sequential, {ideal:.0f} s on the critical path (2 tasks) 4-way")
    planning = [r["approved"] for r in planned]
    print(f"overhead of planning (mode planner, the model answering after {STEP_SECONDS} s): start -> plan approved "
          f"median {statistics.median(planning):.2f} s; wall of the 4-way run with planning median "
          f"{statistics.median(r['wall'] for r in planned):.2f} s (ratio to sequential "
          f"{statistics.median(p['wall'] / s['wall'] for s, p in zip(sequential, planned, strict=True)):.3f})")
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
          f"p99 {percentile(ms, 0.99):.0f} ms max {max(ms):.0f} ms")
    if approvals:
        ms = [prompt * 1000 for _, prompt, _ in approvals]
        print(f"approval (plan_review) -> first task's prompt: n={len(ms)} p50 {percentile(ms, 0.5):.0f} ms "
              f"p99 {percentile(ms, 0.99):.0f} ms max {max(ms):.0f} ms (target p99 <= 300 ms)")
        for concurrency in sorted({c for c, _, _ in approvals}):
            prompts = [prompt * 1000 for c, prompt, _ in approvals if c == concurrency]
            requests = [request * 1000 for c, _, request in approvals if c == concurrency]
            print(f"  task_concurrency {concurrency}: to the prompt p50 {percentile(prompts, 0.5):.0f} ms, "
                  f"max {max(prompts):.0f} ms; to the LLM's first request p50 {percentile(requests, 0.5):.0f} ms, "
                  f"max {max(requests):.0f} ms (n={len(prompts)})")


if __name__ == "__main__":
    main()
