"""Schemathesis over the project's own OpenAPI document (issue 24): every operation, signed in as
an operator, with generated valid and invalid input, then the stateful phase that chains
operations. Each response must be no 5xx, conform to the documented status codes, content type
and body schema, and every 4xx must carry the JSON error body. Examples are bounded so CI stays
quick (figures: docs/decisions/0120-api-fuzzing-in-ci.md)."""

import json
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from django.core.signals import request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.utils.encoders import JSONEncoder
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 15
STATEFUL_RUNS = 10
STATEFUL_STEPS = 15


def _document():
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(json.dumps(document, cls=JSONEncoder))


def test_the_openapi_document_is_valid():
    from openapi_spec_validator import validate

    validate(_document())


schema = schemathesis.openapi.from_dict(_document())
schema.app = get_wsgi_application()


TALLY = Counter()


def error_body_on_4xx(ctx, response, case):
    TALLY["requests"] += 1
    TALLY[f"{response.status_code // 100}xx"] += 1
    TALLY[f"operation {case.operation.label}"] += 1
    if 400 <= response.status_code < 500:
        body = json.loads(response.content)
        assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          error_body_on_4xx]


@pytest.fixture(scope="module", autouse=True)
def figures():
    """The run's figures (operations, requests, status classes) for the decision record."""
    yield
    from django.conf import settings as django_settings

    operations = sorted(key for key in TALLY if key.startswith("operation "))
    summary = {
        "operations_in_schema": len(list(schema.get_all_operations())),
        "operations_called": len(operations),
        "requests": TALLY["requests"],
        "stateful_requests": TALLY["stateful requests"],
        **{key: TALLY[key] for key in ("2xx", "3xx", "4xx", "5xx")},
    }
    Path(django_settings.VAR_DIR, "schemathesis-figures.json").write_text(json.dumps(summary, indent=2))
    print("\nschemathesis:", json.dumps(summary))


@pytest.fixture
def operator_headers(operator_user):
    from orchestrator.testing import api_token

    token = api_token(operator_user)
    # The WSGI handler would close the test's connection (and its transaction) at each request,
    # as Django's own test client prevents too.
    request_started.disconnect(close_old_connections)
    yield {"Authorization": f"Token {token.key}"}
    request_started.connect(close_old_connections)


@pytest.fixture
def some_rows(operator_user):
    """A session, a task, an agent and a context, so that generated ids sometimes find a row."""
    from agents.tests.factories import AgentFactory
    from contexts.models import Context
    from tasks.tests.factories import SessionFactory, TaskFactory

    session = SessionFactory()
    TaskFactory(session=session)
    AgentFactory()
    Context.objects.create(scope="global", name="fuzz", data={"a": 1})


@pytest.mark.django_db
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_schema(case, operator_headers, some_rows):
    case.call_and_validate(headers=operator_headers, checks=CHECKS)


@pytest.mark.django_db
def test_stateful_sequences_answer_within_the_schema(operator_headers, some_rows):
    machine = schema.as_state_machine()

    class Machine(machine):
        def get_call_kwargs(self, case):
            return {"headers": operator_headers}

        def validate_response(self, response, case, **kwargs):
            TALLY["stateful requests"] += 1
            case.validate_response(response, checks=CHECKS)

    Machine.run(settings=settings(max_examples=STATEFUL_RUNS, stateful_step_count=STATEFUL_STEPS, deadline=None,
                                  derandomize=True, database=None, suppress_health_check=list(HealthCheck)))
