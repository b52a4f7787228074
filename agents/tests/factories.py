import factory

from agents.models import Agent
from agents.routing import capability_mask


class AgentFactory(factory.django.DjangoModelFactory):
    """An available COMPETENT implementer; pass `capabilities=[...]` to set its mask by name."""

    class Meta:
        model = Agent

    class Params:
        capabilities = ("code_generation",)

    name = factory.Sequence(lambda n: f"AGENT-T{n:04d}")
    agent_type = "implementer"
    capability_mask = factory.LazyAttribute(lambda o: capability_mask(o.capabilities))
    max_concurrent_tasks = 5
