"""Helpers for models with a django-fsm state field."""

from typing import TypeVar

from django.db.models import Model

M = TypeVar("M", bound=Model)


def reloaded(instance: M) -> M:
    """A fresh copy of `instance`, read from the database (DoesNotExist when its row is gone).

    Use this, never `refresh_from_db()`, on a model with a protected FSMField: django-fsm's
    refresh turns the field's `protected` flag off and on again on the field object, which all
    instances share, so it races with other threads of a worker saving a transition.
    """
    return type(instance)._default_manager.get(pk=instance.pk)
