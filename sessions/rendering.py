"""Plain rendering helpers of the session monitor (no Django): shared by its views and consumers.

A unified patch split into files with each line classified, durations as people read them,
and the typed reason a session is in its state.
"""

from dataclasses import dataclass, field

# A file's patch longer than this is rendered collapsed (<details> closed): the page stays readable.
COLLAPSE_LINES = 120
# Lines of one file's patch rendered at all; the rest is summarised (a generated file can be huge).
FILE_LINES_MAX = 2_000


@dataclass
class PatchLine:
    kind: str  # "add", "del", "hunk", "context", "meta"
    text: str


@dataclass
class FilePatch:
    path: str
    lines: list = field(default_factory=list)
    additions: int = 0
    deletions: int = 0
    binary: bool = False
    omitted_lines: int = 0  # lines past FILE_LINES_MAX, not rendered

    @property
    def collapsed(self):
        return len(self.lines) + self.omitted_lines > COLLAPSE_LINES


def _path_of(header):
    """b/<path> of a `diff --git a/<path> b/<path>` line (the new name; the old one for a deletion)."""
    rest = header[len("diff --git "):]
    if " b/" in rest:
        return rest.rsplit(" b/", 1)[1]
    return rest.removeprefix("a/")


def split_patch(patch, *, file_lines_max=FILE_LINES_MAX, default_path=None):
    """The files of a unified patch (`git diff` output), in order, each line classified.

    Lines are kept as text (the template escapes them); nothing is highlighted by language.
    Lines before any `diff --git` header belong to `default_path` when given (a bare hunk body),
    and are dropped otherwise.
    """
    files = []
    current = None
    in_hunk = False
    if default_path is not None and not (patch or "").startswith("diff --git "):
        current = FilePatch(path=default_path)
        files.append(current)
        in_hunk = True
    for line in (patch or "").splitlines():
        if line.startswith("diff --git "):
            current = FilePatch(path=_path_of(line))
            files.append(current)
            in_hunk = False
            continue
        if current is None:
            continue
        if line.startswith("@@"):
            kind, in_hunk = "hunk", True
        elif not in_hunk:
            if line.startswith("Binary files"):
                current.binary = True
            kind = "meta"
        elif line.startswith("+"):
            kind = "add"
            current.additions += 1
        elif line.startswith("-"):
            kind = "del"
            current.deletions += 1
        else:
            kind = "context"
        if kind == "meta" and line.startswith(("index ", "--- ", "+++ ")):
            continue  # the header the file's name already says
        if len(current.lines) >= file_lines_max:
            current.omitted_lines += 1
            continue
        current.lines.append(PatchLine(kind, line))
    return files


def format_duration(seconds):
    """`1h 02m`, `4m 05s`, `12s`: whole seconds, never negative."""
    seconds = max(0, int(seconds or 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


@dataclass(frozen=True)
class Reason:
    """Why a session is in its state: a code a program can match and a sentence for people."""

    code: str
    text: str


def status_reason(*, status, error, at_risk, last_transition):
    """The typed reason of the session's current state, or None when the state needs none.

    `error` is the session's {type, message}; `last_transition` (action, reason) is the audit
    row that brought it here, or None.
    """
    if error and status in {"failed", "timeout", "orphaned"}:
        return Reason(str(error.get("type") or status), str(error.get("message") or ""))
    if at_risk:
        return Reason("at_risk", "less than 300 s of the time budget left")
    if last_transition is not None and last_transition[1] and status in {
        "degraded", "paused", "stopped", "partially_completed", "cancelled", "pending",
    }:
        action, reason = last_transition
        return Reason(action, reason)
    return None
