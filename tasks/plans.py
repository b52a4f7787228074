"""Plans: the task graph a planner (or a person, or automation) proposes for a session (plain Python).

The plan format is one JSON object, the planner's final answer (in a ```json fence or bare) and the
body of the plan API:

    {"summary": "one paragraph",
     "tasks": [{"key": "schema", "title": "Design the books schema",
                "prompt": "what the agent must do, self-contained",
                "capabilities": ["system_design"],
                "files": ["books/models.py", "books/migrations/"],
                "estimate_hours": {"optimistic": 0.5, "likely": 1, "pessimistic": 2},
                "after": [],
                "acceptance": "python -m pytest books -q"}]}

`check_plan` validates the shape and runs the mechanical checks; every finding names the task keys
it is about, so a person (or the planner's repair turn) can fix exactly those. Errors refuse the
plan. Two tasks that may run at the same time (neither reaches the other through `after`) and own
overlapping files get an ordering edge instead (the later key, in plan order, after the earlier):
that is an adjustment, reported, not an error. Parallel tasks each run in their own worktree and
are merged back with git, so tasks sharing files would conflict; ordering them avoids the conflict.
"""

import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import networkx as nx

from tasks.decomposition import CAPABILITIES
from tasks.estimates import Estimate

TASKS_MIN = 1
TASKS_MAX = 40
KEY_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,48}[a-z0-9])?$")
KEY_RULE = "a slug: 1-50 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit"
TITLE_MAX = 200
SUMMARY_MAX = 4_000
PROMPT_MAX_BYTES = 20_000
FILES_MAX = 100
PATH_MAX = 500
AFTER_MAX = TASKS_MAX
ACCEPTANCE_MAX = 2_000
ESTIMATE_MAX_HOURS = 1_000.0
# The planner's whole answer; anything longer is not one plan of at most 40 tasks of 20 kB.
ANSWER_MAX = 1_000_000

TOP_FIELDS = frozenset({"summary", "tasks"})
TASK_FIELDS = frozenset({"key", "title", "prompt", "capabilities", "files", "estimate_hours", "after", "acceptance"})
ESTIMATE_POINTS = ("optimistic", "likely", "pessimistic")

AFTER = "after"
OVERLAP = "files_overlap"

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Finding:
    """One thing a check found: `code` (machine), `message` (person), the task keys and the field path."""

    code: str
    message: str
    tasks: tuple = ()
    field: str = ""

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "tasks": list(self.tasks), "field": self.field}


@dataclass(frozen=True)
class PlanTask:
    key: str
    title: str
    prompt: str
    capabilities: tuple
    files: tuple
    estimate: Estimate
    after: tuple
    acceptance: str
    order: int


@dataclass(frozen=True)
class PlanEdge:
    """`dependent` starts after `prerequisite` finishes; `origin` is AFTER (the plan said so) or OVERLAP."""

    prerequisite: str
    dependent: str
    origin: str = AFTER


@dataclass
class CheckedPlan:
    """A plan after the checks: its tasks in plan order, every edge (the plan's and the added ones),
    the findings that refuse it (empty when it may be stored) and the adjustments made."""

    summary: str = ""
    tasks: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    adjustments: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def prerequisites(self, key) -> list:
        return [edge.prerequisite for edge in self.edges if edge.dependent == key]

    def as_plan(self) -> dict:
        """The plan in its own format with the adjustments applied (added edges in `after`)."""
        return {
            "summary": self.summary,
            "tasks": [
                {
                    "key": task.key, "title": task.title, "prompt": task.prompt,
                    "capabilities": list(task.capabilities), "files": list(task.files),
                    "estimate_hours": {
                        "optimistic": task.estimate.optimistic, "likely": task.estimate.likely,
                        "pessimistic": task.estimate.pessimistic,
                    },
                    "after": self.prerequisites(task.key),
                    "acceptance": task.acceptance or None,
                }
                for task in self.tasks
            ],
        }


class PlanFormatError(ValueError):
    """The text holds no plan object; `finding` says why."""

    def __init__(self, finding):
        super().__init__(finding.message)
        self.finding = finding


# --- reading the planner's answer ------------------------------------------------------------


