from django.conf import settings

from orchestrator.roles import user_is_operator


def console(request):
    return {
        "is_operator": user_is_operator(getattr(request, "user", None)),
        "demo_model_in_use": settings.OPENCODE_DEMO_MODEL,
    }
