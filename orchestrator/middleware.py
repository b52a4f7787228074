"""Request guards for the API and the console.

`DomainErrorPagesMiddleware`: domain errors that escape a console page become Django's plain
error pages (a 404 for a missing row, a 400 for a bad query string) instead of a 500. The API maps
them itself (orchestrator.api.exception_handler), so this only sees the console's views.

`NulQueryStringMiddleware`: a NUL character in the query string is refused before any view: no
text column or jsonb value can hold one, and PostgreSQL refuses the whole query (a 500).
"""

from django.core.exceptions import BadRequest
from django.http import Http404, JsonResponse
from django.views import defaults

from orchestrator import errors


class NulQueryStringMiddleware:
    RULE = "must not contain NUL characters (%00)"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query or "\x00" in query:
            if request.path.startswith("/api/"):
                from orchestrator.api import error_body

                body = error_body("validation_error", f"query string: {self.RULE}", {"query": [self.RULE]})
                return JsonResponse(body, status=400)
            return defaults.bad_request(request, BadRequest(f"query string: {self.RULE}"))
        return self.get_response(request)


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
