"""Each template's output, the choice of template from text, and the depth limit (no database)."""

import pytest

from orchestrator.errors import ValidationFailed
from tasks.decomposition import CAPABILITIES, TEMPLATE_NAMES, choose_template, plan_decomposition, subject_of
from tasks.estimates import pert


def titles(plan):
    return [task.title for task in plan.subtasks]


def dependencies(plan):
    """{title: sorted [(prerequisite title, type)]} among the top-level subtasks."""
    subtasks = plan.subtasks
    return {
        task.title: sorted((subtasks[index].title, kind) for index, kind in task.depends_on) for task in subtasks
    }


def test_crud_runs_model_then_operations_then_validation_authorization_tests():
    plan = plan_decomposition(title="Build the invoice CRUD", template="crud", max_depth=1)
    assert titles(plan) == [
        "Implement the data model and migration for invoice CRUD",
        "Implement the create operation for invoice CRUD",
        "Implement the read and list operations for invoice CRUD",
        "Implement the update operation for invoice CRUD",
        "Implement the delete operation for invoice CRUD",
        "Implement input validation for invoice CRUD",
        "Implement authorization checks for invoice CRUD",
        "Write tests for invoice CRUD",
    ]
    deps = dependencies(plan)
    model = titles(plan)[0]
    for operation in titles(plan)[1:5]:
        assert deps[operation] == [(model, "finish_to_start")]
    assert [title for title, _ in deps["Implement input validation for invoice CRUD"]] == sorted(titles(plan)[1:5])
    assert deps["Implement authorization checks for invoice CRUD"] == [
        ("Implement input validation for invoice CRUD", "finish_to_start")
    ]
    assert deps["Write tests for invoice CRUD"] == [
        ("Implement authorization checks for invoice CRUD", "finish_to_start")
    ]
    assert plan.subtasks[0].capabilities == ["system_design", "code_generation"]
    assert plan.subtasks[-1].capabilities == ["test_generation", "testing"]
    assert plan.subtasks[0].estimate == pert(1, 2, 4)


def test_security_is_one_chain_from_threat_model_to_audit():
    plan = plan_decomposition(title="Secure the billing API", template="security", max_depth=1)
    assert titles(plan) == [
        "Write the threat model for billing API",
        "Implement identity and authentication for billing API",
        "Implement access control for billing API",
        "Implement encryption in transit and at rest for billing API",
        "Implement audit logging for billing API",
        "Write security tests for billing API",
    ]
    for index, task in enumerate(plan.subtasks):
        assert task.depends_on == ([(index - 1, "finish_to_start")] if index else [])
        assert "security_audit" in task.capabilities or task.capabilities == ["monitoring", "code_generation"]


def test_microservice_has_contract_first_and_docs_alongside_the_endpoints():
    plan = plan_decomposition(title="Build the orders microservice", template="microservice", max_depth=1)
    names = titles(plan)
    assert names[0] == "Write the service contract and API design for orders microservice"
    deps = dependencies(plan)
    assert deps["Document the API of orders microservice"] == [
        ("Implement the API endpoints of orders microservice", "start_to_start")
    ]
    assert deps["Write tests for orders microservice"] == sorted(
        [
            ("Implement the API endpoints of orders microservice", "finish_to_start"),
            ("Implement authentication and authorization for orders microservice", "finish_to_start"),
        ]
    )
    assert plan.subtasks[names.index("Configure deployment and monitoring of orders microservice")].capabilities == [
        "deployment", "configuration", "monitoring"
    ]


def test_ui_component_bugfix_and_refactor_produce_action_phrases():
    ui = plan_decomposition(title="Add a date picker component", template="ui_component", max_depth=1)
    assert titles(ui)[0] == "Design the states and props of date picker component"
    assert "Implement keyboard and screen-reader accessibility for date picker component" in titles(ui)
    bug = plan_decomposition(title="Fix the crash on empty carts", template="bugfix", max_depth=1)
    assert titles(bug) == [
        "Reproduce the bug in crash on empty carts with a failing test",
        "Find the root cause of the bug in crash on empty carts",
        "Implement the fix for crash on empty carts",
        "Write regression tests for crash on empty carts",
        "Review the fix for crash on empty carts",
    ]
    assert bug.subtasks[1].capabilities == ["root_cause_analysis", "troubleshooting", "debugging"]
    refactor = plan_decomposition(title="Refactor the payment module", template="refactor", max_depth=1)
    assert titles(refactor)[2] == "Refactor payment module in small behaviour-preserving steps"
    assert refactor.subtasks[2].capabilities == ["refactoring", "code_generation"]


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_every_template_step_is_estimated_ordered_and_uses_known_capabilities(template):
    plan = plan_decomposition(title="Build the thing", template=template, max_depth=5)
    verbs = ("Implement", "Write", "Design", "Configure", "Document", "Reproduce", "Find", "Review", "Refactor",
             "Analyse", "Verify", "Update")
    for task in plan.walk():
        assert task.title.split(" ")[0] in verbs
        assert task.capabilities and set(task.capabilities) <= CAPABILITIES
        assert 0 < task.estimate.optimistic <= task.estimate.likely <= task.estimate.pessimistic
        assert all(index < task.order for index, _kind in task.depends_on)
        assert task.estimated_tokens > 0
    assert plan.template == template and "explicitly" in plan.reason