def plan_from_answer(text: str) -> dict:
    """The plan object in a planner's final answer: the last ```json fence (or an unlabelled fence
    holding an object), else the whole answer, else the outermost {...}. Raises PlanFormatError."""
    if not isinstance(text, str) or not text.strip():
        raise PlanFormatError(Finding("malformed", "The answer is empty; it must hold the plan as one JSON object"))
    if len(text) > ANSWER_MAX:
        raise PlanFormatError(Finding("malformed", f"The answer is longer than {ANSWER_MAX} characters"))
    fences = FENCE.findall(text)
    labelled = [body for label, body in fences if label.lower() == "json"]
    candidates = labelled[-1:] or [body for label, body in fences if not label and body.lstrip().startswith("{")][-1:]
    if not candidates:
        stripped = text.strip()
        candidates = [stripped]
        start, end = stripped.find("{"), stripped.rfind("}")
        if 0 <= start < end and stripped[start : end + 1] != stripped:
            candidates.append(stripped[start : end + 1])
    error = None
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError as exc:
            error = exc
            continue
        if isinstance(value, dict):
            return value
        raise PlanFormatError(Finding("malformed", "The plan must be one JSON object, not a " + type(value).__name__))
    where = "in the ```json block" if labelled else "in the answer"
    raise PlanFormatError(Finding("malformed", f"No valid JSON object {where}: {error}"))


def check_answer(text: str, *, repository: Path | None = None) -> CheckedPlan:
    """check_plan on the plan in a planner's answer; a malformed answer is one `malformed` finding."""
    try:
        data = plan_from_answer(text)
    except PlanFormatError as exc:
        return CheckedPlan(findings=[exc.finding])
    return check_plan(data, repository=repository)


# --- the shape --------------------------------------------------------------------------------


def _text(value, *, path, key, limit, required, findings, name, limit_in_bytes=False):
    keys = (key,) if key else ()
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        findings.append(Finding("invalid_field", f"{name} must be {'non-empty ' if required else ''}text", keys, path))
        return ""
    size = len(value.encode("utf-8")) if limit_in_bytes else len(value)
    if size > limit:
        unit = "bytes" if limit_in_bytes else "characters"
        findings.append(Finding("too_long", f"{name} is {size} {unit}; at most {limit}", keys, path))
    if "\x00" in value:
        findings.append(Finding("invalid_field", f"{name} must not contain NUL characters", keys, path))
    return value.strip() if not limit_in_bytes else value


def _string_list(value, *, path, key, limit, findings, name):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        findings.append(Finding("invalid_field", f"{name} must be a list of strings", (key,), path))
        return []
    if len(value) > limit:
        findings.append(Finding("too_long", f"{name} has {len(value)} entries; at most {limit}", (key,), path))
        return []
    return value


def normalise_path(raw: str) -> str | None:
    """A repository-relative path in one spelling ("books/", "books/models.py", "." for everything),
    or None when it points outside the repository (absolute, `..`, a home or drive prefix)."""
    text = raw.strip()
    if not text or "\x00" in text or "\\" in text:
        return None
    if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text):
        return None
    directory = text.endswith("/")
    parts = PurePosixPath(text).parts
    if ".." in parts:
        return None
    normal = posixpath.normpath(text)
    if normal == ".":
        return "."
    return normal + "/" if directory else normal


def _inside(repository: Path, path: str) -> bool:
    """Whether `path` stays inside `repository` once symbolic links are followed."""
    root = repository.resolve()
    target = (root / path).resolve()
    return target == root or root in target.parents


def _estimate(value, *, path, key, findings):
    keys = (key,)
    if not isinstance(value, dict):
        findings.append(Finding(
            "invalid_estimate", "estimate_hours must be an object {optimistic, likely, pessimistic} in hours",
            keys, path,
        ))
        return Estimate(0.0, 0.0, 0.0)
    unknown = sorted(set(value) - set(ESTIMATE_POINTS))
    if unknown:
        findings.append(Finding("unknown_field", f"estimate_hours has unknown fields: {', '.join(unknown)}",
                                keys, path))
    points = []
    for name in ESTIMATE_POINTS:
        number = value.get(name)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            findings.append(Finding("invalid_estimate", f"estimate_hours.{name} must be a finite number of hours",
                                    keys, f"{path}.{name}"))
            return Estimate(0.0, 0.0, 0.0)
        if not 0 <= number <= ESTIMATE_MAX_HOURS:
            findings.append(Finding("invalid_estimate", f"estimate_hours.{name} must be between 0 and "
                                    f"{ESTIMATE_MAX_HOURS:g} hours", keys, f"{path}.{name}"))
            return Estimate(0.0, 0.0, 0.0)
        points.append(float(number))
    optimistic, likely, pessimistic = points
    if not optimistic <= likely <= pessimistic:
        findings.append(Finding("invalid_estimate", "estimate_hours must satisfy optimistic <= likely <= pessimistic",
                                keys, path))
        return Estimate(0.0, 0.0, 0.0)
    return Estimate(optimistic, likely, pessimistic)


