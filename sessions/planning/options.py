"""A session's planning options (plain rules; defaults come from settings).

Stored in the session's `metadata["planning"]` (no column: the engine reads them once per run, and
a session created without them takes the settings' defaults when it runs). `task_concurrency` is
also written to `metadata["task_concurrency"]`, where the engine has read it since parallel tasks.
"""

from dataclasses import asdict, dataclass

from django.conf import settings

from orchestrator.errors import ValidationFailed
from tasks.decomposition import TEMPLATE_NAMES

MODES = ("single", "template", "planner")
APPROVALS = ("required", "auto")
CONCURRENCY_MIN, CONCURRENCY_MAX = 1, 16
REPLAN_MIN, REPLAN_MAX = 0, 5
FIELDS = ("mode", "template", "plan_approval", "task_concurrency", "replan_limit")


@dataclass(frozen=True)
class PlanningOptions:
    mode: str
    template: str | None
    plan_approval: str
    task_concurrency: int
    replan_limit: int

    def as_dict(self) -> dict:
        return asdict(self)


def defaults() -> PlanningOptions:
    return PlanningOptions(
        mode=settings.SESSION_PLANNING_MODE, template=None, plan_approval=settings.SESSION_PLAN_APPROVAL,
        task_concurrency=settings.SESSION_TASK_CONCURRENCY, replan_limit=settings.SESSION_REPLAN_LIMIT,
    )


def _integer(value, low, high):
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def parse_options(value, *, fallback: PlanningOptions | None = None) -> PlanningOptions:
    """Options from a request's `planning` object, missing ones from `fallback` (the defaults).

    Raises ValidationFailed naming each field as `planning.<name>` and its rule.
    """
    base = fallback or defaults()
    if value is None:
        return base
    if not isinstance(value, dict):
        raise ValidationFailed(field="planning", rule="must be an object {mode, template, plan_approval, "
                                                      "task_concurrency, replan_limit}")
    errors = {}
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        errors["planning"] = [f"unknown fields: {', '.join(unknown)}"]
    merged = {**base.as_dict(), **{name: value[name] for name in FIELDS if name in value}}
    if merged["mode"] not in MODES:
        errors["planning.mode"] = [f"must be one of {', '.join(MODES)}"]
    if merged["template"] is not None and merged["template"] not in TEMPLATE_NAMES:
        errors["planning.template"] = [f"must be one of {', '.join(TEMPLATE_NAMES)} (or null: chosen from the work)"]
    if merged["plan_approval"] not in APPROVALS:
        errors["planning.plan_approval"] = [f"must be one of {', '.join(APPROVALS)}"]
    if not _integer(merged["task_concurrency"], CONCURRENCY_MIN, CONCURRENCY_MAX):
        errors["planning.task_concurrency"] = [f"must be an integer from {CONCURRENCY_MIN} to {CONCURRENCY_MAX}"]
    if not _integer(merged["replan_limit"], REPLAN_MIN, REPLAN_MAX):
        errors["planning.replan_limit"] = [f"must be an integer from {REPLAN_MIN} to {REPLAN_MAX}"]
    if errors:
        raise ValidationFailed(errors=errors)
    return PlanningOptions(**merged)


def options_of(metadata: dict | None) -> PlanningOptions:
    """A stored session's options: its `metadata["planning"]` over the current defaults."""
    metadata = metadata or {}
    stored = metadata.get("planning") if isinstance(metadata.get("planning"), dict) else {}
    base = defaults()
    if "task_concurrency" in metadata and "task_concurrency" not in stored:
        stored = {**stored, "task_concurrency": metadata["task_concurrency"]}
    try:
        return parse_options(stored, fallback=base)
    except ValidationFailed:
        # Written by hand through the admin, say: the defaults beat a broken value.
        return base


def metadata_with(metadata: dict | None, options: PlanningOptions) -> dict:
    return {**(metadata or {}), "planning": options.as_dict(), "task_concurrency": options.task_concurrency}
