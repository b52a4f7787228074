"""Git worktree isolation: real git on throwaway repositories."""

import os
import shutil
from pathlib import Path

import pytest

from orchestrator.errors import ValidationFailed
from sessions.execution import workspace


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repos"
    path = root / "demo"
    path.mkdir(parents=True)
    workspace.git("init", "-q", "-b", "main", cwd=path)
    (path / "README.md").write_text("demo\n")
    workspace.git("add", "-A", cwd=path)
    workspace.git("commit", "-qm", "initial", cwd=path)
    return path


def test_repository_outside_the_allowed_roots_is_refused(repo, tmp_path):
    with pytest.raises(ValidationFailed, match="must be under an allowed repository root"):
        workspace.resolve_repository(str(repo / ".." / ".." / "elsewhere"), allowed_roots=[repo.parent])
    with pytest.raises(ValidationFailed, match="must be under an allowed repository root"):
        workspace.resolve_repository(str(repo), allowed_roots=[tmp_path / "other"])


def test_symlink_out_of_the_root_is_refused(repo, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo.parent / "sneaky").symlink_to(outside)
    with pytest.raises(ValidationFailed, match="allowed repository root"):
        workspace.resolve_repository(str(repo.parent / "sneaky"), allowed_roots=[repo.parent])


def test_a_folder_that_is_not_a_repository_is_refused(repo):
    plain = repo.parent / "plain"
    plain.mkdir()
    with pytest.raises(ValidationFailed, match="is not a git repository"):
        workspace.resolve_repository(str(plain), allowed_roots=[repo.parent])


def test_worktree_is_isolated_on_its_own_branch(repo, tmp_path):
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000001")
    (ws.path / "new.txt").write_text("from the agent\n")
    assert ws.branch == "ind/IND-000001"
    assert not (repo / "new.txt").exists()
    assert workspace.git("rev-parse", "--abbrev-ref", "HEAD", cwd=ws.path).strip() == "ind/IND-000001"
    assert workspace.git("status", "--porcelain", cwd=repo).strip() == ""


def test_diff_lists_files_added_and_changed_since_the_base(repo, tmp_path):
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000002")
    (ws.path / "README.md").write_text("demo\nmore\n")
    (ws.path / "src").mkdir()
    (ws.path / "src" / "app.py").write_text("print('hi')\n")
    diff = workspace.workspace_diff(path=ws.path, base_commit=ws.base_commit)
    assert diff["files"] == [
        {"file": "README.md", "additions": 1, "deletions": 0, "status": "modified"},
        {"file": "src/app.py", "additions": 1, "deletions": 0, "status": "added"},
    ]
    assert "+print('hi')" in diff["patch"]


def test_checkpoint_restores_the_exact_files_without_moving_the_branch(repo, tmp_path):
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000003")
    (ws.path / "notes.txt").write_text("one\n")
    commit = workspace.create_checkpoint(path=ws.path, reference="IND-000003", name="msg_1").commit
    head = workspace.git("rev-parse", "HEAD", cwd=ws.path).strip()
    (ws.path / "notes.txt").write_text("two\n")
    (ws.path / "later.txt").write_text("later\n")
    workspace.restore_checkpoint(path=ws.path, commit=commit)
    assert (ws.path / "notes.txt").read_text() == "one\n"
    assert not (ws.path / "later.txt").exists()
    assert workspace.git("rev-parse", "HEAD", cwd=ws.path).strip() == head
    assert workspace.git("rev-parse", workspace.checkpoint_ref("IND-000003", "msg_1"), cwd=repo).strip() == commit


def test_a_checkpoint_of_an_unchanged_worktree_is_the_previous_commit_and_a_change_makes_a_new_one(repo, tmp_path):
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000005")
    (ws.path / "notes.txt").write_text("one\n")
    first = workspace.create_checkpoint(path=ws.path, reference="IND-000005", name="msg_1")
    same = workspace.create_checkpoint(path=ws.path, reference="IND-000005", name="msg_2", previous=first)
    assert same == first
    refs = workspace.git("for-each-ref", "--format=%(refname)", "refs/ind/IND-000005/", cwd=repo).split()
    assert refs == [workspace.checkpoint_ref("IND-000005", "msg_1")]  # no commit nor ref for msg_2
    (ws.path / "notes.txt").write_text("two\n")
    changed = workspace.create_checkpoint(path=ws.path, reference="IND-000005", name="msg_3", previous=same)
    assert changed.commit != first.commit and changed.tree != first.tree
    assert workspace.git("show", f"{changed.commit}:notes.txt", cwd=repo) == "two\n"
    assert (
        workspace.git("rev-parse", workspace.checkpoint_ref("IND-000005", "msg_3"), cwd=repo).strip() == changed.commit
    )


