import hashlib

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def hash_existing_tokens(apps, schema_editor):
    """DRF's tokens were stored in clear: each becomes a digest row (the same token keeps
    working) and the clear row is deleted."""
    Token = apps.get_model("authtoken", "Token")
    ApiToken = apps.get_model("orchestrator", "ApiToken")
    for token in Token.objects.all():
        ApiToken.objects.create(
            digest=hashlib.sha256(token.key.encode()).hexdigest(), prefix=token.key[:8], user_id=token.user_id,
            name="migrated from the clear-text token table",
        )
    Token.objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("orchestrator", "0001_roles"),
        ("authtoken", "0004_alter_tokenproxy_options"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]
    operations = [
        migrations.CreateModel(
            name="ApiToken",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("digest", models.CharField(editable=False, max_length=64, unique=True)),
                ("prefix", models.CharField(editable=False, help_text="first characters, to tell tokens apart", max_length=8)),
                ("name", models.CharField(blank=True, help_text="what uses it, e.g. 'CI pipeline'", max_length=100)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("last_used_at", models.DateTimeField(blank=True, editable=False, null=True)),
                ("user", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="api_tokens", to=settings.AUTH_USER_MODEL)),
            ],
            options={"verbose_name": "API token"},
        ),
        migrations.RunPython(hash_existing_tokens, migrations.RunPython.noop),
    ]
