"""A session's changes as a patch: its branch (or its newest checkpoint) against its base.

Read from git in the repository, never from the worktree, so reading it cannot disturb a run:
checkpoint commits and the session's branch live in the repository's object store. While a run
is under way (or ended without committing) the newest checkpoint holds the work; once the run has
committed, the branch does.
"""

from dataclasses import dataclass
from pathlib import Path

from sessions import rendering
from sessions.execution import workspace
from sessions.models import Checkpoint, CodingSession, SessionEvent

# A patch larger than this is cut (the summary still counts every file).
PATCH_BYTES_MAX = 2_000_000


@dataclass
class SessionDiff:
    base: str
    target: str
    source: str  # "branch" or "checkpoint <n>"
    files: list  # rendering.FilePatch, with status and counts from numstat
    additions: int
    deletions: int
    truncated: bool


def _base_commit(session, repository, branch):
    """The commit the session's worktree started from: its newest workspace.ready event says it;
    the merge base of the repository's HEAD and the branch otherwise."""
    ready = (
        SessionEvent.objects.filter(session_id=session.pk, type="workspace.ready")
        .order_by("-pk").values_list("payload", flat=True).first()
    )
    if isinstance(ready, dict) and ready.get("base_commit"):
        return ready["base_commit"]
    return workspace.git("merge-base", "HEAD", branch, cwd=repository, check=False).strip()


def session_diff(*, session: CodingSession) -> SessionDiff | None:
    """The session's patch per file, or None when there is nothing to compare yet.

    From git when the repository still holds the session's branch or checkpoints; otherwise from
    the newest "session.diff" event (the engine records one, with the patch, when a run ends)."""
    return _diff_from_git(session) or _diff_from_event(session)


def _diff_from_event(session):
    payload = (
        SessionEvent.objects.filter(session_id=session.pk, type="session.diff")
        .order_by("-pk").values_list("payload", flat=True).first()
    )
    if not isinstance(payload, dict):
        return None
    listed = payload.get("files") or []
    only = str(listed[0].get("file") or "") if len(listed) == 1 and isinstance(listed[0], dict) else "patch"
    files = rendering.split_patch(payload.get("patch") or "", default_path=only)
    files = [file for file in files if file.lines or file.path != only or len(listed) == 1]
    by_path = {file.path: file for file in files}
    for entry in listed:
        if not isinstance(entry, dict):
            continue
        name = str(entry.get("file") or "")
        file = by_path.get(name)
        if file is None:
            file = by_path[name] = rendering.FilePatch(path=name)
            files.append(file)
        file.status = str(entry.get("status") or "modified")
        file.additions, file.deletions = int(entry.get("additions") or 0), int(entry.get("deletions") or 0)
    for file in files:
        if not hasattr(file, "status"):
            file.status = "modified"
    return SessionDiff(
        base="", target="", source="recorded at the end of the run", files=files,
        additions=int(payload.get("additions") or 0), deletions=int(payload.get("deletions") or 0),
        truncated=bool(payload.get("patch_truncated")),
    )


def _diff_from_git(session):
    repository = Path(session.repository)
    branch = session.branch_name or workspace.branch_name(session.reference)
    if not repository.is_dir():
        return None
    head = workspace.git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}",
                         cwd=repository, check=False).strip()
    latest = Checkpoint.objects.filter(session_id=session.pk).exclude(git_ref="").order_by("-sequence").first()
    if not head and latest is None:
        return None
    target, source = head, "branch"
    if latest is not None and (not head or workspace.git(
        "merge-base", "--is-ancestor", head, latest.git_ref, cwd=repository, check=False, status=True,
    )):
        # The checkpoint descends from the branch head: work done since the branch's last commit.
        target, source = latest.git_ref, f"checkpoint {latest.sequence}"
    base = _base_commit(session, repository, branch)
    if not base:
        return None
    output = workspace.git("diff", "--no-renames", "--numstat", "--patch", base, target, cwd=repository, check=False)
    truncated = len(output) > PATCH_BYTES_MAX
    summary, separator, patch = output[:PATCH_BYTES_MAX].partition("\ndiff --git ")
    if output.startswith("diff --git "):
        summary, patch = "", output[:PATCH_BYTES_MAX]
    elif separator:
        patch = "diff --git " + patch
    counts = {}
    for line in summary.splitlines():
        if line.count("\t") >= 2:
            added, deleted, name = line.split("\t", 2)
            counts[name] = (int(added) if added.isdigit() else 0, int(deleted) if deleted.isdigit() else 0)
    files = rendering.split_patch(patch)
    for file in files:
        file.status = "added" if any(line.text.startswith("new file") for line in file.lines) else (
            "deleted" if any(line.text.startswith("deleted file") for line in file.lines) else "modified")
        if file.path in counts:
            file.additions, file.deletions = counts[file.path]
    return SessionDiff(
        base=base, target=target, source=source, files=files,
        additions=sum(added for added, _ in counts.values()),
        deletions=sum(deleted for _, deleted in counts.values()),
        truncated=truncated,
    )
