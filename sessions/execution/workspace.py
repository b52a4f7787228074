"""Isolated workspaces: one git worktree per coding session, on its own branch.

Nothing here touches the database; functions take paths and return plain
values, so the engine and the tests drive them directly. Checkpoints are
commits on hidden refs (refs/ind/<reference>/checkpoints/<n>) made with a
private index, so they never move the session's branch nor disturb the
worktree's own index.
"""

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ValidationFailed

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Industrial Orchestrator",
    "GIT_AUTHOR_EMAIL": "orchestrator@localhost",
    "GIT_COMMITTER_NAME": "Industrial Orchestrator",
    "GIT_COMMITTER_EMAIL": "orchestrator@localhost",
}


class GitError(RuntimeError):
    pass


def git(*args, cwd, env=None, check=True, status=False):
    """git's output (GitError when it fails, unless `check` is false); with `status`, whether it succeeded."""
    environment = dict(os.environ, **GIT_IDENTITY, **(env or {}))
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip() or result.stdout.strip()}")
    return result.returncode == 0 if status else result.stdout


def resolve_repository(path, *, allowed_roots):
    """The repository's real path, refused unless it is a git repository under an allowed root.

    Symlinks and `..` are resolved first, so no path escapes the allow-list.
    """
    if not path or not str(path).strip():
        raise ValidationFailed(field="repository", rule="is required")
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        raise ValidationFailed(field="repository", rule="must be an absolute path")
    real = candidate.resolve()
    roots = [Path(root).resolve() for root in allowed_roots]
    if not any(real == root or root in real.parents for root in roots):
        raise ValidationFailed(
            field="repository",
            rule=f"must be under an allowed repository root ({', '.join(str(r) for r in roots)})",
        )
    if not real.is_dir():
        raise ValidationFailed(field="repository", rule="does not exist")
    if real not in _git_repositories:  # asked once per process: every run starts here
        inside = git("rev-parse", "--is-inside-work-tree", cwd=real, check=False).strip()
        if inside != "true":
            raise ValidationFailed(field="repository", rule="is not a git repository")
        _git_repositories.add(real)
    return real


# Folders git has confirmed as repositories (one that stops being one fails at its next git command).
_git_repositories = set()


@dataclass(frozen=True)
class Workspace:
    repository: Path
    path: Path
    branch: str
    base_commit: str
    head: str  # the branch head when the run began (checkpoints' parent; it moves only at the end)


def branch_name(reference):
    return f"ind/{reference}"


def checkpoint_ref(reference, name):
    return f"refs/ind/{reference}/checkpoints/{name}"


def prepare_workspace(*, repository, root, reference, path=None):
    """Create (or reopen, on a retry) the session's worktree on branch ind/<reference>,
    at `path` (where an earlier run of the session had it) or <root>/<reference>."""
    repository = Path(repository)
    path = Path(path) if path else Path(root) / reference
    branch = branch_name(reference)
    base_commit = git("rev-parse", "HEAD", cwd=repository).strip()
    if (path / ".git").exists():
        owner = Path(git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=path).strip()).resolve()
        expected = Path(
            git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=repository).strip()
        ).resolve()
        if owner != expected:
            raise GitError(f"workspace {path} already belongs to another repository ({owner.parent})")
        head = git("rev-parse", "HEAD", cwd=path).strip()
        return Workspace(repository, path, branch, _read_base(path) or base_commit, head)
    if path.exists() and any(path.iterdir()):
        raise GitError(f"workspace {path} exists and is not a worktree; remove it or choose another WORKSPACE_ROOT")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A new session's branch does not exist yet: one `worktree add -b` does it all. It refuses, changing
    # nothing, when the branch exists (the session ran before and its worktree was removed) or a stale
    # worktree is still registered at the path; then the full way below.
    if git("worktree", "add", "-b", branch, str(path), base_commit, cwd=repository, check=False, status=True):
        _write_base(path, base_commit)
        return Workspace(repository, path, branch, base_commit, base_commit)
    git("worktree", "prune", cwd=repository)
    branch_exists = git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=repository, check=False)
    if branch_exists.strip():
        git("worktree", "add", str(path), branch, cwd=repository)
        base_commit = git("merge-base", base_commit, branch, cwd=repository).strip() or base_commit
        head = branch_exists.strip()
    else:
        git("worktree", "add", "-b", branch, str(path), base_commit, cwd=repository)
        head = base_commit
    _write_base(path, base_commit)
    return Workspace(repository, path, branch, base_commit, head)


