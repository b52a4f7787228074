"""Direct baseline of the execution benchmark: the scripted 3-step job straight against OpenCode.

Each job is what a session of the orchestrator does in one task, without the orchestrator: create
an OpenCode session in its own git worktree, prompt it with write → bash → final (the scripted LLM
answers instantly), and wait for `session.idle` on the global event stream; the job is checked (the
file exists, three LLM steps). Worktrees are prepared before timing. Printed: one job at a time
(several rounds) and 20 concurrent jobs (wall time of the batch and per-job latency), with a fresh
worktree per job (as the orchestrator runs sessions) and with every job in one directory.

    .venv/bin/python -m bench.opencode_direct [--concurrency 20] [--rounds 5] [--directories both]

No database is needed. The orchestrator side (API start → completed) is compared with these
figures by the execution benchmark; target there: ratio ≤ 1.10 at 20 concurrent.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import percentile, setup_django, summarize_ms

SCRIPT = (
    "Benchmark job {number}.\n"
    "@@write notes/hello.txt Hello from job {number}\\n\n"
    "@@bash ls -1 notes > listing.txt\n"
    "@@final Done: job {number}."
)


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_repository(root):
    """A repository of its own: the README names `root`, so its first commit (OpenCode's project id)
    differs from every other's. Same content made in the same second gives the same commit, and
    OpenCode then takes all those repositories for one project, refreshing the list of every
    directory it has seen of it each time it opens another."""
    repo = Path(root) / "repo"
    repo.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "README.md").write_text(f"# bench {Path(root).name}\n")
    git("add", ".", cwd=repo)
    git("-c", "user.email=bench@example.com", "-c", "user.name=bench", "commit", "-qm", "init", cwd=repo)
    return repo


def make_worktrees(repo, root, names):
    paths = []
    for name in names:
        path = Path(root) / "worktrees" / name
        git("worktree", "add", "-q", "-b", f"bench/{name}", str(path), cwd=repo)
        paths.append(path)
    return paths


def run_job(client, collector, directory, number, llm):
    """One job: session + prompt + wait for idle; returns its duration in seconds."""
    started = time.perf_counter()
    session = client.create_session(title=f"bench {number}", directory=directory)
    session_id = session["id"]
    client.prompt_async(session_id, text=SCRIPT.format(number=number), directory=directory)
    idle = collector.wait(lambda event: event.type == "session.idle" and event.session_id == session_id,
                          timeout=300)
    elapsed = time.perf_counter() - started
    if idle is None:
        raise RuntimeError(f"job {number} did not finish")
    if not (Path(directory) / "notes" / "hello.txt").exists():
        raise RuntimeError(f"job {number}: the file was not written")
    steps = [entry["kind"] for entry in llm.requests_for(session_id)]
    if steps != ["write", "bash", "final"]:
        raise RuntimeError(f"job {number}: unexpected LLM steps {steps}")
    return elapsed


def run_batch(client, collector, directories, llm, first_number):
    durations = [None] * len(directories)
    failures = []

    def work(index, directory):
        try:
            durations[index] = run_job(client, collector, str(directory), first_number + index, llm)
        except Exception as error:  # noqa: BLE001 - reported after the batch
            failures.append(error)

    threads = [threading.Thread(target=work, args=(index, directory)) for index, directory in enumerate(directories)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise failures[0]
    return wall, durations


def measure(mode, options, root, repo, client, collector, llm):
    """Run and print the single and concurrent figures with one fresh worktree per job
    (`fresh`, as the orchestrator runs sessions) or all jobs in one directory (`shared`)."""
    total = 1 + options.rounds + options.concurrency
    if mode == "fresh":
        directories = make_worktrees(repo, root, [f"job-{number}" for number in range(total)])
    else:
        directories = [make_worktrees(repo, root, ["shared"])[0]] * total
    print(f"--- {mode} directories ({'one git worktree per job' if mode == 'fresh' else 'all jobs in one'})")
    warm = run_job(client, collector, str(directories[0]), 0, llm)
    print(f"warm-up job: {warm * 1000:.0f} ms")
    singles = [run_job(client, collector, str(directories[1 + index]), 1 + index, llm)
               for index in range(options.rounds)]
    summarize_ms("1 job at a time, per job", singles)
    wall, durations = run_batch(client, collector, directories[1 + options.rounds:], llm, 1 + options.rounds)
    print(f"{options.concurrency} concurrent jobs: wall {wall * 1000:.0f} ms, {options.concurrency / wall:.2f} jobs/s")
    summarize_ms(f"{options.concurrency} concurrent jobs, per job", durations)
    print(f"direct baseline ({mode}): 1 job p50 {percentile(singles, 0.5) * 1000:.0f} ms; "
          f"{options.concurrency} concurrent wall {wall * 1000:.0f} ms "
          "(orchestrator target: <= 1.10x the direct figure at 20 concurrent)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="sequential single-job rounds")
    parser.add_argument("--directories", choices=("fresh", "shared", "both"), default="both",
                        help="one git worktree per job (as the orchestrator does), one shared directory, or both")
    parser.add_argument("--snapshot", choices=("on", "off"), default="on",
                        help="OpenCode's own snapshots: on (its default) or off (as the orchestrator runs it)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args(argv)

    setup_django()
    from django.conf import settings

    from sessions.opencode.events import EventCollector
    from sessions.opencode.scripted_llm import ScriptedLLM, opencode_config
    from sessions.opencode.server import OpenCodeServer

    root = Path(tempfile.mkdtemp(prefix="bench-opencode-", dir=settings.VAR_DIR))
    llm = ScriptedLLM()
    llm.start()
    server = OpenCodeServer(workdir=root / "workdir", state_dir=root / "state", binary=settings.OPENCODE_BIN,
                            config=opencode_config(llm.base_url, snapshot=options.snapshot == "on"))
    try:
        started = time.perf_counter()
        server.start()
        print(
            f"snapshots {options.snapshot}; opencode {server.version} started in "
            f"{(time.perf_counter() - started) * 1000:.0f} ms "
            f"(pid {server.pid}, {server.url})"
        )
        repo = make_repository(root)
        client = server.client()
        modes = ("fresh", "shared") if options.directories == "both" else (options.directories,)
        with EventCollector(server.events(global_stream=True)) as collector:
            for mode in modes:
                measure(mode, options, root, repo, client, collector, llm)
    finally:
        server.stop()
        llm.stop()
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
