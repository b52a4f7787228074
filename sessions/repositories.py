"""Which repositories a session may work on: the one rule, checked where a session is created
(API, console; the admin cannot create sessions or change their repository) and again by the
worker before it touches the repository (sessions.execution.workspace.resolve_repository)."""

import os
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings

from orchestrator.errors import ValidationFailed
from sessions.rules import REPOSITORY_MAX


def repository_rule(roots: Sequence[Path]) -> str:
    return (
        "must be the absolute path of a git repository's top folder strictly below an allowed root "
        f"({', '.join(str(Path(root)) for root in roots)})"
    )


def repository_validate(*, path: str, roots: Sequence[Path] | None = None) -> str:
    """The repository's real path (symlinks and `..` resolved), or ValidationFailed on field
    `repository` naming the rule: an absolute path, resolving strictly below one of `roots`
    (default settings.REPOSITORY_ROOTS), that is the top of its own git repository (it holds
    `.git`). The root itself is refused: a worktree made there would belong to whatever
    repository encloses the root (the project's own checkout under var/repos)."""
    roots = [Path(root).resolve() for root in (settings.REPOSITORY_ROOTS if roots is None else roots)]
    rule = repository_rule(roots)

    def refuse(reason):
        raise ValidationFailed(field="repository", rule=f"{reason}: {rule}")

    if not isinstance(path, str) or not path.strip():
        raise ValidationFailed(field="repository", rule="is required")
    path = path.strip()
    if len(path) > REPOSITORY_MAX or "\x00" in path:
        refuse(f"must be at most {REPOSITORY_MAX} characters, without NUL")
    if not os.path.isabs(path):  # "demo", "../demo", "~/x", "file:///etc"
        refuse("is not an absolute path")
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop, a name too long
        refuse("cannot be resolved")
    if not any(root in real.parents for root in roots):
        refuse("is not strictly below an allowed root")
    if not real.is_dir():
        refuse("does not exist")
    if not (real / ".git").exists():
        refuse("is not the top folder of a git repository")
    return str(real)
