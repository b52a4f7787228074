"""Decomposition templates: break a task into concrete, estimated, ordered subtasks (no Django).

`plan_decomposition(title=..., description=..., template=None, max_depth=3)` returns a
tree of PlannedTask. Each template lists its steps as action phrases with the
capabilities an agent needs (SPEC's 26), a PERT estimate and the sibling steps it
waits for. A step whose estimate is still complex or expert is broken down again,
with the template the step names or else the general work breakdown (its estimate
split by fixed shares, so every level is smaller than the one above), until
`max_depth` levels exist below the decomposed task.
"""

import math
import re
from dataclasses import dataclass, field

from orchestrator.errors import ValidationFailed
from tasks.estimates import DECOMPOSABLE_LEVELS, Estimate, pert
from tasks.graph import FINISH_TO_START, START_TO_START

MIN_DEPTH = 1
MAX_DEPTH = 5
DEFAULT_DEPTH = 3

# A rough planning figure for an agent's token use per expected hour of work; the
# execution engine records the real numbers.
TOKENS_PER_EXPECTED_HOUR = 20_000

# Steps whose title starts with one of these are broken down in phases (design, main
# path, edge cases, tests); any other large step is split into equal parts.
IMPLEMENTATION_VERBS = frozenset({"Implement", "Refactor", "Configure"})
# A part aims at this many expected hours, and a step splits into at most MAX_PARTS.
PART_HOURS = 4.0
MAX_PARTS = 6

CAPABILITIES = frozenset(
    """requirements_analysis system_design architecture_planning task_decomposition code_generation
    test_generation testing documentation refactoring code_review security_audit performance_analysis
    compliance_check debugging bug_fixing troubleshooting root_cause_analysis optimization deployment
    configuration monitoring scaling workflow_orchestration resource_allocation conflict_resolution
    progress_tracking""".split()
)


@dataclass(frozen=True)
class Step:
    key: str
    title: str  # "{subject}" is replaced by the decomposed task's subject
    capabilities: tuple
    estimate: tuple  # (optimistic, likely, pessimistic) hours, or shares of the parent's when scaled
    after: tuple = ()  # sibling keys, finish_to_start
    starts_with: tuple = ()  # sibling keys, start_to_start
    description: str = ""
    expand_with: str | None = None  # template for a further breakdown; default: the general one


@dataclass(frozen=True)
class Template:
    name: str
    summary: str
    keywords: tuple
    steps: tuple
    scaled: bool = False  # estimates are shares of the parent's estimate


@dataclass
class PlannedTask:
    title: str
    description: str
    capabilities: list
    estimate: Estimate
    template: str
    reason: str
    depth: int
    order: int
    depends_on: list = field(default_factory=list)  # [(sibling index, dependency type)]
    children: list = field(default_factory=list)

    @property
    def estimated_tokens(self) -> int:
        return round(self.estimate.expected * TOKENS_PER_EXPECTED_HOUR)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class Plan:
    template: str
    reason: str
    subtasks: list

    def walk(self):
        for task in self.subtasks:
            yield from task.walk()

    @property
    def depth(self) -> int:
        return max((task.depth for task in self.walk()), default=0)

    @property
    def leaf_estimate(self) -> Estimate:
        """The summed effort of the leaves (what will actually be executed)."""
        leaves = [task.estimate for task in self.walk() if not task.children]
        return Estimate(
            sum(e.optimistic for e in leaves), sum(e.likely for e in leaves), sum(e.pessimistic for e in leaves)
        )


