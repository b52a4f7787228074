"""API tokens, stored as digests: the database (or a backup of it, or the admin) never shows a
token that works. The token itself is shown once, when it is issued (orchestrator.tokens)."""

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    digest = models.CharField(max_length=64, unique=True, editable=False)  # sha256 hex of the token
    prefix = models.CharField(max_length=8, editable=False, help_text="first characters, to tell tokens apart")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, help_text="what uses it, e.g. 'CI pipeline'")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API token"

    def __str__(self):
        return f"{self.prefix}… ({self.user})"
