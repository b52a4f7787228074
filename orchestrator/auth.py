"""Authentication edges: API tokens with a throttle on failures, and the console's sign-in with a
lockout after repeated failures."""

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

from orchestrator.throttles import AuthFailureThrottle


class ThrottledTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`; an address that sent too many bad tokens gets 429 (with
    Retry-After) before its next token is even looked up."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        throttle = AuthFailureThrottle()
        wait = throttle.refused(request)
        if wait is not None:
            raise exceptions.Throttled(wait=wait, detail="Too many failed authentications from this address.")
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            throttle.record_failure(request)
            raise

    def authenticate_credentials(self, key):
        from orchestrator.tokens import token_user

        user = token_user(raw=key)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        return (user, None)


def _lockout_keys(username, address):
    return [f"login-failures:user:{(username or '').lower()[:150]}", f"login-failures:addr:{address}"]


class LockoutAuthenticationForm(AuthenticationForm):
    """Django's sign-in form, refusing a user name or an address that failed LOGIN_FAILURE_LIMIT
    times within LOGIN_LOCKOUT_SECONDS (even with the right password, until the lock expires)."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "locked": "Too many failed sign-ins; try again in %(minutes)s minutes.",
    }

    def clean(self):
        address = self.request.META.get("REMOTE_ADDR", "") if self.request else ""
        keys = _lockout_keys(self.data.get("username"), address)
        limit = settings.LOGIN_FAILURE_LIMIT
        if any((cache.get(key) or 0) >= limit for key in keys):
            raise ValidationError(
                self.error_messages["locked"], code="locked",
                params={"minutes": max(1, settings.LOGIN_LOCKOUT_SECONDS // 60)},
            )
        try:
            return super().clean()
        except ValidationError:
            for key in keys:
                cache.add(key, 0, settings.LOGIN_LOCKOUT_SECONDS)
                try:
                    cache.incr(key)
                except ValueError:  # expired between add and incr
                    cache.set(key, 1, settings.LOGIN_LOCKOUT_SECONDS)
            raise


class LoginView(auth_views.LoginView):
    authentication_form = LockoutAuthenticationForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.has_error("__all__", "locked"):
            response.status_code = 429
            response["Retry-After"] = str(settings.LOGIN_LOCKOUT_SECONDS)
        return response
