"""Console pages and admin views of contexts."""

import pytest
from django.urls import reverse

from contexts import services
from contexts.models import Scope

pytestmark = pytest.mark.django_db


@pytest.fixture
def context():
    context = services.context_create(
        scope=Scope.GLOBAL, name="conventions", data={"style": {"quotes": "double"}}, actor="x"
    )
    services.context_set(context=context, changes={"style.line": 120}, expected_version=1, actor="engine")
    return context


def test_list_page_shows_contexts(client, operator_user, context):
    client.force_login(operator_user)
    response = client.get(reverse("contexts:list"))
    assert response.status_code == 200
    assert b"conventions" in response.content
    assert b"v2" in response.content


def test_list_page_needs_a_sign_in(client):
    response = client.get(reverse("contexts:list"))
    assert response.status_code == 302


def test_detail_page_shows_document_and_history(client, viewer_user, context):
    client.force_login(viewer_user)
    response = client.get(reverse("contexts:detail", args=[context.pk]))
    assert response.status_code == 200
    assert b"&quot;quotes&quot;: &quot;double&quot;" in response.content
    assert b"style.line" in response.content


def test_admin_change_page_is_read_only_with_pretty_json_and_history(admin_client, context):
    response = admin_client.get(reverse("admin:contexts_context_change", args=[context.pk]))
    assert response.status_code == 200
    assert b"&quot;quotes&quot;: &quot;double&quot;" in response.content
    assert b"style.line" in response.content
    response = admin_client.post(reverse("admin:contexts_context_change", args=[context.pk]), {"name": "x"})
    assert response.status_code == 403


def test_admin_list_shows_scope_version_and_size(admin_client, context):
    response = admin_client.get(reverse("admin:contexts_context_changelist"))
    assert response.status_code == 200
    assert b"conventions" in response.content