TEMPLATES = {
    template.name: template
    for template in (
        Template(
            name="microservice",
            summary="contract → persistence → endpoints, security → tests → deployment; docs alongside",
            keywords=(
                "microservice", "micro-service", "service", "grpc", "message queue", "kafka", "rabbitmq",
                "docker", "kubernetes", "deployment", "api gateway", "backend",
            ),
            steps=(
                Step("contract", "Write the service contract and API design for {subject}",
                     ("requirements_analysis", "system_design", "architecture_planning"), (1, 2, 4)),
                Step("persistence", "Implement the data model and persistence of {subject}",
                     ("code_generation",), (2, 4, 8), after=("contract",)),
                Step("endpoints", "Implement the API endpoints of {subject}",
                     ("code_generation",), (3, 6, 12), after=("persistence",)),
                Step("security", "Implement authentication and authorization for {subject}",
                     ("security_audit", "code_generation"), (4, 8, 14), after=("contract",),
                     expand_with="security"),
                Step("tests", "Write tests for {subject}",
                     ("test_generation", "testing"), (1, 3, 6), after=("endpoints", "security")),
                Step("deployment", "Configure deployment and monitoring of {subject}",
                     ("deployment", "configuration", "monitoring"), (1, 2, 4), after=("tests",)),
                Step("docs", "Document the API of {subject}",
                     ("documentation",), (0.5, 1, 2), starts_with=("endpoints",)),
            ),
        ),
        Template(
            name="crud",
            summary="model → create/read/update/delete → validation → authorization → tests",
            keywords=(
                "crud", "create, read", "create/read", "resource", "entity", "records", "database table",
                "model", "endpoints", "rest",
            ),
            steps=(
                Step("model", "Implement the data model and migration for {subject}",
                     ("system_design", "code_generation"), (1, 2, 4)),
                Step("create", "Implement the create operation for {subject}",
                     ("code_generation",), (0.5, 1, 2), after=("model",)),
                Step("read", "Implement the read and list operations for {subject}",
                     ("code_generation",), (0.5, 1, 2), after=("model",)),
                Step("update", "Implement the update operation for {subject}",
                     ("code_generation",), (0.5, 1, 2), after=("model",)),
                Step("delete", "Implement the delete operation for {subject}",
                     ("code_generation",), (0.25, 0.5, 1), after=("model",)),
                Step("validation", "Implement input validation for {subject}",
                     ("code_generation",), (0.5, 1, 2), after=("create", "read", "update", "delete")),
                Step("authorization", "Implement authorization checks for {subject}",
                     ("security_audit", "code_generation"), (0.5, 1, 3), after=("validation",)),
                Step("tests", "Write tests for {subject}",
                     ("test_generation", "testing"), (1, 2, 4), after=("authorization",)),
            ),
        ),
        Template(
            name="security",
            summary="threat model → identity → access control → encryption → audit → security tests, chained",
            keywords=(
                "security", "secure", "authentication", "authorization", "auth", "oauth", "jwt", "login",
                "encryption", "encrypt", "vulnerability", "threat", "permission", "password", "audit",
                "compliance", "csrf", "xss", "injection",
            ),
            steps=(
                Step("threat_model", "Write the threat model for {subject}",
                     ("security_audit", "requirements_analysis"), (1, 2, 4)),
                Step("identity", "Implement identity and authentication for {subject}",
                     ("security_audit", "code_generation"), (1, 3, 6), after=("threat_model",)),
                Step("access_control", "Implement access control for {subject}",
                     ("security_audit", "code_generation"), (1, 2, 4), after=("identity",)),
                Step("encryption", "Implement encryption in transit and at rest for {subject}",
                     ("security_audit", "configuration", "code_generation"), (1, 2, 4), after=("access_control",)),
                Step("audit", "Implement audit logging for {subject}",
                     ("monitoring", "code_generation"), (0.5, 1, 2), after=("encryption",)),
                Step("tests", "Write security tests for {subject}",
                     ("test_generation", "security_audit"), (1, 2, 3), after=("audit",)),
            ),
        ),
        Template(
            name="ui_component",
            summary="states and props → markup → interaction, accessibility → tests; usage docs",
            keywords=(
                "ui", "component", "button", "modal", "dialog", "widget", "page", "frontend", "front-end",
                "react", "vue", "css", "layout", "form", "dropdown", "screen",
            ),
            steps=(
                Step("design", "Design the states and props of {subject}",
                     ("requirements_analysis", "system_design"), (0.5, 1, 2)),
                Step("markup", "Implement the markup and styles of {subject}",
                     ("code_generation",), (1, 2, 4), after=("design",)),
                Step("behaviour", "Implement the interaction and state handling of {subject}",
                     ("code_generation",), (1, 2, 4), after=("markup",)),
                Step("accessibility", "Implement keyboard and screen-reader accessibility for {subject}",
                     ("code_generation", "compliance_check"), (0.5, 1, 2), after=("markup",)),
                Step("tests", "Write tests for {subject}",
                     ("test_generation", "testing"), (0.5, 1, 2), after=("behaviour", "accessibility")),
                Step("docs", "Document the usage of {subject}",
                     ("documentation",), (0.25, 0.5, 1), after=("behaviour",)),
            ),
        ),
        Template(
            name="bugfix",
            summary="reproduce → root cause → fix → regression tests → review",
            keywords=(
                "bug", "fix", "fixed", "crash", "crashes", "error", "regression", "broken", "fails",
                "failing", "exception", "incorrect", "wrong", "defect", "traceback",
            ),
            steps=(
                Step("reproduce", "Reproduce the bug in {subject} with a failing test",
                     ("debugging", "test_generation"), (0.5, 1, 3)),
                Step("root_cause", "Find the root cause of the bug in {subject}",
                     ("root_cause_analysis", "troubleshooting", "debugging"), (0.5, 2, 6), after=("reproduce",)),
                Step("fix", "Implement the fix for {subject}",
                     ("bug_fixing", "code_generation"), (0.5, 1, 3), after=("root_cause",)),
                Step("regression", "Write regression tests for {subject}",
                     ("test_generation", "testing"), (0.25, 0.5, 1), after=("fix",)),
                Step("review", "Review the fix for {subject}",
                     ("code_review",), (0.25, 0.5, 1), after=("regression",)),
            ),
        ),
        Template(
            name="refactor",
            summary="analyse → characterisation tests → refactor → verify → review; docs after the refactor",
            keywords=(
                "refactor", "refactoring", "restructure", "clean up", "cleanup", "simplify", "technical debt",
                "tech debt", "rename", "extract", "modularize", "modularise", "decouple", "legacy",
            ),
            steps=(
                Step("analyse", "Analyse the current design of {subject}",
                     ("code_review", "system_design"), (0.5, 1, 2)),
                Step("characterise", "Write characterisation tests for {subject}",
                     ("test_generation", "testing"), (1, 2, 4), after=("analyse",)),
                Step("refactor", "Refactor {subject} in small behaviour-preserving steps",
                     ("refactoring", "code_generation"), (2, 4, 8), after=("characterise",)),
                Step("verify", "Verify the behaviour and performance of {subject} after the refactor",
                     ("testing", "performance_analysis"), (0.5, 1, 2), after=("refactor",)),
                Step("review", "Review the refactor of {subject}",
                     ("code_review",), (0.25, 0.5, 1), after=("verify",)),
                Step("docs", "Update the documentation of {subject}",
                     ("documentation",), (0.25, 0.5, 1), after=("refactor",)),
            ),
        ),
        Template(
            name="feature",
            summary="requirements → design → implementation → tests → review (used when nothing else matches)",
            keywords=(),
            steps=(
                Step("requirements", "Analyse the requirements of {subject}",
                     ("requirements_analysis",), (0.5, 1, 2)),
                Step("design", "Design {subject}",
                     ("system_design",), (0.5, 1, 3), after=("requirements",)),
                Step("implement", "Implement {subject}",
                     ("code_generation",), (2, 4, 8), after=("design",)),
                Step("tests", "Write tests for {subject}",
                     ("test_generation", "testing"), (1, 2, 4), after=("implement",)),
                Step("review", "Review and document {subject}",
                     ("code_review", "documentation"), (0.5, 1, 2), after=("tests",)),
            ),
        ),
        Template(
            name="breakdown",
            summary="the general breakdown of a large step: design → main path → edge cases, tests",
            keywords=(),
            scaled=True,
            steps=(
                Step("design", "Design the approach for {subject}", ("system_design",), (0.15, 0.15, 0.15)),
                Step("main", "Implement the main path of {subject}", ("code_generation",), (0.4, 0.4, 0.4),
                     after=("design",)),
                Step("edges", "Implement error handling and edge cases of {subject}",
                     ("code_generation", "debugging"), (0.2, 0.2, 0.2), after=("main",)),
                Step("tests", "Write tests for {subject}", ("test_generation", "testing"), (0.25, 0.25, 0.25),
                     after=("main",)),
            ),
        ),
    )
}

