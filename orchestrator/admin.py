"""API tokens in the admin: issued here and shown once, then only their first characters."""

from django.contrib import admin, messages
from rest_framework.authtoken.models import TokenProxy

from orchestrator.models import ApiToken
from orchestrator.tokens import token_issue

# DRF's token admin lists tokens in clear; tokens are ApiToken digests now.
if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "last_used_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "name", "prefix"]
    fields = ["user", "name", "prefix", "created_at", "last_used_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ["prefix", "created_at", "last_used_at"]
        return ["user", "prefix", "created_at", "last_used_at"]

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name"])
            return
        token, raw = token_issue(user=obj.user, name=obj.name)
        obj.pk, obj.digest, obj.prefix, obj.created_at = token.pk, token.digest, token.prefix, token.created_at
        obj._state.adding = False
        messages.warning(
            request, f"API token for {obj.user}: {raw} (copy it now: it is stored only as a digest and not shown again)"
        )
