from django.conf import settings

from orchestrator.roles import user_is_operator


def console(request):
    user = getattr(request, "user", None)
    signed_in = bool(user and user.is_authenticated)

    def pending_approvals():
        # Lazy: only pages that show the nav pay for the count query.
        from orchestrator.selectors import pending_approvals_count

        return pending_approvals_count() if signed_in else 0

    return {
        "is_operator": user_is_operator(user),
        "demo_model_in_use": settings.OPENCODE_DEMO_MODEL,
        "pending_approvals": pending_approvals,
    }
