"""Reads of contexts and their history."""

import copy
from collections.abc import Iterable, Sequence
from itertools import groupby

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Q, QuerySet

from contexts import documents
from contexts.models import Context, ContextChange
from orchestrator.errors import NotFound, PermissionRefused, ValidationFailed
from orchestrator.roles import user_can_view


def context_list(
    *, scope: str | None = None, session_id: int | None = None, agent_id: int | None = None, name: str | None = None
) -> QuerySet[Context]:
    queryset = Context.objects.select_related("session", "agent", "created_by")
    if scope:
        queryset = queryset.filter(scope=scope)
    if session_id:
        queryset = queryset.filter(session_id=session_id)
    if agent_id:
        queryset = queryset.filter(agent_id=agent_id)
    if name:
        queryset = queryset.filter(name=name)
    return queryset


def context_get_for_user(
    user: AbstractBaseUser | AnonymousUser, context_id: int, *, for_update: bool = False
) -> Context:
    """The context with this id if `user` may see it; NotFound or PermissionRefused otherwise."""
    if not user_can_view(user):
        raise PermissionRefused("Sign in to see contexts")
    queryset = Context.objects.select_related("session", "agent", "created_by", "source_context")
    if for_update:
        queryset = queryset.select_for_update()
    try:
        return queryset.get(pk=context_id)
    except (Context.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"Context {context_id} does not exist", details={"id": context_id}) from None


def context_get_many_for_user(user: AbstractBaseUser | AnonymousUser, context_ids: Sequence[int]) -> list[Context]:
    """The contexts with these ids, in the order given; NotFound names any that are missing."""
    if not user_can_view(user):
        raise PermissionRefused("Sign in to see contexts")
    found = Context.objects.in_bulk(list(context_ids))
    missing = [pk for pk in context_ids if pk not in found]
    if missing:
        raise NotFound(f"Context(s) {', '.join(map(str, missing))} do not exist", details={"missing": missing})
    return [found[pk] for pk in context_ids]


def context_history(*, context: Context, path: str | None = None) -> QuerySet[ContextChange]:
    """Newest change first; with `path`, only that path and the paths below it."""
    queryset = ContextChange.objects.filter(context=context).select_related("user")
    if path:
        queryset = queryset.filter(Q(path=path) | Q(path__startswith=f"{path}."))
    return queryset.order_by("-version", "id")


def context_change_counts(context_ids: Iterable[int]) -> dict[int, int]:
    rows = ContextChange.objects.filter(context_id__in=context_ids).values("context_id").annotate(n=Count("id"))
    return {row["context_id"]: row["n"] for row in rows}


def context_document_at(*, context: Context, version: int) -> dict:
    """The context's document as it was at `version` (1 to the current version), rebuilt from the
    current document by undoing each later write recorded in the history, newest first.

    Each history row is one leaf of the write's diff (add, change, remove), so undoing a write
    is applying its inverse diff. ValidationFailed names `version` when it is out of range.
    """
    if not isinstance(version, int) or not 1 <= version <= context.version:
        raise ValidationFailed(field="version", rule=f"must be between 1 and {context.version}")
    document = copy.deepcopy(context.data)
    later = ContextChange.objects.filter(context=context, version__gt=version).order_by("-version", "id")
    for _, rows in groupby(later.iterator(), key=lambda row: row.version):
        inverse = documents.Diff()
        for row in rows:
            if row.action == "add":
                inverse.removed[row.path] = row.new_value
            elif row.action == "remove":
                inverse.added[row.path] = row.old_value
            else:
                inverse.changed[row.path] = (row.new_value, row.old_value)
        document = documents.apply_diff(document, inverse)
    return document
