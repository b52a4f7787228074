"""The plan format and its mechanical checks (tasks.plans): plain functions, no database."""

import copy
import json
import os

import pytest

from tasks.plans import (
    OVERLAP,
    PROMPT_MAX_BYTES,
    PlanFormatError,
    check_answer,
    check_plan,
    normalise_path,
    plan_from_answer,
    schedule,
)


def task(key, *, after=(), files=(), capabilities=("code_generation",), **extra):
    return {
        "key": key, "title": f"Do {key}", "prompt": f"Implement {key}.", "capabilities": list(capabilities),
        "files": list(files), "estimate_hours": {"optimistic": 0.5, "likely": 1, "pessimistic": 2},
        "after": list(after), **extra,
    }


def plan(*tasks, summary="Build the books app"):
    return {"summary": summary, "tasks": list(tasks)}


def codes(checked):
    return [finding.code for finding in checked.findings]


def test_a_sound_plan_has_no_findings_and_keeps_its_edges():
    checked = check_plan(plan(
        task("schema", files=["books/models.py"], acceptance="python -m pytest books -q"),
        task("api", after=["schema"], files=["books/api.py"]),
    ))
    assert checked.ok, checked.findings
    assert [t.key for t in checked.tasks] == ["schema", "api"]
    assert [(e.prerequisite, e.dependent) for e in checked.edges] == [("schema", "api")]
    assert checked.tasks[0].acceptance == "python -m pytest books -q"
    assert checked.tasks[0].estimate.expected == pytest.approx((0.5 + 4 + 2) / 6)
    assert checked.adjustments == []


def test_a_cycle_is_refused_and_named_with_its_keys():
    checked = check_plan(plan(task("a", after=["c"]), task("b", after=["a"]), task("c", after=["b"]), task("d")))
    assert codes(checked) == ["cycle"]
    finding = checked.findings[0]
    assert "a → b → c → a" in finding.message
    assert set(finding.tasks) == {"a", "b", "c"}


def test_unknown_and_self_after_are_refused_naming_the_task():
    checked = check_plan(plan(task("a", after=["a"]), task("b", after=["nope"])))
    assert sorted(codes(checked)) == ["self_dependency", "unknown_dependency"]
    by_code = {f.code: f for f in checked.findings}
    assert by_code["self_dependency"].tasks == ("a",)
    assert by_code["unknown_dependency"].tasks == ("b",)
    assert "'nope'" in by_code["unknown_dependency"].message


@pytest.mark.parametrize("path", ["/etc/passwd", "../other/file.py", "books/../../x", "~/x", "C:/x", "a\\b"])
def test_files_outside_the_repository_are_refused(path):
    checked = check_plan(plan(task("a", files=["books/ok.py", path])))
    assert codes(checked) == ["file_outside_repository"]
    assert checked.findings[0].tasks == ("a",)
    assert checked.findings[0].field == "tasks[0].files[1]"


def test_a_symbolic_link_leading_out_of_the_repository_is_refused(tmp_path):
    repository = tmp_path / "repo"
    repository.mkdir()
    os.symlink(tmp_path, repository / "escape")
    inside = check_plan(plan(task("a", files=["books/new.py"])), repository=repository)
    outside = check_plan(plan(task("a", files=["escape/secret"])), repository=repository)
    assert inside.ok
    assert codes(outside) == ["file_outside_repository"]


def test_unknown_capability_is_refused_naming_the_task():
    checked = check_plan(plan(task("a"), task("b", capabilities=["code_generation", "telepathy"])))
    assert codes(checked) == ["unknown_capability"]
    assert checked.findings[0].tasks == ("b",)
    assert "telepathy" in checked.findings[0].message


def test_two_independent_tasks_owning_overlapping_files_are_ordered_as_an_adjustment():
    checked = check_plan(plan(
        task("models", files=["books/models.py"]),
        task("docs", files=["docs/books.md"]),
        task("migrations", files=["books/"]),
    ))
    assert checked.ok
    added = [(e.prerequisite, e.dependent) for e in checked.edges if e.origin == OVERLAP]
    assert added == [("models", "migrations")]
    assert [a.tasks for a in checked.adjustments] == [("models", "migrations")]
    assert "books/models.py" in checked.adjustments[0].message
    assert checked.as_plan()["tasks"][2]["after"] == ["models"]


def test_tasks_already_ordered_get_no_extra_edge_even_through_a_chain():
    checked = check_plan(plan(
        task("a", files=["x.py"]), task("b", after=["a"]), task("c", after=["b"], files=["x.py"]),
    ))
    assert checked.ok
    assert checked.adjustments == []
    assert all(edge.origin != OVERLAP for edge in checked.edges)


