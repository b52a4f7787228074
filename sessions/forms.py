"""The console's "New session" form.

The form only turns text into Python values; the rules (lengths, ranges,
generic titles, the permission policy) belong to `session_create`, so the
console refuses the same input with the same words as the API and the admin.
`add_service_errors` puts the service's `{field: [rule]}` next to the fields.
"""

from pathlib import Path

from django import forms
from django.conf import settings

from orchestrator.errors import ValidationFailed
from orchestrator.inputs import ASCII_INTEGER
from sessions import repositories, rules

PRIORITY_CHOICES = [(number, name.title()) for number, name in sorted(rules.PRIORITY_NAMES.items())]
BASH_CHOICES = [("", "OpenCode's default")] + [(decision, decision) for decision in rules.PERMISSION_DECISIONS]

# Service field name -> form field name, where they differ.
SERVICE_FIELDS = {"permission_policy": "bash_permission"}


def default_repository():
    """The first folder under the first allowed repository root (e.g. var/repos/demo), or ""."""
    roots = getattr(settings, "REPOSITORY_ROOTS", None) or []
    if not roots:
        return ""
    root = Path(roots[0])
    try:
        folders = sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    except OSError:
        return ""
    return str(folders[0]) if folders else ""


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
    repository = forms.CharField(label="Repository path", required=False)
    priority = forms.TypedChoiceField(choices=PRIORITY_CHOICES, coerce=int, initial=rules.PRIORITY_DEFAULT)
    max_duration_seconds = AsciiIntegerField(
        label="Max duration (seconds)", initial=rules.DURATION_DEFAULT, required=False
    )
    bash_permission = forms.ChoiceField(label="Bash permission", choices=BASH_CHOICES, required=False)
    start = forms.BooleanField(label="Start now", required=False, initial=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial.setdefault("repository", default_repository())

    def clean_repository(self):
        value = self.cleaned_data.get("repository") or ""
        if not value.strip():
            return value  # session_create reports it as required, with the other missing fields
        try:
            return repositories.repository_validate(path=value)
        except ValidationFailed as exc:
            raise forms.ValidationError(exc.errors["repository"]) from None

    def service_arguments(self):
        """Keyword arguments for `session_create` from cleaned data (call after is_valid())."""
        data = self.cleaned_data
        bash = data.get("bash_permission")
        return {
            "title": data.get("title") or "",
            "initial_prompt": data.get("initial_prompt") or "",
            "repository": data.get("repository") or "",
            "priority": data.get("priority"),
            "max_duration_seconds": data.get("max_duration_seconds"),
            "permission_policy": {"bash": bash} if bash else None,
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
