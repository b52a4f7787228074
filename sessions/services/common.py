"""What every session service uses: who acts (`Actor`) and the session row under its lock."""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser

from orchestrator.errors import NotFound
from sessions.models import ActorKind, CodingSession


@dataclass(frozen=True)
class Actor:
    """Who drives a transition: a user, a worker (by id) or the system."""

    kind: str
    user: AbstractBaseUser | None = None
    label: str = ""

    @classmethod
    def of_user(cls, user: AbstractBaseUser) -> "Actor":
        return cls(kind=ActorKind.USER, user=user, label=user.get_username())

    @classmethod
    def worker(cls, worker_id: str) -> "Actor":
        return cls(kind=ActorKind.WORKER, label=str(worker_id))

    @classmethod
    def system(cls, label: str = "system") -> "Actor":
        return cls(kind=ActorKind.SYSTEM, label=label)


def as_actor(actor: Actor | None) -> Actor:
    """The actor, or the system when None."""
    if actor is None:
        return Actor.system()
    if isinstance(actor, Actor):
        return actor
    raise TypeError(f"not an Actor: {actor!r} (a user is Actor.of_user(user))")


def lock_session(
    session_id: int, *, include_deleted: bool = False, fields: tuple[str, ...] | None = None,
) -> CodingSession:
    """The session row, locked until the surrounding transaction ends; NotFound if absent or deleted.

    `fields` loads only those columns (the frequent writers of a running session, events and
    checkpoints, need a few; the whole row carries the prompt and the JSON columns)."""
    queryset = CodingSession.objects.select_for_update()
    if fields:
        queryset = queryset.only(*fields)
    if not include_deleted:
        queryset = queryset.filter(deleted_at__isnull=True)
    found = queryset.filter(pk=session_id).first()
    if found is None:
        raise NotFound(f"Session {session_id} does not exist", details={"id": session_id})
    return found


def actor_payload(actor: Actor) -> dict:
    return {"kind": actor.kind, "label": actor.label}