# The templates a caller may name; `breakdown` serves deeper levels only.
TEMPLATE_NAMES = ("microservice", "crud", "security", "ui_component", "bugfix", "refactor", "feature")
FALLBACK_TEMPLATE = "feature"
# Ties in keyword score go to the more specific template.
TIE_ORDER = ("bugfix", "security", "refactor", "crud", "ui_component", "microservice")

_LEADING_VERBS = re.compile(
    r"^(?:please\s+)?(?:implement|write|build|create|add|design|configure|document|refactor|fix|develop|make|"
    r"analyse|analyze|update|review|reproduce|find|verify|secure|set up|setup)\s+",
    re.IGNORECASE,
)
_LEADING_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


def subject_of(title: str) -> str:
    """The object of a task title: "Build a user profile CRUD API" -> "user profile CRUD API"."""
    subject = title.strip().rstrip(".!")
    for pattern in (_LEADING_VERBS, _LEADING_ARTICLE):
        shorter = pattern.sub("", subject, count=1)
        if shorter.strip():
            subject = shorter
    return subject.strip() or title.strip()


def _keyword_pattern(keyword):
    return re.compile(r"(?<![\w-])" + re.escape(keyword).replace(r"\ ", r"\s+") + r"(?:s|es)?(?![\w-])", re.IGNORECASE)


