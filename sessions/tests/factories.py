import factory

from sessions.models import CodingSession


class CodingSessionFactory(factory.django.DjangoModelFactory):
    """A session row in any state (`status="running"` sets it directly, as a fixture only).

    Tests of behaviour create sessions through `session_create`; this factory
    places a row in a given state so each transition can be tried from it.
    """

    class Meta:
        model = CodingSession

    title = factory.Sequence(lambda n: f"Refactor the billing module, part {n}")
    initial_prompt = "Split billing.py into invoices and payments; keep the tests green."
    repository = "/srv/repos/billing"

