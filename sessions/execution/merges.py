"""Merging a task's branch into its session's branch, with git; nothing here touches the database.

A task that ran in its own worktree (task_worktrees) commits its work on its own branch; the session's
worktree then merges that branch with a real `git merge --no-ff`, so the session branch's history shows
each task as a merge commit. A merge that conflicts is left in progress (MERGE_HEAD, conflict markers in
the files) for an integration task to resolve in the session's worktree, then concluded or aborted here.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from sessions.execution.workspace import git

# A line git writes into a conflicted file: `<<<<<<< ours`, `=======`, `>>>>>>> theirs`.
CONFLICT_MARKER = re.compile(r"^(<{7}( .*)?|={7}|>{7}( .*)?)$", re.MULTILINE)


@dataclass(frozen=True)
class MergeResult:
    merged: bool
    commit: str = ""  # the session branch's head after the merge (merged only)
    conflicts: list = field(default_factory=list)  # paths git could not merge
    already_merged: bool = False


def commit_task_work(*, path: Path, message: str) -> str:
    """Commit everything in a task's worktree on its branch; returns its head (committed or not)."""
    git("add", "-A", ".", cwd=path)
    if git("status", "--porcelain", cwd=path).strip():
        git("commit", "-q", "--no-verify", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path).strip()


def merge_branch(*, path: Path, branch: str, message: str) -> MergeResult:
    """Merge `branch` into the branch checked out at `path` (the session's worktree, clean).

    A conflict leaves the merge in progress and returns the conflicting paths."""
    head = git("rev-parse", "HEAD", cwd=path).strip()
    tip = git("rev-parse", branch, cwd=path).strip()
    if git("merge-base", "--is-ancestor", tip, head, cwd=path, check=False, status=True):
        return MergeResult(merged=True, commit=head, already_merged=True)  # a resumed run merged it before
    if git("merge", "--no-ff", "--no-edit", "-m", message, branch, cwd=path, check=False, status=True):
        return MergeResult(merged=True, commit=git("rev-parse", "HEAD", cwd=path).strip())
    conflicts = conflicting_files(path=path)
    if not conflicts:  # refused before merging (a dirty worktree, say): nothing is in progress
        git("merge", "--abort", cwd=path, check=False)
        git("merge", "--no-ff", "--no-edit", "-m", message, branch, cwd=path)  # raises GitError with git's reason
        return MergeResult(merged=True, commit=git("rev-parse", "HEAD", cwd=path).strip())
    return MergeResult(merged=False, conflicts=conflicts)


def conflicting_files(*, path: Path) -> list[str]:
    """Paths with unmerged entries in the index of the worktree at `path`."""
    output = git("diff", "--name-only", "--diff-filter=U", cwd=path, check=False)
    return sorted({line for line in output.splitlines() if line.strip()})


def merge_in_progress(*, path: Path) -> bool:
    return git("rev-parse", "-q", "--verify", "MERGE_HEAD", cwd=path, check=False, status=True)


def files_with_markers(*, path: Path, files: list[str]) -> list[str]:
    """Those of `files` that still hold a conflict marker line (a deleted file holds none)."""
    remaining = []
    for name in files:
        target = Path(path) / name
        try:
            text = target.read_text(errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        if CONFLICT_MARKER.search(text):
            remaining.append(name)
    return remaining


def conclude_merge(*, path: Path, message: str) -> str:
    """Commit a merge whose conflicts were resolved in the worktree's files; returns the new head."""
    git("add", "-A", ".", cwd=path)
    git("commit", "-q", "--no-verify", "-m", message, cwd=path)
    return git("rev-parse", "HEAD", cwd=path).strip()


def abort_merge(*, path: Path) -> None:
    """Give up a merge in progress: the worktree returns to the branch head."""
    if merge_in_progress(path=path):
        git("merge", "--abort", cwd=path, check=False)
    if merge_in_progress(path=path):  # --abort refused (files changed meanwhile): force the way back
        git("reset", "-q", "--hard", "HEAD", cwd=path)


def conflict_excerpt(*, path: Path, files: list[str], limit: int = 6000) -> str:
    """The conflicting hunks as git shows them (bounded), for the integration task's prompt."""
    text = git("diff", "--", *files, cwd=path, check=False) if files else ""
    return text if len(text) <= limit else text[:limit] + "\n[... truncated]"