def test_an_added_edge_counts_for_the_pairs_after_it():
    # All three own f: they run one after the other, a → b → c, without a redundant a → c.
    checked = check_plan(plan(task("a", files=["f"]), task("b", files=["f"]), task("c", files=["f"])))
    assert [(e.prerequisite, e.dependent) for e in checked.edges] == [("a", "b"), ("b", "c")]
    assert len(checked.adjustments) == 2


@pytest.mark.parametrize(
    "mutate, code, field",
    [
        (lambda p: p["tasks"].append(copy.deepcopy(p["tasks"][0])), "duplicate_key", "tasks[1].key"),
        (lambda p: p["tasks"][0].update(key="Not A Slug"), "invalid_key", "tasks[0].key"),
        (lambda p: p["tasks"][0].update(prompt="x" * (PROMPT_MAX_BYTES + 1)), "too_long", "tasks[0].prompt"),
        (lambda p: p["tasks"][0].update(prompt="é" * (PROMPT_MAX_BYTES // 2 + 1)), "too_long", "tasks[0].prompt"),
        (lambda p: p["tasks"][0].update(title=""), "invalid_field", "tasks[0].title"),
        (lambda p: p["tasks"][0].update(acceptance="x" * 2001), "too_long", "tasks[0].acceptance"),
        (lambda p: p["tasks"][0].update(depends_on=["b"]), "unknown_field", "tasks[0]"),
        (lambda p: p["tasks"][0]["estimate_hours"].update(optimistic=3), "invalid_estimate", "tasks[0].estimate_hours"),
        (lambda p: p["tasks"][0]["estimate_hours"].update(likely=float("inf")), "invalid_estimate",
         "tasks[0].estimate_hours.likely"),
        (lambda p: p["tasks"][0]["estimate_hours"].update(pessimistic=10_000), "invalid_estimate",
         "tasks[0].estimate_hours.pessimistic"),
        (lambda p: p["tasks"][0].pop("estimate_hours"), "invalid_estimate", "tasks[0].estimate_hours"),
        (lambda p: p.update(summary="s" * 4001), "too_long", "summary"),
        (lambda p: p.update(tasks=[]), "task_count", "tasks"),
        (lambda p: p.update(tasks=[task(f"t{i}") for i in range(41)]), "task_count", "tasks"),
        (lambda p: p.update(extra=1), "unknown_field", ""),
    ],
)
def test_each_bound_is_a_finding_naming_its_field(mutate, code, field):
    data = plan(task("a"))
    mutate(data)
    checked = check_plan(data)
    assert code in codes(checked)
    assert field in [f.field for f in checked.findings if f.code == code]


def test_forty_tasks_are_accepted():
    assert check_plan(plan(*[task(f"t{i}") for i in range(40)])).ok


def test_paths_are_normalised():
    assert normalise_path("books/./models.py") == "books/models.py"
    assert normalise_path("books/migrations/") == "books/migrations/"
    assert normalise_path("./") == "."
    assert normalise_path("books/../x") is None


def test_the_plan_is_read_from_a_json_fence_or_a_bare_answer():
    body = plan(task("a"))
    fenced = f"Here is the plan.\n```json\n{json.dumps(body)}\n```\nDone."
    assert plan_from_answer(fenced) == body
    assert plan_from_answer(json.dumps(body)) == body
    assert plan_from_answer(f"The plan: {json.dumps(body)} -- that is all") == body
    # The last json fence wins: a planner quoting the format first and answering after.
    assert plan_from_answer(f"```json\n{{\"example\": 1}}\n```\n```json\n{json.dumps(body)}\n```") == body


def test_a_malformed_answer_is_one_finding():
    with pytest.raises(PlanFormatError):
        plan_from_answer("I could not make a plan")
    checked = check_answer("```json\n{\"tasks\": [\n```")
    assert codes(checked) == ["malformed"]
    assert codes(check_answer("[1, 2]")) == ["malformed"]
    assert check_answer("```json\n" + json.dumps(plan(task("a"))) + "\n```").ok


def test_the_schedule_follows_the_longest_chain_of_expected_hours():
    slow = {"optimistic": 4, "likely": 5, "pessimistic": 6}
    checked = check_plan(plan(
        task("a"), task("b", after=["a"]), task("c", after=["b"]), task("slow", estimate_hours=slow),
    ))
    analysis = schedule(checked)
    assert analysis.critical_path == ["slow"]
    assert analysis.total_expected_hours == pytest.approx(5.0)