_PATTERNS = {
    name: [(keyword, _keyword_pattern(keyword)) for keyword in TEMPLATES[name].keywords] for name in TIE_ORDER
}


def choose_template(title: str, description: str = "") -> tuple[str, str]:
    """The template that fits the text best, and the reason, recorded with the decomposition.

    Each keyword found in the title scores 2, in the description 1; the highest score
    wins, ties go to the more specific template (TIE_ORDER). No keyword: `feature`.
    """
    scores = []
    for rank, name in enumerate(TIE_ORDER):
        score, hits = 0, []
        for keyword, pattern in _PATTERNS[name]:
            if pattern.search(title or ""):
                score += 2
                hits.append(f"'{keyword}' in the title")
            elif pattern.search(description or ""):
                score += 1
                hits.append(f"'{keyword}' in the description")
        if score:
            scores.append((-score, rank, name, hits))
    if not scores:
        return FALLBACK_TEMPLATE, "no template keyword in the title or description; using the general feature template"
    scores.sort()
    best_score, _rank, name, hits = scores[0]
    reason = f"chosen from the text: {', '.join(hits)} (score {-best_score}"
    if len(scores) > 1:
        reason += f"; next {scores[1][2]} {-scores[1][0]}"
    return name, reason + ")"


def _validate(template, max_depth):
    errors = {}
    if template is not None and template not in TEMPLATE_NAMES:
        errors["template"] = [f"unknown template {template!r}; choose one of {', '.join(TEMPLATE_NAMES)}"]
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not MIN_DEPTH <= max_depth <= MAX_DEPTH:
        errors["max_depth"] = [f"must be an integer from {MIN_DEPTH} to {MAX_DEPTH}"]
    if errors:
        raise ValidationFailed(errors=errors)


def plan_decomposition(*, title: str, description: str = "", template: str | None = None,
                       max_depth: int = DEFAULT_DEPTH, estimate: Estimate | None = None) -> Plan:
    """The subtasks of a task: a template chosen explicitly or from the text, expanded to max_depth.

    `estimate`: the task's own estimate; when its expected hours are positive, the
    template's step estimates are scaled in proportion so that they add up to it (a
    200-hour service breaks down further than a 20-hour one). Otherwise the
    template's own figures are used. Raises ValidationFailed for an unknown template
    or a max_depth outside 1-5.
    """
    _validate(template, max_depth)
    if template is None:
        template, reason = choose_template(title, description)
    else:
        reason = f"template {template!r} requested explicitly"
    subtasks = _expand(
        TEMPLATES[template], subject_of(title), estimate, depth=1, max_depth=max_depth, reason=reason
    )
    return Plan(template=template, reason=reason, subtasks=subtasks)


