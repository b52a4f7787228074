"""API plumbing shared by every app: the error format and the API root."""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from django.views import defaults
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.decorators import api_view
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.routers import SimpleRouter
from rest_framework.views import exception_handler as drf_exception_handler

from orchestrator import errors

DOMAIN_STATUS = {
    errors.ValidationFailed: status.HTTP_400_BAD_REQUEST,
    errors.NotFound: status.HTTP_404_NOT_FOUND,
    errors.PermissionRefused: status.HTTP_403_FORBIDDEN,
    errors.Conflict: status.HTTP_409_CONFLICT,
}


logger = logging.getLogger(__name__)


def error_body(code, message, details=None):
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _flatten_validation(detail, prefix=""):
    """DRF nests errors by field; flatten to {"field.sub": ["rule", ...]}."""
    flat = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            flat.update(_flatten_validation(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            flat[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                flat.update(_flatten_validation(item, f"{prefix}.{index}" if prefix else str(index)))
    else:
        flat[prefix or "non_field_errors"] = [str(detail)]
    return flat


def exception_handler(exc, context):
    """Map domain and DRF errors to `{"error": {"code", "message", "details"}}`."""
    for error_class, http_status in DOMAIN_STATUS.items():
        if isinstance(exc, error_class):
            return Response(error_body(exc.code, exc.message, exc.details), status=http_status)

    if isinstance(exc, exceptions.ValidationError):
        details = _flatten_validation(exc.detail)
        message = "; ".join(f"{field}: {' '.join(rules)}" for field, rules in details.items())
        return Response(error_body("validation_error", message, details), status=400)

    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        from orchestrator.inputs import PayloadTooLarge

        exc = PayloadTooLarge()

    response = drf_exception_handler(exc, context)
    if response is None:
        # Anything else is our fault: logged with its traceback, answered without it.
        view = context.get("view")
        logger.error("Unhandled error in %s", type(view).__name__ if view else "an API view", exc_info=exc)
        return Response(error_body("server_error", "Internal server error"), status=500)
    code = getattr(exc, "default_code", "error")
    if isinstance(exc, exceptions.NotAuthenticated):
        code = "not_authenticated"
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    message = str(detail) if not isinstance(detail, (dict, list)) else "Request refused"
    response.data = error_body(code, message)
    return response


def _is_api(request):
    return request.path.startswith("/api/")


def bad_request(request, exception, template_name="400.html"):
    if not _is_api(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse(error_body("payload_too_large", "The request body is too large."), status=413)
    return JsonResponse(error_body("bad_request", "The request could not be read."), status=400)


def page_not_found(request, exception, template_name="404.html"):
    if not _is_api(request):
        return defaults.page_not_found(request, exception)
    return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}"), status=404)


def server_error(request, template_name="500.html"):
    if not _is_api(request):
        return defaults.server_error(request)
    return JsonResponse(error_body("server_error", "Internal server error"), status=500)


@extend_schema(exclude=True)
@api_view(["GET"])
def api_root(request, format=None):
    return Response(
        {
            "sessions": reverse("api:session-list", request=request, format=format),
            "agents": reverse("api:agent-list", request=request, format=format),
            "tasks": reverse("api:task-list", request=request, format=format),
            "contexts": reverse("api:context-list", request=request, format=format),
            "approvals": reverse("api:approval-list", request=request, format=format),
            "schema": reverse("api-schema", request=request, format=format),
            "docs": reverse("api-docs", request=request, format=format),
        }
    )


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE"])
def api_not_found(request, *args, **kwargs):
    raise exceptions.NotFound(f"No API endpoint at {request.path}")


def api_router():
    """The router every app's api.py registers its viewsets on: paths answer with and without a
    trailing slash. DRF's constructor turns any truthy trailing_slash into "/" (so `/api/v1/tasks`
    was a 404 while `/api/v1/sessions` answered); the optional slash is set afterwards."""
    router = SimpleRouter()
    router.trailing_slash = "/?"
    return router
