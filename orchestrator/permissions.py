from rest_framework.permissions import SAFE_METHODS, BasePermission

from orchestrator.roles import user_can_view, user_is_operator


class IsOperatorOrReadOnly(BasePermission):
    """Every endpoint needs a user; only operators may change anything."""

    message = "Only operators may do this; viewers can only read."

    def has_permission(self, request, view):
        if not user_can_view(request.user):
            return False
        if request.method in SAFE_METHODS:
            return True
        return user_is_operator(request.user)