def _step_estimates(template, parent_estimate):
    """Each step's estimate: shares of the parent's (scaled templates), or the template's own
    figures, proportionally rescaled to the parent's expected hours when it has some."""
    if template.scaled:
        return [parent_estimate.scaled(step.estimate[0]) for step in template.steps]
    estimates = [pert(*step.estimate) for step in template.steps]
    if parent_estimate is not None and parent_estimate.expected > 0:
        factor = parent_estimate.expected / sum(e.expected for e in estimates)
        estimates = [e.scaled(factor) for e in estimates]
    return estimates


def _is_implementation(task):
    return task.template != "breakdown" and task.title.split(" ", 1)[0] in IMPLEMENTATION_VERBS


def _expand(template, subject, parent_estimate, *, depth, max_depth, reason):
    keys = [step.key for step in template.steps]
    planned = []
    for order, (step, estimate) in enumerate(
        zip(template.steps, _step_estimates(template, parent_estimate), strict=True)
    ):
        task = PlannedTask(
            title=step.title.format(subject=subject),
            description=step.description.format(subject=subject) if step.description else "",
            capabilities=list(step.capabilities),
            estimate=estimate,
            template=template.name,
            reason=reason,
            depth=depth,
            order=order,
            depends_on=[(keys.index(key), FINISH_TO_START) for key in step.after]
            + [(keys.index(key), START_TO_START) for key in step.starts_with],
        )
        if depth < max_depth and estimate.complexity in DECOMPOSABLE_LEVELS:
            task.children = _expand_step(task, step, depth=depth, max_depth=max_depth)
        planned.append(task)
    return planned


def _expand_step(task, step, *, depth, max_depth):
    """Break a complex or expert step down: the template it names, the phase breakdown
    for implementation work, or else equal sequential parts."""
    estimate = task.estimate
    why = f"step is {estimate.complexity} ({estimate.expected:.2f} h expected)"
    if step.expand_with or _is_implementation(task):
        name = step.expand_with or "breakdown"
        return _expand(
            TEMPLATES[name], subject_of(task.title), estimate, depth=depth + 1, max_depth=max_depth,
            reason=f"{why}, broken down with the {name} template",
        )
    return _split_in_parts(task, task.title, "", depth=depth, max_depth=max_depth, why=why)


def _split_in_parts(task, base_title, label, *, depth, max_depth, why):
    """Equal sequential parts titled "<step> (part 2 of 3)"; a part still too large splits
    again with a dotted label ("<step> (part 2.1)")."""
    estimate = task.estimate
    parts = max(2, min(MAX_PARTS, math.ceil(estimate.expected / PART_HOURS)))
    reason = f"{why}, split into {parts} sequential parts"
    children = []
    for index in range(parts):
        child_label = f"{label}{index + 1}"
        child = PlannedTask(
            title=f"{base_title} (part {child_label})" if label else f"{base_title} (part {child_label} of {parts})",
            description=task.description,
            capabilities=list(task.capabilities),
            estimate=estimate.scaled(1 / parts),
            template="parts",
            reason=reason,
            depth=depth + 1,
            order=index,
            depends_on=[(index - 1, FINISH_TO_START)] if index else [],
        )
        if depth + 1 < max_depth and child.estimate.complexity in DECOMPOSABLE_LEVELS:
            child_why = f"part is {child.estimate.complexity} ({child.estimate.expected:.2f} h expected)"
            child.children = _split_in_parts(
                child, base_title, f"{child_label}.", depth=depth + 1, max_depth=max_depth, why=child_why
            )
        children.append(child)
    return children
