"""Input rules for sessions (SPEC, Sessions / Fields), as plain functions.

`validate_session_input` returns `{field: [rule, ...]}`; an empty dict means
the input is acceptable. The service raises `ValidationFailed(errors=...)` with
it, so the API, the console and the admin all refuse the same things with the
same words.
"""

import re
from decimal import Decimal, InvalidOperation

TITLE_MAX = 200
PROMPT_MAX = 100_000
DURATION_MIN = 60
DURATION_MAX = 86_400
DURATION_DEFAULT = 3_600
RETRIES_DEFAULT = 3
RETRIES_MAX = 10
REPOSITORY_MAX = 1_000
TAGS_MAX = 20
TAG_MAX = 50
TOKEN_BUDGET_MAX = 10**12
# metadata is returned in every list row: kept small and shallow.
METADATA_MAX_BYTES = 16_384
METADATA_MAX_DEPTH = 8

FORBIDDEN_TITLES = frozenset(
    {"test session", "new session", "untitled", "coding task", "development session"}
)

SESSION_TYPES = ("planning", "execution", "review", "debug", "integration")

PRIORITIES = {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 2, "LOW": 3, "DEFERRED": 4}
PRIORITY_NAMES = {number: name for name, number in PRIORITIES.items()}
PRIORITY_DEFAULT = 2

PERMISSION_DECISIONS = ("allow", "ask", "deny")

# provider/model; the model part may itself contain slashes (openrouter/meta/llama-3).
MODEL_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._:-]+(/[A-Za-z0-9._:-]+)*$")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.*-]{1,100}$")


def parse_priority(value):
    """CRITICAL..DEFERRED (any case) or 0..4 (int or digit string) -> 0..4; ValueError names the rule."""
    if isinstance(value, bool):
        raise ValueError("must be one of CRITICAL, HIGH, MEDIUM, LOW, DEFERRED or 0-4")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    elif isinstance(value, str) and value.strip().upper() in PRIORITIES:
        return PRIORITIES[value.strip().upper()]
    else:
        raise ValueError("must be one of CRITICAL, HIGH, MEDIUM, LOW, DEFERRED or 0-4")
    if number not in PRIORITY_NAMES:
        raise ValueError("must be one of CRITICAL, HIGH, MEDIUM, LOW, DEFERRED or 0-4")
    return number


def title_errors(title):
    if not isinstance(title, str) or not title.strip():
        return ["is required (1-200 characters)"]
    if len(title) > TITLE_MAX:
        return [f"must be at most {TITLE_MAX} characters"]
    if title.strip().lower() in FORBIDDEN_TITLES:
        return ["is too generic: name what the session does"]
    return []


def prompt_errors(prompt):
    if not isinstance(prompt, str) or not prompt.strip():
        return ["is required (1-100000 characters)"]
    if len(prompt) > PROMPT_MAX:
        return [f"must be at most {PROMPT_MAX} characters"]
    return []


def _int_range_errors(value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        return ["must be an integer"]
    if not low <= value <= high:
        return [f"must be between {low} and {high}"]
    return []


def _budget_errors(errors, soft_name, hard_name, soft, hard, *, integer):
    for name, value in ((soft_name, soft), (hard_name, hard)):
        if value is None:
            continue
        if integer and (isinstance(value, bool) or not isinstance(value, int)):
            errors.setdefault(name, []).append("must be an integer")
        elif not integer:
            try:
                value = Decimal(str(value))
            except InvalidOperation:
                errors.setdefault(name, []).append("must be a number")
                continue
        if name not in errors and value < 0:
            errors.setdefault(name, []).append("must not be negative")
    if soft is not None and hard is not None and soft_name not in errors and hard_name not in errors:
        if Decimal(str(soft)) > Decimal(str(hard)):
            errors.setdefault(soft_name, []).append(f"must not exceed {hard_name}")


def permission_policy_errors(policy):
    if not isinstance(policy, dict):
        return ['must be an object mapping a tool to "allow", "ask" or "deny"']
    rules = []
    for tool, decision in policy.items():
        if not isinstance(tool, str) or not TOOL_NAME.match(tool):
            rules.append(f"tool name {tool!r} is not valid")
        elif decision not in PERMISSION_DECISIONS:
            rules.append(f'{tool}: must be "allow", "ask" or "deny"')
    return rules


def tags_errors(tags):
    if not isinstance(tags, list):
        return ["must be a list of strings"]
    if len(tags) > TAGS_MAX:
        return [f"at most {TAGS_MAX} tags"]
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > TAG_MAX:
            return [f"each tag must be 1-{TAG_MAX} characters"]
    return []


def validate_session_input(data):
    """Check the fields a caller gave when creating a session; return {field: [rules]}.

    `data` holds plain Python values. Only keys present are checked, except
    title, initial_prompt and repository, which are required.
    """
    errors = {}

    def add(field, rules):
        if rules:
            errors.setdefault(field, []).extend(rules)

    add("title", title_errors(data.get("title")))
    add("initial_prompt", prompt_errors(data.get("initial_prompt")))

    repository = data.get("repository")
    if not isinstance(repository, str) or not repository.strip():
        add("repository", ["is required"])
    elif len(repository) > REPOSITORY_MAX:
        add("repository", [f"must be at most {REPOSITORY_MAX} characters"])

    description = data.get("description")
    if description is not None and not isinstance(description, str):
        add("description", ["must be text"])

    if data.get("session_type") is not None and data["session_type"] not in SESSION_TYPES:
        add("session_type", [f"must be one of {', '.join(SESSION_TYPES)}"])

    if data.get("priority") is not None:
        try:
            parse_priority(data["priority"])
        except ValueError as exc:
            add("priority", [str(exc)])

    if data.get("max_duration_seconds") is not None:
        add("max_duration_seconds", _int_range_errors(data["max_duration_seconds"], DURATION_MIN, DURATION_MAX))
    if data.get("max_retries") is not None:
        add("max_retries", _int_range_errors(data["max_retries"], 0, RETRIES_MAX))

    model = data.get("model_identifier")
    if model not in (None, "") and (
        not isinstance(model, str) or len(model) > 200 or not MODEL_IDENTIFIER.match(model)
    ):
        add("model_identifier", ["must look like provider/model, e.g. anthropic/claude-sonnet-4"])

    _budget_errors(
        errors, "token_budget_soft", "token_budget_hard",
        data.get("token_budget_soft"), data.get("token_budget_hard"), integer=True,
    )
    _budget_errors(
        errors, "cost_budget_soft", "cost_budget_hard",
        data.get("cost_budget_soft"), data.get("cost_budget_hard"), integer=False,
    )

    if data.get("permission_policy") is not None:
        add("permission_policy", permission_policy_errors(data["permission_policy"]))
    if data.get("tags") is not None:
        add("tags", tags_errors(data["tags"]))
    if data.get("metadata") is not None and not isinstance(data["metadata"], dict):
        add("metadata", ["must be an object"])
    return errors


def normalize_tags(tags):
    """Strip and de-duplicate tags, keeping their first order."""
    seen = []
    for tag in tags or []:
        tag = tag.strip()
        if tag not in seen:
            seen.append(tag)
    return seen
