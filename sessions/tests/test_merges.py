"""Merging task branches (real git) and acceptance commands (real processes): plain functions."""

import time

from sessions.execution import merges, workspace
from sessions.execution.acceptance import retry_prompt, run_acceptance


def session_and_task(tmp_path, task_files, session_files=None):
    """A repository, a session worktree on its branch, a task worktree branched from it with `task_files`
    written, and `session_files` committed on the session branch after the task branched."""
    repository = workspace.init_repository(tmp_path / "repo", {"shared.txt": "base\n"})
    session = workspace.prepare_workspace(repository=repository, root=tmp_path / "w", reference="S-1")
    start = workspace.git("rev-parse", "HEAD", cwd=session.path).strip()
    task = workspace.task_worktree(repository=repository, path=tmp_path / "w" / "S-1--task-7",
                                   branch="ind/S-1--task-7", start=start)
    for name, text in task_files.items():
        (task.path / name).write_text(text)
    for name, text in (session_files or {}).items():
        (session.path / name).write_text(text)
    if session_files:
        workspace.git("commit", "-qam", "session side", cwd=session.path)
    return session, task


def test_a_task_branch_merges_into_the_session_branch_with_a_merge_commit(tmp_path):
    session, task = session_and_task(tmp_path, {"new.txt": "from the task\n"}, {"shared.txt": "session\n"})
    merges.commit_task_work(path=task.path, message="task work")
    result = merges.merge_branch(path=session.path, branch=task.branch, message="Merge task 7")
    assert result.merged and not result.already_merged
    parents = workspace.git("rev-list", "--parents", "-n", "1", result.commit, cwd=session.path).split()
    assert len(parents) == 3  # a real merge commit, both sides its parents
    assert (session.path / "new.txt").read_text() == "from the task\n"
    again = merges.merge_branch(path=session.path, branch=task.branch, message="Merge task 7")
    assert again.merged and again.already_merged and again.commit == result.commit


def test_a_conflict_is_left_in_progress_then_aborted_cleanly(tmp_path):
    session, task = session_and_task(tmp_path, {"shared.txt": "task side\n"}, {"shared.txt": "session side\n"})
    merges.commit_task_work(path=task.path, message="task work")
    head = workspace.git("rev-parse", "HEAD", cwd=session.path).strip()
    result = merges.merge_branch(path=session.path, branch=task.branch, message="Merge task 7")
    assert not result.merged and result.conflicts == ["shared.txt"]
    assert merges.merge_in_progress(path=session.path)
    assert merges.files_with_markers(path=session.path, files=["shared.txt"]) == ["shared.txt"]
    assert "<<<<<<<" in merges.conflict_excerpt(path=session.path, files=["shared.txt"])
    merges.abort_merge(path=session.path)
    assert not merges.merge_in_progress(path=session.path)
    assert workspace.git("rev-parse", "HEAD", cwd=session.path).strip() == head
    assert (session.path / "shared.txt").read_text() == "session side\n"


def test_a_resolved_conflict_is_concluded_as_a_merge(tmp_path):
    session, task = session_and_task(tmp_path, {"shared.txt": "task side\n"}, {"shared.txt": "session side\n"})
    merges.commit_task_work(path=task.path, message="task work")
    merges.merge_branch(path=session.path, branch=task.branch, message="Merge task 7")
    (session.path / "shared.txt").write_text("session side\ntask side\n")
    assert merges.files_with_markers(path=session.path, files=["shared.txt"]) == []
    commit = merges.conclude_merge(path=session.path, message="Merge task 7")
    assert not merges.merge_in_progress(path=session.path)
    assert workspace.git("merge-base", "--is-ancestor", task.branch, commit, cwd=session.path, check=False, status=True)


def test_acceptance_keeps_the_tail_of_the_output_and_its_exit_status(tmp_path):
    result = run_acceptance(command="seq 1 5000; echo failing >&2; exit 4", cwd=tmp_path, timeout=30)
    assert not result.passed and result.exit_code == 4 and not result.timed_out
    assert result.truncated and len(result.output) == 8000 and result.output.endswith("5000\nfailing\n")
    prompt = retry_prompt(result)
    assert "exited with status 4" in prompt and "failing" in prompt
    assert run_acceptance(command="test -d .", cwd=tmp_path, timeout=30).passed


def test_acceptance_is_killed_with_its_children_at_the_time_limit(tmp_path):
    started = time.monotonic()
    result = run_acceptance(command="sleep 30 & sleep 30; echo never", cwd=tmp_path, timeout=0.5)
    assert time.monotonic() - started < 10
    assert result.timed_out and result.exit_code is None and not result.passed
    assert "killed after 0.5 s" in result.output and "never" not in result.output
