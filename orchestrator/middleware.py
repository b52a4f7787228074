"""Domain errors that escape a console page become Django's plain error pages (a 404 for a
missing row, a 400 for a bad query string) instead of a 500. The API maps them itself
(orchestrator.api.exception_handler), so this only sees the console's views."""

from django.core.exceptions import BadRequest
from django.http import Http404
from django.views import defaults

from orchestrator import errors


class DomainErrorPagesMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, errors.NotFound):
            return defaults.page_not_found(request, Http404(exception.message))
        if isinstance(exception, errors.ValidationFailed):
            response = defaults.bad_request(request, BadRequest(exception.message))
            return response
        if isinstance(exception, errors.PermissionRefused):
            return defaults.permission_denied(request, exception)
        return None