@pytest.mark.parametrize(
    ("title", "description", "expected"),
    [
        ("Fix crash when saving a profile", "", "bugfix"),
        ("Add OAuth login", "", "security"),
        ("CRUD for invoices", "", "crud"),
        ("Refactor the billing module", "", "refactor"),
        ("Settings modal dialog", "", "ui_component"),
        ("Orders microservice", "gRPC, deployed on kubernetes", "microservice"),
        ("Invoices", "create, read, update and delete records with REST endpoints", "crud"),
        ("Make the coffee machine smarter", "", "feature"),
    ],
)
def test_template_is_chosen_from_the_title_and_description(title, description, expected):
    name, reason = choose_template(title, description)
    assert name == expected
    assert reason


def test_title_keywords_outweigh_description_keywords_and_the_reason_says_why():
    name, reason = choose_template("Refactor the session store", "it has a bug in the login flow")
    assert name == "refactor"
    assert "'refactor' in the title" in reason


def test_the_chosen_template_and_reason_are_on_the_plan():
    plan = plan_decomposition(title="Fix broken pagination")
    assert plan.template == "bugfix"
    assert "'fix' in the title" in plan.reason


@pytest.mark.parametrize("max_depth", [1, 2, 3, 4, 5])
def test_max_depth_is_never_exceeded(max_depth):
    plan = plan_decomposition(title="Build the orders microservice", estimate=pert(300, 500, 900), max_depth=max_depth)
    # This estimate is large enough to need four levels; a fifth is allowed but not needed.
    assert plan.depth == min(max_depth, 4)
    for task in plan.walk():
        if task.depth == max_depth:
            assert task.children == []


def test_complex_and_expert_steps_are_broken_down_and_smaller_ones_are_not():
    plan = plan_decomposition(title="Build the orders microservice", template="microservice", max_depth=3)
    for task in plan.walk():
        if task.estimate.complexity in ("complex", "expert") and task.depth < 3:
            assert task.children, task.title
        if task.estimate.complexity not in ("complex", "expert"):
            assert not task.children, task.title
    endpoints = next(t for t in plan.subtasks if t.title.startswith("Implement the API endpoints"))
    assert [c.title for c in endpoints.children] == [
        "Design the approach for API endpoints of orders microservice",
        "Implement the main path of API endpoints of orders microservice",
        "Implement error handling and edge cases of API endpoints of orders microservice",
        "Write tests for API endpoints of orders microservice",
    ]
    assert sum(c.estimate.expected for c in endpoints.children) == pytest.approx(endpoints.estimate.expected)


def test_a_large_security_step_inside_a_microservice_uses_the_security_template():
    plan = plan_decomposition(title="Build the orders microservice", template="microservice", max_depth=2)
    security = next(t for t in plan.subtasks if t.title.startswith("Implement authentication"))
    assert security.estimate.complexity == "expert"
    assert security.children[0].title.startswith("Write the threat model")
    assert "security template" in security.children[0].reason


def test_a_task_estimate_scales_the_template():
    small = plan_decomposition(title="x", template="crud", max_depth=1)
    big = plan_decomposition(title="x", template="crud", max_depth=1, estimate=pert(40, 60, 80))
    assert sum(t.estimate.expected for t in big.subtasks) == pytest.approx(60)
    assert big.subtasks[0].estimate.expected > small.subtasks[0].estimate.expected


def test_large_non_implementation_steps_split_into_sequential_parts():
    plan = plan_decomposition(title="Build the orders service", template="microservice", estimate=pert(100, 200, 300),
                              max_depth=2)
    contract = plan.subtasks[0]
    assert [c.title for c in contract.children][:2] == [
        "Write the service contract and API design for orders service (part 1 of 4)",
        "Write the service contract and API design for orders service (part 2 of 4)",
    ]
    assert [c.depends_on for c in contract.children][:3] == [[], [(0, "finish_to_start")], [(1, "finish_to_start")]]


@pytest.mark.parametrize("bad", [0, 6, "3", None, True])
def test_max_depth_outside_one_to_five_is_refused(bad):
    with pytest.raises(ValidationFailed) as caught:
        plan_decomposition(title="x", max_depth=bad)
    assert "max_depth" in caught.value.errors


def test_unknown_template_is_refused():
    with pytest.raises(ValidationFailed) as caught:
        plan_decomposition(title="x", template="rocket")
    assert "template" in caught.value.errors


def test_subject_drops_the_leading_verb_and_article():
    assert subject_of("Build a user profile CRUD API.") == "user profile CRUD API"
    assert subject_of("Implement") == "Implement"
