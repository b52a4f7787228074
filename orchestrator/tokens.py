"""Issuing and checking API tokens. Only a token's SHA-256 digest is stored; the token is
returned once by `token_issue`. 40 random hex characters carry 160 bits, so an unsalted fast
digest is enough: there is nothing to guess from it."""

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from orchestrator.models import ApiToken

# last_used_at is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=5)


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def token_issue(*, user: AbstractBaseUser, name: str = "") -> tuple[ApiToken, str]:
    """A new token for `user`: the stored row and the token itself (shown to the caller once)."""
    raw = secrets.token_hex(20)
    token = ApiToken.objects.create(digest=token_digest(raw), prefix=raw[:8], user=user, name=name)
    return token, raw


def token_user(*, raw: str) -> AbstractBaseUser | None:
    """The active user `raw` authenticates, or None."""
    if not raw or len(raw) > 200:
        return None
    token = ApiToken.objects.select_related("user").filter(digest=token_digest(raw)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