def _parse_task(index, raw, findings, repository):
    path = f"tasks[{index}]"
    if not isinstance(raw, dict):
        findings.append(Finding("invalid_field", f"task {index + 1} must be an object", (), path))
        return None
    key = raw.get("key")
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        findings.append(Finding("invalid_key", f"task {index + 1}: key {key!r} must be {KEY_RULE}", (), f"{path}.key"))
        key = f"#{index + 1}"
    unknown = sorted(set(raw) - TASK_FIELDS)
    if unknown:
        findings.append(Finding("unknown_field", f"task {key}: unknown fields {', '.join(unknown)}", (key,), path))
    title = _text(raw.get("title"), path=f"{path}.title", key=key, limit=TITLE_MAX, required=True,
                  findings=findings, name=f"task {key}: title")
    prompt = _text(raw.get("prompt"), path=f"{path}.prompt", key=key, limit=PROMPT_MAX_BYTES, required=True,
                   findings=findings, name=f"task {key}: prompt", limit_in_bytes=True)
    acceptance = _text(raw.get("acceptance"), path=f"{path}.acceptance", key=key, limit=ACCEPTANCE_MAX,
                       required=False, findings=findings, name=f"task {key}: acceptance")

    capabilities = _string_list(raw.get("capabilities"), path=f"{path}.capabilities", key=key,
                                limit=len(CAPABILITIES), findings=findings, name=f"task {key}: capabilities")
    unknown_capabilities = [name for name in capabilities if name not in CAPABILITIES]
    if unknown_capabilities:
        findings.append(Finding(
            "unknown_capability",
            f"task {key}: unknown capabilities {', '.join(unknown_capabilities)} (the 26 are listed in SPEC)",
            (key,), f"{path}.capabilities",
        ))

    files = []
    for position, raw_path in enumerate(_string_list(raw.get("files"), path=f"{path}.files", key=key,
                                                     limit=FILES_MAX, findings=findings, name=f"task {key}: files")):
        where = f"{path}.files[{position}]"
        if len(raw_path) > PATH_MAX:
            findings.append(Finding("too_long", f"task {key}: a path is longer than {PATH_MAX} characters",
                                    (key,), where))
            continue
        normal = normalise_path(raw_path)
        if normal is None or (repository is not None and not _inside(repository, normal)):
            findings.append(Finding(
                "file_outside_repository",
                f"task {key}: {raw_path!r} is outside the repository (paths are relative to it, without '..')",
                (key,), where,
            ))
            continue
        if normal not in files:
            files.append(normal)

    after = _string_list(raw.get("after"), path=f"{path}.after", key=key, limit=AFTER_MAX, findings=findings,
                         name=f"task {key}: after")
    estimate = _estimate(raw.get("estimate_hours"), path=f"{path}.estimate_hours", key=key, findings=findings)
    return PlanTask(
        key=key, title=title, prompt=prompt, capabilities=tuple(dict.fromkeys(capabilities)), files=tuple(files),
        estimate=estimate, after=tuple(dict.fromkeys(after)), acceptance=acceptance, order=index,
    )


# --- the checks -------------------------------------------------------------------------------


def covers(owner: str, other: str) -> bool:
    """Whether path `owner` is `other` or a directory prefix of it ("." covers everything)."""
    if owner == "." or owner == other:
        return True
    return other.startswith(owner.rstrip("/") + "/")


def overlapping_files(first: PlanTask, second: PlanTask) -> list:
    """The files of `first` that overlap some file of `second` (same path or one a prefix of the other)."""
    return [a for a in first.files if any(covers(a, b) or covers(b, a) for b in second.files)]


