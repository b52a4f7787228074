"""Issue 24, finding 1: the repository a session works on is checked when the session is created
(API, console), not only when a worker runs it. One rule: an absolute path, resolved, strictly below
an allowed root, that is the top of its own git repository."""

import os

import pytest
from django.urls import reverse

from orchestrator.errors import ValidationFailed
from orchestrator.testing import make_git_repository
from sessions.models import CodingSession
from sessions.repositories import repository_validate


@pytest.fixture
def roots(tmp_path, settings):
    """An allowed root inside a git repository of its own (as var/repos sits in the project's
    checkout), holding one good repository, a plain folder and a symlink to outside."""
    make_git_repository(tmp_path / "enclosing")
    root = tmp_path / "enclosing" / "repos"
    root.mkdir()
    make_git_repository(root / "demo")
    (root / "demo" / "src").mkdir()
    (root / "plain").mkdir()
    make_git_repository(tmp_path / "outside")
    os.symlink(tmp_path / "outside", root / "escape")
    settings.REPOSITORY_ROOTS = [root]
    return root


BAD = [
    ("/etc", "is not strictly below an allowed root"),
    ("../demo", "is not an absolute path"),
    ("demo", "is not an absolute path"),
    ("~/x", "is not an absolute path"),
    ("file:///etc", "is not an absolute path"),
    ("{root}", "is not strictly below an allowed root"),
    ("{root}/", "is not strictly below an allowed root"),
    ("{root}/escape", "is not strictly below an allowed root"),
    ("{root}/demo/../../repos/../..", "is not strictly below an allowed root"),
    ("{root}/plain", "is not the top folder of a git repository"),
    ("{root}/demo/src", "is not the top folder of a git repository"),
    ("{root}/missing", "does not exist"),
]


@pytest.mark.parametrize(("value", "reason"), BAD)
def test_the_rule_refuses_each_probe_naming_why(roots, value, reason):
    with pytest.raises(ValidationFailed) as refused:
        repository_validate(path=value.format(root=roots))
    (rule,) = refused.value.errors["repository"]
    assert rule.startswith(reason) and str(roots) in rule


def test_the_rule_accepts_a_repository_and_returns_its_real_path(roots):
    assert repository_validate(path=f"{roots}/demo/../demo") == str(roots / "demo")


@pytest.mark.django_db
@pytest.mark.parametrize(("value", "reason"), BAD)
def test_api_create_refuses_the_repository_with_400_and_saves_nothing(api_client, roots, value, reason):
    response = api_client.post(
        "/api/v1/sessions",
        {"title": "Work on the repository", "initial_prompt": "Do it.", "repository": value.format(root=roots)},
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["repository"][0].startswith(reason)
    assert not CodingSession.objects.exists()


@pytest.mark.django_db
def test_api_create_stores_the_resolved_path(api_client, roots):
    response = api_client.post(
        "/api/v1/sessions",
        {"title": "Work on the repository", "initial_prompt": "Do it.", "repository": f"{roots}/./demo"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["repository"] == str(roots / "demo")


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["/etc", "{root}", "{root}/escape", "demo"])
def test_console_form_refuses_the_repository(client, operator_user, roots, value):
    client.force_login(operator_user)
    response = client.post(reverse("sessions:create"), {
        "title": "Work on the repository", "initial_prompt": "Do it.", "repository": value.format(root=roots),
        "priority": "2", "max_duration_seconds": "600",
    })
    assert response.status_code == 400
    assert "allowed root" in response.content.decode()
    assert not CodingSession.objects.exists()


@pytest.mark.django_db
def test_the_admin_cannot_create_sessions_or_change_their_repository(client, django_user_model):
    admin_user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-123456789")
    client.force_login(admin_user)
    assert client.get("/admin/coding_sessions/codingsession/add/").status_code == 403