SPARE_PREFIX = "spare-"


def head_commit(repository):
    """The commit the repository's HEAD is at.

    Read from the repository's files when they are the plain case (a detached HEAD, or HEAD naming a
    loose branch ref): a session's dispatch asks it (is the spare still at HEAD? spares.fits), and a
    git process costs ~7 ms there. git replaces a ref by renaming a complete file over it, so the read
    sees the old commit or the new one. Anything else (packed refs, reftable, a linked worktree as the
    repository) asks git."""
    git_dir = Path(repository) / ".git"
    try:
        if git_dir.is_dir() and not (git_dir / "commondir").exists():
            head = (git_dir / "HEAD").read_text().strip()
            if not head.startswith("ref: "):
                value = head
            elif head[5:].startswith("refs/heads/") and ".." not in head:
                value = (git_dir / head[5:]).read_text().strip()
            else:
                value = ""
            if len(value) in (40, 64) and all(char in "0123456789abcdef" for char in value):
                return value
    except OSError:  # no loose ref file (packed, reftable): git knows
        pass
    return git("rev-parse", "HEAD", cwd=repository).strip()


def create_spare(*, repository, root, name):
    """A worktree of the repository's HEAD, detached (no branch yet), at <root>/<name>: (path, base commit).

    See sessions.execution.spares: a session adopts it later with adopt_spare."""
    path = Path(root) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    base_commit = head_commit(repository)
    git("worktree", "add", "--detach", str(path), base_commit, cwd=repository)
    return path, base_commit


def adopt_spare(*, repository, path, reference, base_commit):
    """Make the spare worktree at `path` the session's: its branch ind/<reference> starts there.

    GitError when the branch already exists (the session ran before): the caller takes the cold path."""
    branch = branch_name(reference)
    git("checkout", "-q", "-b", branch, cwd=path)
    _write_base(path, base_commit)
    return Workspace(Path(repository), Path(path), branch, base_commit, base_commit)


def is_unadopted_spare(path):
    """A spare worktree no session took: named spare-* and still without a branch."""
    path = Path(path)
    if not path.name.startswith(SPARE_PREFIX) or not (path / ".git").exists():
        return False
    return git("symbolic-ref", "-q", "HEAD", cwd=path, check=False).strip() == ""


def repository_of(path):
    """The main checkout of the repository a worktree belongs to."""
    common = git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=path).strip()
    return Path(common).resolve().parent


def _private_dir(path):
    """The folder of the orchestrator's own files for the worktree at `path` (its base commit, its
    snapshot index): <repository>/.git/ind/worktrees/<the worktree's git folder name>.

    Not the worktree's own git folder (.git/worktrees/<name>), where they were first: OpenCode
    watches that folder (for branch changes) and turned every file written there, each snapshot's
    index and its lock, into a `file.watcher.updated` event handled on its one JavaScript thread
    (the thread every session of the server waits for) and streamed to every subscriber.
    Nothing in the repository's config or the work tree changes either way.
    """
    git_dir = _git_dir(path)
    try:
        common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    except OSError:  # the main checkout: its git folder is the common one
        return git_dir / "ind" / "main"
    return common / "ind" / "worktrees" / git_dir.name


def _new_private_dir(path):
    """An empty private folder for a worktree just added: git reuses the folder names of removed
    worktrees, and a snapshot index left by one must not stand for another's files."""
    private = _private_dir(path)
    shutil.rmtree(private, ignore_errors=True)
    private.mkdir(parents=True)
    return private


def _write_base(path, base_commit):
    (_new_private_dir(path) / "base").write_text(base_commit)


def _read_base(path):
    for base_file in (_private_dir(path) / "base", _git_dir(path) / "ind-base"):  # ind-base: before 2026-11
        if base_file.exists():
            return base_file.read_text().strip()
    return ""


_snapshot_locks = {}
_snapshot_locks_guard = threading.Lock()


def _snapshot_lock(path):
    """One lock per worktree in this process: snapshots of one worktree share its private index."""
    key = str(Path(path).resolve())
    with _snapshot_locks_guard:
        return _snapshot_locks.setdefault(key, threading.Lock())


