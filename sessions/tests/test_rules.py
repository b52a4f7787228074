import pytest

from sessions.rules import parse_priority, validate_session_input

VALID = {"title": "Port the scheduler to asyncio", "initial_prompt": "Do it.", "repository": "/srv/repos/app"}


def errors_for(**changes):
    return validate_session_input({**VALID, **changes})


def test_valid_input_has_no_errors():
    assert validate_session_input(VALID) == {}


@pytest.mark.parametrize("title", ["Test Session", "  untitled ", "NEW SESSION", "coding task", "Development session"])
def test_generic_titles_are_refused(title):
    assert errors_for(title=title) == {"title": ["is too generic: name what the session does"]}


def test_title_length_is_1_to_200():
    assert "title" in errors_for(title="")
    assert "title" in errors_for(title="x" * 201)
    assert errors_for(title="x" * 200) == {}


def test_prompt_length_is_1_to_100000():
    assert errors_for(initial_prompt="p" * 100_000) == {}
    assert errors_for(initial_prompt="p" * 100_001) == {"initial_prompt": ["must be at most 100000 characters"]}
    assert "initial_prompt" in errors_for(initial_prompt="   ")


@pytest.mark.parametrize(("value", "ok"), [(59, False), (60, True), (86_400, True), (86_401, False)])
def test_max_duration_is_60_to_86400(value, ok):
    assert ("max_duration_seconds" not in errors_for(max_duration_seconds=value)) is ok


@pytest.mark.parametrize(
    ("value", "expected"), [("CRITICAL", 0), ("high", 1), ("Medium", 2), (3, 3), ("4", 4), ("DEFERRED", 4)]
)
def test_priority_accepts_names_and_numbers(value, expected):
    assert parse_priority(value) == expected


@pytest.mark.parametrize("value", ["URGENT", 5, -1, True, None, "2.5"])
def test_priority_refuses_anything_else(value):
    with pytest.raises(ValueError):
        parse_priority(value)


@pytest.mark.parametrize(
    "model", ["anthropic/claude-sonnet-4", "openrouter/meta-llama/llama-3.1-70b", "openai/gpt-4.1"]
)
def test_model_identifier_in_provider_slash_model_form_is_accepted(model):
    assert errors_for(model_identifier=model) == {}


@pytest.mark.parametrize("model", ["claude", "/gpt-4", "openai/", "open ai/gpt"])
def test_model_identifier_without_provider_is_refused(model):
    assert list(errors_for(model_identifier=model)) == ["model_identifier"]


def test_soft_budget_above_hard_budget_is_refused():
    assert errors_for(token_budget_soft=2000, token_budget_hard=1000) == {
        "token_budget_soft": ["must not exceed token_budget_hard"]
    }
    assert errors_for(cost_budget_soft="5.00", cost_budget_hard="1.5") == {
        "cost_budget_soft": ["must not exceed cost_budget_hard"]
    }


def test_permission_policy_maps_tools_to_allow_ask_or_deny():
    assert errors_for(permission_policy={"bash": "ask", "edit": "allow", "webfetch": "deny"}) == {}
    assert errors_for(permission_policy={"bash": "maybe"}) == {
        "permission_policy": ['bash: must be "allow", "ask" or "deny"']
    }
    assert "permission_policy" in errors_for(permission_policy=["bash"])


def test_missing_required_fields_are_each_named():
    assert set(validate_session_input({})) == {"title", "initial_prompt", "repository"}
