"""The console's "New session" form.

The form only turns text into Python values; the rules (lengths, ranges,
generic titles, budgets, the permission policy) belong to `session_create`, so
the console refuses the same input with the same words as the API and the
admin. `add_service_errors` puts the service's `{field: [rule]}` next to the
fields. The planning options (mode, template, plan approval, task concurrency) go to
`session_create_planned` as the API's `planning` object and are checked there
(`sessions.planning.options`); the form only refuses a template chosen for a
mode that does not use one, which the API's object cannot express.
"""

from pathlib import Path

from django import forms
from django.conf import settings

from orchestrator.errors import ValidationFailed
from orchestrator.inputs import ASCII_INTEGER
from sessions import repositories, rules
from sessions.planning import options as planning_options
from tasks.decomposition import TEMPLATE_NAMES

PRIORITY_CHOICES = [(number, name.title()) for number, name in sorted(rules.PRIORITY_NAMES.items())]
DECISION_CHOICES = [("", "OpenCode's default")] + [(decision, decision) for decision in rules.PERMISSION_DECISIONS]
TYPE_CHOICES = [(name, name) for name in rules.SESSION_TYPES]
# The tools whose permission the form sets; the API takes any tool name.
POLICY_TOOLS = ("bash", "edit", "webfetch")
REPOSITORIES_LISTED = 200
# Short option texts: a <label> around a <select> puts the chosen option in the control's name.
MODE_CHOICES = [(mode, mode) for mode in planning_options.MODES]
TEMPLATE_CHOICES = [("", "from the work")] + [(name, name) for name in TEMPLATE_NAMES]
APPROVAL_CHOICES = [(approval, approval) for approval in planning_options.APPROVALS]
# What the console proposes, whatever the server's default: a person reviews the plan first.
CONSOLE_PLAN_APPROVAL = "required"

# Service field name -> form field name, where they differ.
SERVICE_FIELDS = {
    "permission_policy": "bash_permission",
    "planning.mode": "planning_mode", "planning.template": "template",
    "planning.plan_approval": "plan_approval", "planning.task_concurrency": "task_concurrency",
}


def allowed_repositories():
    """Git repositories directly under the allowed roots (REPOSITORY_ROOTS), sorted, at most 200."""
    found = []
    for root in getattr(settings, "REPOSITORY_ROOTS", None) or []:
        try:
            children = sorted(Path(root).iterdir())
        except OSError:
            continue
        found += [str(child) for child in children if child.is_dir() and not child.name.startswith(".")]
    return found[:REPOSITORIES_LISTED]


def default_repository():
    """The first folder under the first allowed repository root (e.g. var/repos/demo), or ""."""
    repositories = allowed_repositories()
    return repositories[0] if repositories else ""


class AsciiIntegerField(forms.IntegerField):
    """Digits 0-9 only: Python's int() also reads "١٢٠" (Arabic-Indic) or "１２０" (full width)."""

    def to_python(self, value):
        if isinstance(value, str) and value.strip() and not ASCII_INTEGER.fullmatch(value.strip()):
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return super().to_python(value)


