"""Issue 24, finding 8: API tokens are stored as digests and shown once, when issued (admin);
tokens stored in clear before are converted by a migration and keep working."""

import hashlib
import re

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from orchestrator.models import ApiToken
from orchestrator.testing import api_token


@pytest.mark.django_db
def test_an_issued_token_authenticates_and_only_its_digest_is_stored(anonymous_client, operator_user):
    token = api_token(operator_user)
    anonymous_client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert anonymous_client.get("/api/v1/sessions").status_code == 200
    row = ApiToken.objects.get()
    assert row.digest == hashlib.sha256(token.key.encode()).hexdigest()
    stored = " ".join(str(value) for value in ApiToken.objects.values_list().get())
    assert token.key not in stored and row.last_used_at is not None
    anonymous_client.credentials(HTTP_AUTHORIZATION=f"Token {row.digest}")  # the digest is not a token
    assert anonymous_client.get("/api/v1/sessions").status_code == 401


@pytest.mark.django_db
def test_the_admin_shows_a_new_token_once_and_never_lists_it(client, django_user_model, operator_user):
    admin_user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-123456789")
    client.force_login(admin_user)
    response = client.post("/admin/orchestrator/apitoken/add/", {"user": operator_user.pk, "name": "CI"}, follow=True)
    page = response.content.decode()
    (raw,) = re.findall(r"API token for [^:]+: ([0-9a-f]{40})", page)
    assert ApiToken.objects.get().digest == hashlib.sha256(raw.encode()).hexdigest()
    listing = client.get("/admin/orchestrator/apitoken/").content.decode()
    assert raw not in listing and raw[:8] in listing
    assert client.get("/admin/authtoken/tokenproxy/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_the_migration_hashes_tokens_stored_in_clear(anonymous_client, operator_user):
    before = [("orchestrator", "0001_roles"), ("authtoken", "0004_alter_tokenproxy_options")]
    executor = MigrationExecutor(connection)
    executor.migrate(before[:1])
    try:
        old_apps = executor.loader.project_state(before).apps
        clear_key = "a" * 8 + "0123456789abcdef0123456789abcdef"
        old_apps.get_model("authtoken", "Token").objects.create(key=clear_key, user_id=operator_user.pk)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    from rest_framework.authtoken.models import Token

    assert not Token.objects.exists()
    anonymous_client.credentials(HTTP_AUTHORIZATION=f"Token {clear_key}")
    assert anonymous_client.get("/api/v1/sessions").status_code == 200
