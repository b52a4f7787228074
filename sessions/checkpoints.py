"""Checkpoints as the monitor shows them, and an operator's restore.

The timeline: a session's retained checkpoints grouped by task, each step with the files it
changed (git, from the checkpoint commits, which live in the repository's object store).
The restore: the resume point of `services.session_restore_checkpoint` (the engine resumes the
tasks from it on the next run) and, when the session's worktree is still on disk, its files reset
to the checkpoint now, while the session row is locked, so nothing runs in it meanwhile.
"""

import subprocess
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from orchestrator.errors import Conflict
from sessions import services
from sessions.execution import workspace
from sessions.models import Checkpoint, CodingSession
from tasks.models import Task

# Files changed between two commits never change: remembered per process, bounded.
FILES_CACHE_SIZE = 4_096
_files_cache = OrderedDict()
_files_cache_lock = threading.Lock()


@dataclass
class TimelineEntry:
    sequence: int
    created_at: object
    task_id: int | None
    task_step: int | None
    reason: str
    git_ref: str
    opencode_message_id: str
    files: list | None = None  # [{file, status, additions, deletions}]; None when git cannot say


@dataclass
class TimelineGroup:
    task_id: int | None
    task_title: str
    entries: list = field(default_factory=list)


def _remember(key, value):
    with _files_cache_lock:
        _files_cache[key] = value
        _files_cache.move_to_end(key)
        while len(_files_cache) > FILES_CACHE_SIZE:
            _files_cache.popitem(last=False)


def _cached(key):
    with _files_cache_lock:
        return _files_cache.get(key)


def files_changed(*, repository: str, pairs: list) -> dict:
    """{(commit, previous): [files]} for each pair, previous None meaning the commit's parent.

    One `git diff-tree --stdin` for every pair not already known; a pair git cannot answer (a
    repository or commit gone) is left out.
    """
    found, wanted = {}, []
    for pair in pairs:
        commit, previous = pair
        if commit == previous:
            found[pair] = []
        elif (known := _cached(pair)) is not None:
            found[pair] = known
        else:
            wanted.append(pair)
    if not wanted or not Path(repository).is_dir():
        return found
    lines = "".join(f"{commit} {previous}\n" if previous else f"{commit}\n" for commit, previous in wanted)
    try:
        output = _diff_tree(repository, lines)
    except (workspace.GitError, OSError):
        return found
    by_commit, current = {}, None
    for line in output.splitlines():
        if line and ":" not in line and "\t" not in line:
            current = by_commit.setdefault(line.strip(), {})
        elif current is None:
            continue
        elif line.startswith(":") and "\t" in line:
            meta, name = line.split("\t", 1)
            current.setdefault(name, {"file": name, "additions": 0, "deletions": 0})["status"] = {
                "A": "added", "D": "deleted"}.get(meta.split()[-1][:1], "modified")
        elif line.count("\t") >= 2:
            added, deleted, name = line.split("\t", 2)
            entry = current.setdefault(name, {"file": name, "status": "modified"})
            entry["additions"] = int(added) if added.isdigit() else 0
            entry["deletions"] = int(deleted) if deleted.isdigit() else 0
    for pair in wanted:
        # A pair whose trees are equal prints nothing: no file changed.
        files = sorted(by_commit.get(pair[0], {}).values(), key=lambda entry: entry["file"])
        found[pair] = files
        _remember(pair, files)
    return found


def _diff_tree(repository, stdin_lines):
    result = subprocess.run(
        ["git", "diff-tree", "--stdin", "-r", "--no-renames", "--raw", "--numstat"],
        cwd=repository, input=stdin_lines, capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise workspace.GitError(result.stderr.strip())
    return result.stdout


def checkpoint_timeline(*, session: CodingSession) -> list:
    """The retained checkpoints grouped by task (groups in order of their first checkpoint), each
    entry with the files its step changed since the task's previous checkpoint (the session's
    previous one for a task's first; the run's starting commit for the very first)."""
    rows = list(Checkpoint.objects.filter(session_id=session.pk).order_by("sequence"))
    task_ids = {row.data.get("task_id") for row in rows if isinstance(row.data, dict)} - {None}
    titles = dict(Task.objects.filter(pk__in=task_ids).values_list("pk", "title")) if task_ids else {}
    groups, entries, pairs = {}, [], []
    last_of_task, last_any = {}, None
    for row in rows:
        data = row.data if isinstance(row.data, dict) else {}
        task_id = data.get("task_id")
        entry = TimelineEntry(
            sequence=row.sequence, created_at=row.created_at, task_id=task_id,
            task_step=data.get("task_step"), reason=str(data.get("reason") or ""),
            git_ref=row.git_ref, opencode_message_id=row.opencode_message_id,
        )
        if row.git_ref:
            previous = last_of_task.get(task_id, last_any)
            pairs.append((row.git_ref, previous))
            entries.append((entry, (row.git_ref, previous)))
            last_of_task[task_id] = last_any = row.git_ref
        group = groups.get(task_id)
        if group is None:
            title = titles.get(task_id, "") if task_id is not None else "Session"
            group = groups[task_id] = TimelineGroup(task_id=task_id, task_title=title)
        group.entries.append(entry)
    if pairs:
        known = files_changed(repository=session.repository, pairs=pairs)
        for entry, pair in entries:
            entry.files = known.get(pair)
    return list(groups.values())


def checkpoint_restore(*, session: CodingSession, sequence: int, actor=None) -> CodingSession:
    """Restore checkpoint `sequence` for an operator: the next run resumes from it, and the
    session's worktree, when it still exists, gets the checkpoint's files now.

    Refused (Conflict, 409) while the session runs or has ended for good: see
    services.RESTORE_STATES. The session row stays locked while git resets the worktree, so a
    worker cannot claim the session halfway; a git failure rolls the resume point back.
    """
    with transaction.atomic():
        restored = services.session_restore_checkpoint(session=session, sequence=sequence, actor=actor)
        checkpoint = restored.resume_checkpoint
        path = Path(restored.workspace_path) if restored.workspace_path else None
        if checkpoint is None or not checkpoint.git_ref or path is None or not (path / ".git").exists():
            return restored  # no worktree left: the next run creates one and restores it there
        try:
            workspace.restore_checkpoint(path=path, commit=checkpoint.git_ref)
        except workspace.GitError as error:
            raise Conflict(
                f"Could not reset the worktree of {restored.reference} to checkpoint {sequence}: {error}",
                details={"sequence": sequence, "workspace": str(path)},
            ) from error
        who = services.as_actor(actor)
        services.session_record_event(
            session=restored, type="workspace.restored",
            payload={"sequence": sequence, "git_ref": checkpoint.git_ref, "by": "operator",
                     "actor": {"kind": who.kind, "label": who.label}},
        )
    return restored
