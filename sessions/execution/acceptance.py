"""A plan task's acceptance command: run in the task's worktree after its turn, time-limited, its
output kept (the tail, bounded). Plain: no database, no OpenCode (the engine's use of it is in
task_worktrees.TaskWorktrees.after_turn)."""

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# The output kept: the end of it, where test runners print their verdict.
OUTPUT_TAIL = 8000


@dataclass(frozen=True)
class AcceptanceResult:
    passed: bool
    command: str
    exit_code: int | None  # None: killed at the time limit
    timed_out: bool
    seconds: float
    output: str  # stdout and stderr together, the last OUTPUT_TAIL characters
    truncated: bool

    def as_payload(self) -> dict:
        return asdict(self)


def run_acceptance(*, command: str, cwd: Path, timeout: float) -> AcceptanceResult:
    """Run `command` with the shell in `cwd`; killed with its whole process group after `timeout` s."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, shell=True, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: a time-out kills what it started too
        env={**os.environ, "CI": "1"},
    )
    timed_out = False
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        output, _ = process.communicate()
    text = output.decode(errors="replace")
    exit_code = None if timed_out else process.returncode
    if timed_out:
        text += f"\n[acceptance command killed after {timeout:g} s]"
    return AcceptanceResult(
        passed=exit_code == 0, command=command, exit_code=exit_code, timed_out=timed_out,
        seconds=round(time.monotonic() - started, 3), output=text[-OUTPUT_TAIL:], truncated=len(text) > OUTPUT_TAIL,
    )


def retry_prompt(result: AcceptanceResult) -> str:
    """The follow-up turn's prompt: the command, how it ended and its output."""
    how = f"was killed after {result.seconds:g} s" if result.timed_out else f"exited with status {result.exit_code}"
    return (
        f"The task's acceptance command `{result.command}` {how}. Its output (the end of it):\n\n"
        f"```\n{result.output}\n```\n\n"
        "Fix the work so that the command passes. It will be run again after this turn.\n"
    )