class SessionCreateForm(forms.Form):
    title = forms.CharField(required=False, strip=False)
    initial_prompt = forms.CharField(
        label="Prompt", required=False, strip=False, widget=forms.Textarea(attrs={"rows": 6})
    )
    repository_choice = forms.ChoiceField(label="Repository", required=False)
    repository = forms.CharField(label="…or a path", required=False, help_text="under an allowed root")
    session_type = forms.ChoiceField(label="Type", choices=TYPE_CHOICES, initial="execution", required=False)
    priority = forms.TypedChoiceField(choices=PRIORITY_CHOICES, coerce=int, initial=rules.PRIORITY_DEFAULT)
    planning_mode = forms.ChoiceField(
        label="Planning", choices=MODE_CHOICES, required=False,
        help_text="single: one task; template: a decomposition template makes the tasks; planner: an agent plans them",
    )
    template = forms.ChoiceField(
        label="Template", choices=TEMPLATE_CHOICES, required=False, help_text="template planning only",
    )
    plan_approval = forms.ChoiceField(
        label="Plan approval", choices=APPROVAL_CHOICES, required=False, initial=CONSOLE_PLAN_APPROVAL,
        help_text="required: a person approves the plan; auto: a plan passing the checks runs",
    )
    task_concurrency = AsciiIntegerField(
        label="Tasks at once", required=False, min_value=planning_options.CONCURRENCY_MIN,
        max_value=planning_options.CONCURRENCY_MAX,
        help_text=f"{planning_options.CONCURRENCY_MIN}-{planning_options.CONCURRENCY_MAX}; empty: the server's default",
    )
    max_duration_seconds = AsciiIntegerField(
        label="Time budget (seconds)", initial=rules.DURATION_DEFAULT, required=False
    )
    token_budget_soft = AsciiIntegerField(label="Token budget, soft (pauses)", required=False)
    token_budget_hard = AsciiIntegerField(label="Token budget, hard (stops)", required=False)
    cost_budget_soft = forms.DecimalField(label="Cost budget, soft", required=False, max_digits=12, decimal_places=4)
    cost_budget_hard = forms.DecimalField(label="Cost budget, hard", required=False, max_digits=12, decimal_places=4)
    bash_permission = forms.ChoiceField(label="Bash", choices=DECISION_CHOICES, required=False)
    edit_permission = forms.ChoiceField(label="Edit", choices=DECISION_CHOICES, required=False)
    webfetch_permission = forms.ChoiceField(label="Web fetch", choices=DECISION_CHOICES, required=False)
    start = forms.BooleanField(label="Start now", required=False, initial=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        repositories = allowed_repositories()
        self.fields["repository_choice"].choices = [("", "— a path below —")] + [(r, r) for r in repositories]
        if not self.is_bound and repositories:
            self.initial.setdefault("repository_choice", repositories[0])
        # The server's default mode, read per form (settings can change under tests).
        self.fields["planning_mode"].initial = settings.SESSION_PLANNING_MODE

    def clean(self):
        """Check the repository the session would get (the path typed, else the one chosen) with the
        same rule as the API (sessions.repositories), so a bad path is an inline error, not a session
        that fails when it runs."""
        cleaned = super().clean()
        value = (cleaned.get("repository") or "").strip() or cleaned.get("repository_choice") or ""
        if value:  # empty: session_create reports it as required, with the other missing fields
            field = "repository" if (cleaned.get("repository") or "").strip() else "repository_choice"
            try:
                repositories.repository_validate(path=value)
            except ValidationFailed as exc:
                self.add_error(field, exc.errors["repository"])
        if cleaned.get("template") and (cleaned.get("planning_mode") or settings.SESSION_PLANNING_MODE) != "template":
            self.add_error("template", "applies to template planning only: choose that mode, or no template")
        return cleaned

    def planning(self) -> dict:
        """The API's `planning` object from cleaned data: what the form sets; the rest takes the
        server's defaults in session_create_planned."""
        data = self.cleaned_data
        planning = {}
        if data.get("planning_mode"):
            planning["mode"] = data["planning_mode"]
        if data.get("template"):
            planning["template"] = data["template"]
        if data.get("plan_approval"):
            planning["plan_approval"] = data["plan_approval"]
        if data.get("task_concurrency") is not None:
            planning["task_concurrency"] = data["task_concurrency"]
        return planning

    def service_arguments(self):
        """Keyword arguments for `session_create_planned` from cleaned data (call after is_valid())."""
        data = self.cleaned_data
        policy = {tool: data[f"{tool}_permission"] for tool in POLICY_TOOLS if data.get(f"{tool}_permission")}
        return {
            "title": data.get("title") or "",
            "initial_prompt": data.get("initial_prompt") or "",
            "repository": (data.get("repository") or "").strip() or data.get("repository_choice") or "",
            "session_type": data.get("session_type") or "execution",
            "priority": data.get("priority"),
            "max_duration_seconds": data.get("max_duration_seconds"),
            "token_budget_soft": data.get("token_budget_soft"),
            "token_budget_hard": data.get("token_budget_hard"),
            "cost_budget_soft": data.get("cost_budget_soft"),
            "cost_budget_hard": data.get("cost_budget_hard"),
            "permission_policy": policy or None,
            "planning": self.planning(),
            "start": bool(data.get("start")),
        }

    def add_service_errors(self, errors):
        """Attach a ValidationFailed's `{field: [rule]}` to the matching fields (others to the form)."""
        for field, field_rules in errors.items():
            name = SERVICE_FIELDS.get(field, field)
            for rule in field_rules:
                if name in self.fields:
                    self.add_error(name, rule)
                else:
                    self.add_error(None, f"{field}: {rule}")
