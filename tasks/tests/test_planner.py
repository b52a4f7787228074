"""The planner's prompt (tasks.planner): plain functions, no database."""

import json

from tasks.planner import FILES_LISTED, planner_prompt
from tasks.plans import Finding, check_answer


def test_the_first_turn_gives_the_work_the_files_and_the_format():
    prompt = planner_prompt(title="Books", work="Add a books app.", files=["manage.py", "shop/models.py"])
    assert "## The work: Books\n\nAdd a books app." in prompt
    assert "manage.py\nshop/models.py" in prompt
    assert "```json" in prompt and '"estimate_hours"' in prompt and "task_decomposition" in prompt
    assert "@@resume" not in prompt and "previous plan" not in prompt


def test_the_format_example_in_the_prompt_is_itself_a_valid_plan():
    prompt = planner_prompt(title="Books", work="w", files=[])
    assert check_answer(prompt).ok  # the example is the last json fence of the prompt


def test_a_long_file_list_is_cut_and_says_how_many_more():
    files = [f"src/module_{n}.py" for n in range(FILES_LISTED + 5)]
    prompt = planner_prompt(title="t", work="w", files=files)
    assert "src/module_0.py" in prompt and f"src/module_{FILES_LISTED + 4}.py" not in prompt
    assert "... and 5 more" in prompt


def test_a_revision_sees_the_previous_plan_and_the_comment():
    previous = {"summary": "s", "tasks": [{"key": "only"}]}
    prompt = planner_prompt(title="t", work="w", files=[], turn=2, previous_plan=previous,
                            comment="Split it in two")
    assert json.dumps(previous, indent=2) in prompt
    assert "sent it back with this comment\n\nSplit it in two" in prompt
    assert prompt.endswith("@@resume 1")


def test_a_repair_turn_quotes_the_findings_with_their_keys():
    findings = [Finding("cycle", "The tasks' after lists form a cycle: a → b → a", ("a", "b"), "tasks")]
    prompt = planner_prompt(title="t", work="w", files=[], turn=2, findings=findings)
    assert "- [a, b] The tasks' after lists form a cycle: a → b → a" in prompt


def test_a_replan_sees_what_completed_and_the_failure():
    prompt = planner_prompt(title="t", work="w", files=[], turn=3, previous_plan={"tasks": []},
                            completed=["schema"], failure={"task": "api", "error": "tests failed",
                                                           "output": "x" * 10_000 + "FAILED test_api"})
    assert "Completed tasks: schema." in prompt and "Task api failed: tests failed" in prompt
    assert "FAILED test_api" in prompt and "x" * 8_001 not in prompt
    assert prompt.endswith("@@resume 2")


def test_a_template_gives_a_plan_that_passes_the_checks():
    from tasks.planner import template_plan
    from tasks.plans import check_plan

    body = template_plan(title="Build a user profile CRUD API", work="Users, profiles, the usual. " * 2000)
    checked = check_plan(body)
    assert checked.ok, checked.findings
    assert body["summary"].startswith("crud template")
    assert len(checked.tasks) >= 3 and any(task.after for task in checked.tasks)
    assert all(len(task["prompt"].encode()) <= 20_000 for task in body["tasks"])
