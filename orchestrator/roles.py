"""The two roles, as Django groups: operators act, viewers only read."""

from django.contrib.auth.models import Group

OPERATORS = "operators"
VIEWERS = "viewers"


def ensure_role_groups():
    for name in (OPERATORS, VIEWERS):
        Group.objects.get_or_create(name=name)


def user_is_operator(user):
    if not user or not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    return user.groups.filter(name=OPERATORS).exists()


def user_can_view(user):
    return bool(user and user.is_authenticated and user.is_active)
