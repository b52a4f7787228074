"""Sessions per worker host (issue 8): how many concurrent sessions one host sustains before the
overhead of the execution benchmark (issue 7, part 1) passes 1.5.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench_exec REDIS_URL=redis://127.0.0.1:6379/13 \\
    ORCHESTRATOR_VAR_DIR=$PWD/var/bench-exec .venv/bin/python -m bench.execution_capacity --levels 10,20,30,40

Each level is one run of `bench.execution_latency --concurrency N --rounds 1 --batches 3 --dispatch 0` in its own
process, so every level starts with fresh OpenCode servers and a level's figures do not depend on
the levels before it. The overhead is the orchestrator's wall time for N concurrent sessions (API
start -> completed) over the same N jobs driven directly on OpenCode. Printed: a table of levels, and
the largest level at or under the limit.
"""

import argparse
import re
import subprocess
import sys
import time

RATIO_LINE = re.compile(r"(\d+) concurrent \(\d+ rounds each.*?direct p50 (\d+) ms, orchestrator p50 (\d+) ms, "
                        r"ratio \(median of the paired rounds\) ([\d.]+)")
CPU_LINE = re.compile(r"CPU per job at \d+ concurrent, (direct|orchestrator): (\d+) ms")
DROPS_LINE = re.compile(r"WebSocket drops \(reconnected with \?after=<last id>\): (\d+) (\{.*?\})")


def run_level(concurrency):
    command = [sys.executable, "-m", "bench.execution_latency", "--concurrency", str(concurrency),
               "--rounds", "1", "--batches", "3", "--dispatch", "0"]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    output = finished.stdout + finished.stderr
    match = RATIO_LINE.search(output)
    if finished.returncode != 0 or match is None:
        raise RuntimeError(f"level {concurrency} failed (exit {finished.returncode}):\n{output[-3000:]}")
    cpu = dict(CPU_LINE.findall(output))
    drops = DROPS_LINE.search(output)
    return {
        "concurrency": concurrency, "direct_ms": int(match.group(2)), "orchestrator_ms": int(match.group(3)),
        "ratio": float(match.group(4)), "cpu_direct": int(cpu.get("direct", 0)),
        "cpu_orchestrator": int(cpu.get("orchestrator", 0)), "seconds": time.perf_counter() - started,
        "reconnects": f"{drops.group(1)} {drops.group(2)}" if drops else "?",
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="10,20,30,40", help="concurrent sessions to try, comma-separated")
    parser.add_argument("--limit", type=float, default=1.5, help="the overhead ratio that counts as too much")
    options = parser.parse_args(argv)
    levels = [int(level) for level in options.levels.split(",")]

    results = []
    print(f"{'sessions':>8} {'direct wall':>12} {'orchestrator wall':>18} {'ratio':>6} "
          f"{'CPU/job direct':>15} {'CPU/job orch.':>14}")
    for concurrency in levels:
        result = run_level(concurrency)
        results.append(result)
        print(f"{concurrency:>8} {result['direct_ms']:>10} ms {result['orchestrator_ms']:>15} ms "
              f"{result['ratio']:>6.2f} {result['cpu_direct']:>12} ms {result['cpu_orchestrator']:>11} ms"
              f"   WebSocket reconnects {result['reconnects']} ({result['seconds']:.0f} s)", flush=True)
    within = [r["concurrency"] for r in results if r["ratio"] <= options.limit]
    beyond = [r["concurrency"] for r in results if r["ratio"] > options.limit]
    if within and not beyond:
        print(f"sessions per host: at least {max(within)} (every level tried stayed at or under {options.limit})")
    elif within:
        print(f"sessions per host: {max(within)} (ratio <= {options.limit}); first level past it: {min(beyond)}")
    else:
        print(f"sessions per host: below {min(levels)} (every level tried passed {options.limit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