def snapshot_tree(path):
    """A tree object of the worktree as it is now (tracked and untracked files, ignoring .gitignore'd).

    The private index lives in the worktree's private folder (_private_dir) and is kept between snapshots, so git
    only re-reads files whose size or time changed (a fresh index would hash every file each time).
    The first one starts as a copy of the worktree's real index, written by the checkout with every
    file's size and time: `git add` then hashes only what changed since (from `read-tree HEAD`, which
    has no such data, it hashed every file of the worktree, and took a git process more). Snapshots
    never touch the real index.
    """
    private = _private_dir(path)
    index = private / "index"
    env = {"GIT_INDEX_FILE": str(index)}
    with _snapshot_lock(path):
        if not index.exists():
            private.mkdir(parents=True, exist_ok=True)
            try:
                # git replaces an index by renaming a complete new file over it: a copy is never half-written.
                shutil.copyfile(_git_dir(path) / "index", index)
            except OSError:  # no checkout index (a worktree made without one)
                git("read-tree", "HEAD", cwd=path, env=env)
        git("add", "-A", ".", cwd=path, env=env)
        return git("write-tree", cwd=path, env=env).strip()


def _git_dir(path):
    """The worktree's git folder, read from its `.git` file ("gitdir: <path>") without running git:
    snapshots ask for it at every checkpoint. Anything else asks git."""
    dot_git = Path(path) / ".git"
    if dot_git.is_dir():
        return dot_git.resolve()
    try:
        first_line = dot_git.read_text().splitlines()[0]
    except (OSError, IndexError):
        first_line = ""
    if first_line.startswith("gitdir: "):
        return (Path(path) / first_line[len("gitdir: "):].strip()).resolve()
    return Path(git("rev-parse", "--absolute-git-dir", cwd=path).strip())


@dataclass(frozen=True)
class CheckpointCommit:
    commit: str
    tree: str


def create_checkpoint(*, path, reference, name, message="checkpoint", parent=None, previous=None):
    """Commit the worktree's state on a hidden ref named `name`; return CheckpointCommit(commit, tree).

    The ref keeps the commit reachable (git gc would drop a dangling one); `name` must be unique
    within the session (the OpenCode message id and a timestamp, say). `parent` is the branch head
    when the caller knows it (it saves a git call per checkpoint). `previous` is the caller's last
    CheckpointCommit: when the worktree has not changed since, its commit (already on a ref) is this
    checkpoint too. Most assistant steps only read or answer, and each new commit and ref costs two
    git processes.
    """
    tree = snapshot_tree(path)
    if previous is not None and previous.tree == tree:
        return previous
    parent = parent or git("rev-parse", "HEAD", cwd=path).strip()
    commit = git("commit-tree", tree, "-p", parent, "-m", f"{message} {name}", cwd=path).strip()
    git("update-ref", checkpoint_ref(reference, name), commit, cwd=path)
    return CheckpointCommit(commit, tree)


def restore_checkpoint(*, path, commit):
    """Make the worktree's files match the checkpoint commit exactly (the branch head stays)."""
    git("read-tree", "-u", "--reset", commit, cwd=path)
    git("clean", "-fdq", cwd=path)
    # Keep the branch's index at HEAD so later diffs compare against the branch, not the checkpoint.
    git("reset", "-q", "--mixed", "HEAD", cwd=path)


def workspace_diff(*, path, base_commit):
    """Files changed in the worktree since `base_commit`: [{file, additions, deletions, status}], patch, tree."""
    tree = snapshot_tree(path)
    return diff_between(path=path, base_commit=base_commit, tree=tree)