def check_plan(data, *, repository: Path | None = None) -> CheckedPlan:
    """Validate a plan object and run the mechanical checks.

    Findings (errors, each naming its task keys): malformed shape, bounds, duplicate or bad keys,
    unknown capabilities, `after` naming an unknown key or the task itself, a cycle (named: "a → b
    → a"), files outside the repository (with `repository`, symbolic links are followed too).
    When the dependencies are sound, tasks that may run at the same time and own overlapping files
    are ordered (an added edge per pair, in plan order) and each addition is an adjustment.
    """
    findings = []
    if not isinstance(data, dict):
        return CheckedPlan(findings=[Finding("malformed", "The plan must be a JSON object {summary, tasks}")])
    unknown = sorted(set(data) - TOP_FIELDS)
    if unknown:
        findings.append(Finding("unknown_field", f"The plan has unknown fields: {', '.join(unknown)}", (), ""))
    summary = _text(data.get("summary"), path="summary", key=None, limit=SUMMARY_MAX, required=False,
                    findings=findings, name="summary")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list):
        findings.append(Finding("invalid_field", "tasks must be a list of task objects", (), "tasks"))
        return CheckedPlan(summary=summary, findings=findings)
    if not TASKS_MIN <= len(raw_tasks) <= TASKS_MAX:
        findings.append(Finding("task_count",
                                f"A plan has {TASKS_MIN}-{TASKS_MAX} tasks; this one has {len(raw_tasks)}",
                                (), "tasks"))
        return CheckedPlan(summary=summary, findings=findings)

    tasks = [task for index, raw in enumerate(raw_tasks) if (task := _parse_task(index, raw, findings, repository))]
    seen = {}
    for task in tasks:
        if task.key in seen and not task.key.startswith("#"):
            findings.append(Finding("duplicate_key", f"key {task.key} is used by tasks {seen[task.key] + 1} and "
                                    f"{task.order + 1}; keys must be unique", (task.key,), f"tasks[{task.order}].key"))
        seen.setdefault(task.key, task.order)

    edges = []
    dependencies_sound = True
    for task in tasks:
        for prerequisite in task.after:
            where = f"tasks[{task.order}].after"
            if prerequisite == task.key:
                findings.append(Finding("self_dependency", f"task {task.key} lists itself in after",
                                        (task.key,), where))
                dependencies_sound = False
            elif prerequisite not in seen:
                findings.append(Finding("unknown_dependency", f"task {task.key}: after names {prerequisite!r}, "
                                        "which is no task of this plan", (task.key,), where))
                dependencies_sound = False
            else:
                edges.append(PlanEdge(prerequisite, task.key, AFTER))
    checked = CheckedPlan(summary=summary, tasks=tasks, edges=edges, findings=findings)
    if not dependencies_sound or any(f.code in ("duplicate_key", "invalid_key") for f in findings):
        return checked

    graph = nx.DiGraph()
    graph.add_nodes_from(task.key for task in tasks)
    graph.add_edges_from((edge.prerequisite, edge.dependent) for edge in edges)
    cycle = _cycle(graph, [task.key for task in tasks])
    if cycle is not None:
        text = " → ".join(cycle)
        findings.append(Finding("cycle", f"The tasks' after lists form a cycle: {text}", tuple(cycle[:-1]), "tasks"))
        return checked
    _order_overlaps(checked, graph)
    return checked


def _cycle(graph, order):
    """One cycle as keys, the first repeated last, starting at the earliest key in plan order; or None."""
    try:
        cycle_edges = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return None
    nodes = [u for u, _v in cycle_edges]
    first = min(nodes, key=order.index)
    start = nodes.index(first)
    nodes = nodes[start:] + nodes[:start]
    return nodes + [nodes[0]]


def _order_overlaps(checked, graph):
    """Add an edge earlier → later for each pair that may run together and shares files (plan order).

    Reachability is recomputed after each addition, so a pair already ordered through an edge just
    added gets none of its own; an edge between two tasks neither of which reaches the other never
    closes a cycle.
    """
    tasks = [task for task in checked.tasks if task.files]
    # For each task, the nearest earlier one first: three tasks on one file become a chain a → b → c,
    # not a → b, a → c, b → c.
    for position, later in enumerate(tasks):
        for earlier in reversed(tasks[:position]):
            shared = overlapping_files(earlier, later) or overlapping_files(later, earlier)
            if not shared:
                continue
            if nx.has_path(graph, earlier.key, later.key) or nx.has_path(graph, later.key, earlier.key):
                continue
            graph.add_edge(earlier.key, later.key)
            checked.edges.append(PlanEdge(earlier.key, later.key, OVERLAP))
            checked.adjustments.append(Finding(
                "ordered_for_files",
                f"tasks {earlier.key} and {later.key} could run at the same time and both own "
                f"{', '.join(shared)}; {later.key} now runs after {earlier.key}",
                (earlier.key, later.key), f"tasks[{later.order}].after",
            ))


def findings_as_errors(findings) -> dict:
    """Findings as the `details` of a validation error: {field path or "plan": [messages]}."""
    errors = {}
    for finding in findings:
        errors.setdefault(finding.field or "plan", []).append(finding.message)
    return errors


def schedule(checked: CheckedPlan):
    """The PERT schedule of a sound plan (tasks.graph.analyse over the keys): order, waves, critical
    path weighted by each task's expected hours, total expected hours, slack."""
    from tasks import graph as graphs

    built = graphs.build_graph(
        ((task.key, task.key, task.estimate.expected, task.order) for task in checked.tasks),
        [(edge.prerequisite, edge.dependent) for edge in checked.edges],
    )
    return graphs.analyse(built)
