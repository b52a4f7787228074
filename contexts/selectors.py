"""Reads of contexts and their history."""

from collections.abc import Iterable, Sequence

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Q, QuerySet

from contexts.models import Context, ContextChange
from orchestrator.errors import NotFound, PermissionRefused
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
