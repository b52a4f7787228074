import itertools

import factory
from django.utils import timezone

from contexts.models import Context, Scope


def make_session(**fields):
    """A coding session row; the contexts app needs only its id and ended_at."""
    from sessions.models import CodingSession

    fields.setdefault("title", "Context test session")
    fields.setdefault("initial_prompt", "Do the thing")
    fields.setdefault("repository", "example/repo")
    return CodingSession.objects.create(**fields)


_agent_numbers = itertools.count(1)


def make_agent(**fields):
    from agents.models import Agent

    fields.setdefault("name", f"CTX-AGENT-{next(_agent_numbers)}")
    fields.setdefault("agent_type", "implementer")
    return Agent.objects.create(**fields)


class ContextFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Context

    scope = Scope.GLOBAL
    name = factory.Sequence(lambda n: f"context-{n}")
    data = factory.LazyFunction(dict)
    version = 1
    updated_at = factory.LazyFunction(timezone.now)
