"""Admin: contexts with scope, owner, version, size and expiry; history read-only inline.

Documents are shown pretty-printed and are not editable here: every write must
go through the services (versioning, history).
"""

import json

from django.contrib import admin, messages
from django.utils.html import format_html

from contexts import documents, services
from contexts.models import Context, ContextChange


def _pretty(value):
    return format_html(
        "<pre style='white-space:pre-wrap;margin:0'>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False)
    )


class ContextChangeInline(admin.TabularInline):
    model = ContextChange
    extra = 0
    can_delete = False
    ordering = ("-version", "id")
    fields = ("version", "path", "action", "old", "new", "actor", "note", "created_at")
    readonly_fields = fields
    max_num = 0

    @admin.display(description="old value")
    def old(self, change):
        return "—" if change.action == "add" else _pretty(change.old_value)

    @admin.display(description="new value")
    def new(self, change):
        return "—" if change.action == "remove" else _pretty(change.new_value)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Context)
class ContextAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "scope", "owner", "version", "size", "expires_at", "updated_at")
    list_filter = ("scope",)
    search_fields = ("name",)
    list_select_related = ("session", "agent")
    actions = ("purge_expired",)
    inlines = (ContextChangeInline,)
    fields = (
        "scope",
        "name",
        "owner",
        "version",
        "size",
        "pretty_data",
        "expires_at",
        "created_by",
        "created_at",
        "updated_at",
        "last_used_at",
        "source_context",
        "source_version",
        "source_strategy",
        "shared_at",
    )
    readonly_fields = fields

    @admin.display(description="owner")
    def owner(self, context):
        if context.session_id:
            return f"session {context.session_id}: {context.session}"
        if context.agent_id:
            return f"agent {context.agent}"
        return "—"

    @admin.display(description="size (bytes)")
    def size(self, context):
        return documents.document_size(context.data)

    @admin.display(description="data")
    def pretty_data(self, context):
        return _pretty(context.data)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # Viewing only: the change form is read-only and saving would bypass versioning.
        return request.method in ("GET", "HEAD") and super().has_change_permission(request, obj)

    def delete_model(self, request, obj):
        services.context_delete(context=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for context in queryset:
            services.context_delete(context=context, actor=request.user)

    @admin.action(description="Purge every expired context")
    def purge_expired(self, request, queryset):
        deleted = services.context_purge_expired()
        self.message_user(request, f"Purged {deleted} expired context(s).", messages.SUCCESS)