def diff_between(*, path, base_commit, tree):
    """The diff from `base_commit` to `tree`, from one `git diff` (raw status + numstat + patch)."""
    output = git("diff", "--no-renames", "--raw", "--numstat", "--patch", base_commit, tree, cwd=path)
    summary, separator, patch = output.partition("\ndiff --git ")
    patch = "diff --git " + patch if separator else ""
    names = {"A": "added", "M": "modified", "D": "deleted", "T": "modified"}
    statuses, files = {}, []
    for line in summary.splitlines():
        if line.startswith(":") and "\t" in line:  # :100644 100644 <a> <b> M\tname
            meta, name = line.split("\t", 1)
            statuses[name] = meta.split()[-1][:1]
        elif line.count("\t") >= 2:  # additions\tdeletions\tname ("-" for binary files)
            added, deleted, name = line.split("\t", 2)
            files.append({
                "file": name,
                "additions": int(added) if added.isdigit() else 0,
                "deletions": int(deleted) if deleted.isdigit() else 0,
            })
    for entry in files:
        entry["status"] = names.get(statuses.get(entry["file"], "M"), "modified")
    return {
        "files": files,
        "additions": sum(f["additions"] for f in files),
        "deletions": sum(f["deletions"] for f in files),
        "patch": patch,
        "tree": tree,
    }


def commit_workspace(*, path, message):
    """Commit everything in the worktree onto the session's branch (end of a session). Returns the commit or None."""
    git("add", "-A", ".", cwd=path)
    if not git("commit", "-q", "-m", message, cwd=path, check=False, status=True):
        # Nothing to commit (an earlier run of the session committed it) is the one refusal expected.
        if not git("status", "--porcelain", cwd=path).strip():
            return None
        git("commit", "-q", "-m", message, cwd=path)  # raises GitError with git's reason
    return git("rev-parse", "HEAD", cwd=path).strip()


def remove_workspace(*, repository, path):
    """Remove the worktree folder; the branch and checkpoint refs stay in the repository."""
    path = Path(path)
    if (path / ".git").exists():
        shutil.rmtree(_private_dir(path), ignore_errors=True)
    if path.exists():
        git("worktree", "remove", "--force", str(path), cwd=repository, check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    git("worktree", "prune", cwd=repository, check=False)


def init_repository(path, files):
    """Create a git repository at `path` with `files` ({relative path: text}) in one commit."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", cwd=path)
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git("add", "-A", cwd=path)
    git("commit", "-qm", "initial commit", cwd=path)
    return path


def task_worktree(*, repository, path, branch, start):
    """A task's own worktree at `path` on branch `branch`, made from commit `start` (the session
    branch's head when the task starts); reopened as it is when a previous run left it there
    (the task is resumed). See sessions.execution.task_worktrees."""
    repository, path = Path(repository), Path(path)
    if (path / ".git").exists():
        head = git("rev-parse", "HEAD", cwd=path).strip()
        base = _read_base(path) or git("merge-base", start, head, cwd=path).strip()
        return Workspace(repository, path, branch, base, head)
    git("worktree", "prune", cwd=repository, check=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=repository, check=False).strip():
        git("worktree", "add", str(path), branch, cwd=repository)  # its worktree was removed, its branch kept
    else:
        git("worktree", "add", "-b", branch, str(path), start, cwd=repository)
    _write_base(path, start)
    head = git("rev-parse", "HEAD", cwd=path).strip()
    return Workspace(repository, path, branch, start, head)


def adopt_for_task(*, repository, path, branch, start):
    """Make the clean worktree at `path` (already opened in OpenCode: a spare, or one a merged task of
    the session left) a task's worktree: branch `branch` at commit `start`, checked out there (one
    `git checkout`: the worktree sits at or near `start`). GitError when the branch exists (the task
    ran before) or the worktree is not clean."""
    git("checkout", "-q", "-b", branch, start, cwd=path)
    _write_base(path, start)
    return Workspace(Path(repository), Path(path), branch, start, start)


def worktree_of_branch(*, repository, branch):
    """The path of the worktree that has `branch` checked out, or None."""
    return next((path for path, checked_out in _worktree_branches(repository)
                 if checked_out == branch and path.exists()), None)


def worktrees_of_branches(*, repository, prefix):
    """The paths of the worktrees that have a branch named `prefix`... checked out (a session's
    task branches: `ind/<reference>--task-`)."""
    return [path for path, branch in _worktree_branches(repository) if branch.startswith(prefix)]


def _worktree_branches(repository):
    """(path, branch checked out there, "" when detached) of each worktree of `repository`."""
    current = None
    for line in git("worktree", "list", "--porcelain", cwd=repository).splitlines():
        if line.startswith("worktree "):
            current = Path(line[len("worktree "):])
        elif line.startswith("detached") and current is not None:
            yield current, ""
        elif line.startswith("branch refs/heads/") and current is not None:
            yield current, line[len("branch refs/heads/"):]
