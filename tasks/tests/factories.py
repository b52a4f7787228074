import factory

from tasks.models import Task, TaskDependency


class SessionFactory(factory.django.DjangoModelFactory):
    """A bare coding session row; the tasks app needs only something to hang tasks on."""

    class Meta:
        model = "coding_sessions.CodingSession"

    title = factory.Sequence(lambda n: f"Build feature {n}")
    initial_prompt = "Build the thing"
    repository = "/tmp/repo"


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "agents.Agent"

    name = factory.Sequence(lambda n: f"AGENT-TASKS-{n}")
    agent_type = "implementer"
    capability_mask = (1 << 26) - 1


class TaskFactory(factory.django.DjangoModelFactory):
    """A task with no parent becomes its session's root, so give later ones a parent."""

    class Meta:
        model = Task

    session = factory.SubFactory(SessionFactory)
    title = factory.Sequence(lambda n: f"Task {n}")
    likely_hours = 1.0
    pessimistic_hours = 2.0
    optimistic_hours = 0.5


class TaskDependencyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TaskDependency