def test_reopening_a_workspace_keeps_its_base_and_removal_keeps_the_branch(repo, tmp_path):
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000004")
    (repo / "README.md").write_text("moved on\n")
    workspace.git("commit", "-qam", "main moved", cwd=repo)
    again = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000004")
    assert again.base_commit == ws.base_commit
    (ws.path / "done.txt").write_text("done\n")
    assert workspace.commit_workspace(path=ws.path, message="session finished") is not None
    assert workspace.commit_workspace(path=ws.path, message="nothing new") is None
    workspace.remove_workspace(repository=repo, path=ws.path)
    assert not ws.path.exists()
    assert "ind/IND-000004" in workspace.git("branch", "--list", cwd=repo)
    recreated = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000004")
    assert (recreated.path / "done.txt").read_text() == "done\n"


def test_a_worktree_folder_deleted_by_hand_is_made_again_on_its_branch(repo, tmp_path):
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000006")
    (ws.path / "kept.txt").write_text("kept\n")
    workspace.commit_workspace(path=ws.path, message="work")
    shutil.rmtree(ws.path)  # git still lists the worktree (stale) and its branch stays checked out there
    again = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000006")
    assert (again.path / "kept.txt").read_text() == "kept\n"
    assert (again.base_commit, again.branch) == (ws.base_commit, "ind/IND-000006")


def test_a_worktree_of_another_repository_is_never_reused(repo, tmp_path):
    other = tmp_path / "repos" / "other"
    other.mkdir()
    workspace.git("init", "-q", "-b", "main", cwd=other)
    (other / "x.txt").write_text("x\n")
    workspace.git("add", "-A", cwd=other)
    workspace.git("commit", "-qm", "other", cwd=other)
    workspace.prepare_workspace(repository=other, root=tmp_path / "ws", reference="IND-000009")
    with pytest.raises(workspace.GitError, match="belongs to another repository"):
        workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000009")


def test_diff_names_deleted_and_binary_files_and_reuses_its_private_index(repo, tmp_path):
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000009")
    (ws.path / "README.md").unlink()
    (ws.path / "logo.bin").write_bytes(b"\x00\x01\x02binary")
    first = workspace.workspace_diff(path=ws.path, base_commit=ws.base_commit)
    assert first["files"] == [
        {"file": "README.md", "additions": 0, "deletions": 1, "status": "deleted"},
        {"file": "logo.bin", "additions": 0, "deletions": 0, "status": "added"},
    ]
    assert first["patch"].startswith("diff --git a/README.md b/README.md")
    assert "Binary files /dev/null and b/logo.bin differ" in first["patch"]
    # A later snapshot starts from the kept private index and sees only what changed since.
    (ws.path / "logo.bin").unlink()
    second = workspace.workspace_diff(path=ws.path, base_commit=ws.base_commit)
    assert [f["file"] for f in second["files"]] == ["README.md"] and second["tree"] != first["tree"]
    # The worktree's real index is untouched by snapshots.
    assert workspace.git("diff", "--cached", "--name-only", cwd=ws.path).strip() == ""


def test_a_spare_worktree_is_detached_until_a_session_adopts_it(repo, tmp_path):
    path, base = workspace.create_spare(repository=repo, root=tmp_path / "ws", name="spare-test-1")
    assert base == workspace.head_commit(repo)
    assert (path / "README.md").read_text() == "demo\n"
    assert workspace.is_unadopted_spare(path)

    ws = workspace.adopt_spare(repository=repo, path=path, reference="IND-000010", base_commit=base)
    assert (ws.path, ws.branch, ws.base_commit, ws.head) == (path, "ind/IND-000010", base, base)
    assert workspace.git("symbolic-ref", "HEAD", cwd=path).strip() == "refs/heads/ind/IND-000010"
    assert not workspace.is_unadopted_spare(path)
    assert workspace.repository_of(path) == repo.resolve()
    # A retry finds the adopted worktree where the session recorded it.
    again = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000010", path=path)
    assert (again.path, again.base_commit) == (path, base)


def test_a_spare_cannot_take_a_branch_that_exists(repo, tmp_path):
    workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000011")
    path, base = workspace.create_spare(repository=repo, root=tmp_path / "ws", name="spare-test-2")
    with pytest.raises(workspace.GitError, match="already exists"):
        workspace.adopt_spare(repository=repo, path=path, reference="IND-000011", base_commit=base)
    assert workspace.is_unadopted_spare(path)


def test_the_git_folder_is_read_from_the_worktree_as_git_would_answer(repo, tmp_path):
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000077")
    for path in (ws.path, repo):
        asked = workspace.git("rev-parse", "--absolute-git-dir", cwd=path).strip()
        assert workspace._git_dir(path) == Path(asked).resolve()
    # A relative "gitdir:" (git worktree add --relative-paths) resolves from the worktree.
    relative = Path(os.path.relpath(workspace._git_dir(ws.path), ws.path))
    (ws.path / ".git").write_text(f"gitdir: {relative}\n")
    assert workspace._git_dir(ws.path) == Path(workspace.git("rev-parse", "--absolute-git-dir", cwd=ws.path).strip())


