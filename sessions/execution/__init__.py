"""The execution engine: runs claimed sessions on OpenCode.

The package itself imports nothing: `sessions.execution.workspace` (git worktrees) is used by
recovery without loading the engine; the Celery job imports the run (`session_run.run_session`).
"""
