"""API throttles (429 with Retry-After): writes per user, failed authentications per address.

Rates come from settings.API_THROTTLE_RATES on every request rather than from DRF's class
attribute (read once at import), so an operator's environment and a test's settings both apply.
"""

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class _SettingsRateThrottle(SimpleRateThrottle):
    def __init__(self):
        # SimpleRateThrottle reads the rate in __init__; a view builds its throttles per request.
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)

    def get_rate(self):
        return settings.API_THROTTLE_RATES.get(self.scope)


class WriteThrottle(_SettingsRateThrottle):
    """POST, PUT, PATCH and DELETE per signed-in user (per address for anonymous callers)."""

    scope = "write"

    def get_cache_key(self, request, view):
        if request.method in SAFE_METHODS:
            return None
        if request.user and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            ident = f"addr-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class AuthFailureThrottle(_SettingsRateThrottle):
    """Counts failed authentications (a bad token, a bad password) per client address.

    `allow_request` is not used as a gate on every request: the authentication class calls
    `refused(request)` before checking a credential and `record_failure(request)` after a bad one."""

    scope = "auth_failure"

    def get_cache_key(self, request, view=None):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def refused(self, request):
        """Seconds to wait when this address has used up its failures, else None."""
        if self.rate is None:
            return None
        self.key = self.get_cache_key(request)
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        if len(self.history) >= self.num_requests:
            return self.wait() or 1
        return None

    def record_failure(self, request):
        if self.rate is None:
            return
        key = self.get_cache_key(request)
        history = self.cache.get(key, [])
        now = self.timer()
        history = [stamp for stamp in history if stamp > now - self.duration]
        history.insert(0, now)
        self.cache.set(key, history, self.duration)