def test_the_first_snapshot_starts_from_the_checkout_index(repo, tmp_path, monkeypatch):
    # The checkout's index has every file's size and time, so git hashes only what changed; the
    # snapshot neither rebuilds an index from HEAD nor touches the real one.
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000011")
    (ws.path / "new.txt").write_text("new\n")
    commands = []
    original = workspace.git

    def recorded(*args, **kwargs):
        commands.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(workspace, "git", recorded)
    tree = workspace.snapshot_tree(ws.path)
    assert commands == ["add", "write-tree"]
    listed = original("ls-tree", "--name-only", tree, cwd=ws.path).split()
    assert listed == ["README.md", "new.txt"]
    assert original("status", "--porcelain", cwd=ws.path).strip() == "?? new.txt"


def _files_under(folder):
    return {(str(path.relative_to(folder)), path.stat().st_mtime_ns) for path in folder.rglob("*") if path.is_file()}


def test_snapshots_and_checkpoints_write_nothing_in_the_worktrees_git_folder(repo, tmp_path):
    # OpenCode watches a worktree's git folder (.git/worktrees/<name>) and reports every file written
    # there as an event on its one JavaScript thread: the private index and base live elsewhere.
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000021")
    git_folder = workspace._git_dir(ws.path)
    before = _files_under(git_folder)
    (ws.path / "new.txt").write_text("new\n")
    first = workspace.create_checkpoint(path=ws.path, reference="IND-000021", name="msg_1", parent=ws.head)
    (ws.path / "new.txt").write_text("changed\n")
    workspace.create_checkpoint(path=ws.path, reference="IND-000021", name="msg_2", parent=ws.head, previous=first)
    workspace.workspace_diff(path=ws.path, base_commit=ws.base_commit)
    assert _files_under(git_folder) == before
    private = workspace._private_dir(ws.path)
    assert private.parent == repo / ".git" / "ind" / "worktrees"
    assert sorted(path.name for path in private.iterdir()) == ["base", "index"]
    # A reopened worktree (a retried session) still knows its base.
    again = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000021", path=ws.path)
    assert again.base_commit == ws.base_commit


def test_a_removed_worktrees_private_files_go_with_it(repo, tmp_path):
    # git reuses a removed worktree's folder name: its successor must not inherit the snapshot index.
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "a", reference="IND-000022")
    (ws.path / "gone.txt").write_text("only in the first\n")
    workspace.snapshot_tree(ws.path)
    private = workspace._private_dir(ws.path)
    workspace.remove_workspace(repository=repo, path=ws.path)
    assert not private.exists()
    stale = private / "index"  # as a crash between removal steps could leave it
    stale.parent.mkdir(parents=True)
    stale.write_text("not an index")
    successor = workspace.prepare_workspace(repository=repo, root=tmp_path / "b", reference="IND-000022")
    assert workspace._private_dir(successor.path) == private
    tree = workspace.snapshot_tree(successor.path)
    assert workspace.git("ls-tree", "--name-only", tree, cwd=successor.path).split() == ["README.md"]


def test_a_worktree_from_before_the_private_folder_keeps_its_base(repo, tmp_path):
    ws = workspace.prepare_workspace(repository=repo, root=tmp_path / "ws", reference="IND-000023")
    shutil.rmtree(workspace._private_dir(ws.path))
    (workspace._git_dir(ws.path) / "ind-base").write_text(ws.base_commit)
    assert workspace._read_base(ws.path) == ws.base_commit


def test_the_head_commit_is_read_from_the_repositorys_files_and_from_git_otherwise(repo, monkeypatch):
    asked = []
    original = workspace.git
    monkeypatch.setattr(workspace, "git", lambda *args, **kwargs: asked.append(args) or original(*args, **kwargs))

    def rev_parse():
        return original("rev-parse", "HEAD", cwd=repo).strip()

    assert workspace.head_commit(repo) == rev_parse() and asked == []  # HEAD -> a loose branch ref
    (repo / "more.txt").write_text("more\n")
    original("add", "-A", cwd=repo)
    original("commit", "-qm", "more", cwd=repo)
    assert workspace.head_commit(repo) == rev_parse() and asked == []
    original("checkout", "-q", "--detach", "HEAD~1", cwd=repo)  # a detached HEAD holds the commit itself
    assert workspace.head_commit(repo) == rev_parse() and asked == []
    original("checkout", "-q", "main", cwd=repo)
    original("pack-refs", "--all", cwd=repo)  # no loose ref file any more: git is asked
    assert workspace.head_commit(repo) == rev_parse() and asked == [("rev-parse", "HEAD")]
