"""The planning flow end to end (issue 22): a real Celery worker runs planned sessions on the real
OpenCode binary, with the project's scripted LLM answering planning turns through `@@plan`.

The planner's answers are scripted in the session's work (the planner prompt repeats it): the n-th
`@@plan` line answers the n-th planning turn of the session (the prompt's `@@resume n`)."""

import json
import uuid

import pytest
from django.conf import settings

from orchestrator.testing import make_git_repository, running_worker, wait_until
from sessions.models import CodingSession, SessionEvent
from sessions.planning.selectors import plan_replans_used
from sessions.planning.services import plan_approve, plan_revise, session_create_planned
from sessions.services import Actor, session_resume, session_start
from tasks.models import PlanStatus, SessionPlan, Task

pytestmark = [pytest.mark.opencode, pytest.mark.worker]

TERMINAL = {"completed", "partially_completed", "failed", "timeout", "stopped", "cancelled", "orphaned"}


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, scripted_llm):
    with running_worker(concurrency=8, env={"OPENCODE_SCRIPTED_LLM_URL": scripted_llm.base_url}) as process:
        yield process


@pytest.fixture
def repository():
    return make_git_repository(settings.REPOSITORY_ROOTS[0] / f"planned-{uuid.uuid4().hex[:8]}")


def task(key, prompt, *, after=(), files=()):
    return {"key": key, "title": f"Part {key}", "prompt": prompt, "capabilities": ["code_generation"],
            "files": list(files), "estimate_hours": {"optimistic": 0.5, "likely": 1, "pessimistic": 2},
            "after": list(after)}


def plan(*tasks, summary="Parts in order"):
    return {"summary": summary, "tasks": list(tasks)}


def work(*answers, text="Build the parts."):
    """The session's work, with one `@@plan` answer per planning turn."""
    return "\n".join([text, *(f"@@plan {json.dumps(answer)}" for answer in answers)])


def create(repository, operator_user, prompt, **planning):
    session = session_create_planned(
        title="Build the parts", initial_prompt=prompt, repository=str(repository),
        actor=Actor.of_user(operator_user), planning=planning,
    )
    session_start(session=session, actor=Actor.of_user(operator_user))
    return session


def wait_for(session, condition, what, *, timeout=120):
    def reached():
        session.refresh_from_db()
        return condition(session)

    wait_until(reached, timeout=timeout, interval=0.2, message=f"{session.reference} {what}")
    return session


def run_to_end(session, *, timeout=120):
    return wait_for(session, lambda s: s.status in TERMINAL, "to finish", timeout=timeout)


def in_review(session):
    return session.status == "paused" and (session.metadata or {}).get("paused_reason") == "plan_review"


def events(session, kind):
    return [e.payload for e in SessionEvent.objects.filter(session=session, type=kind).order_by("id")]


def review_pauses(session):
    return sum(1 for p in events(session, "session.transition") if p["to"] == "paused" and p["reason"] == "plan_review")


def planning_tasks(session):
    return list(Task.objects.filter(session=session, plan_key__startswith="@").order_by("id"))


def by_key(session):
    return {t.plan_key: t for t in Task.objects.filter(session=session).exclude(plan_key="")}


def planner_prompts(scripted_llm, planning_task):
    return [entry["prompt"] for entry in scripted_llm.requests_for(planning_task.opencode_session_id)
            if entry["kind"] != "title"]


def test_planner_plan_is_reviewed_sent_back_edited_approved_and_run_in_dependency_order(
    worker, roster, repository, operator_user, api_client, scripted_llm
):
    first = plan(task("one", "@@write one.txt first\\n\n@@final one done."))
    second = plan(task("one", "@@write one.txt first\\n\n@@final one done."),
                  task("two", "@@write two.txt second\\n\n@@final two done.", after=["one"]))
    session = create(repository, operator_user, work(first, second), mode="planner", plan_approval="required")

    wait_for(session, in_review, "to pause for plan review")
    (planner,) = planning_tasks(session)
    assert planner.status == "completed" and planner.plan_key == "@plan-1"
    assert "task_decomposition" in planner.assigned_agent.capabilities
    # Whatever agent took it, the turn ran on OpenCode's read-only plan agent, in the session's worktree.
    (prompted,) = [p for p in events(session, "task.prompted") if p["task_id"] == planner.pk]
    assert prompted["opencode_agent"] == "plan"
    prompt = planner_prompts(scripted_llm, planner)[0]
    assert "README.md" in prompt and "## The work: Build the parts" in prompt  # git ls-files of the worktree
    v1 = SessionPlan.objects.get(session=session)
    assert (v1.version, v1.source, v1.status) == (1, "planner", PlanStatus.PROPOSED)
    assert not Task.objects.filter(session=session, plan_key="one", status__in=["in_progress", "completed"]).exists()

    # A plain resume does not bypass the review: the next run pauses it again, no new planning turn.
    session_resume(session=CodingSession(pk=session.pk), actor=Actor.of_user(operator_user))
    wait_for(session, lambda s: in_review(s) and review_pauses(s) == 2, "to pause again for plan review")
    assert len(events(session, "plan.turn")) == 1
    assert SessionPlan.objects.get(session=session).status == PlanStatus.PROPOSED

    # Sent back with a comment: a new planning turn sees the comment and the previous plan.
    plan_revise(session=CodingSession(pk=session.pk), comment="Split it: add part two after one.",
                actor=Actor.of_user(operator_user))
    wait_for(session, lambda s: in_review(s) and SessionPlan.objects.filter(session=s).count() == 2,
             "to pause with the revised plan")
    revision = planning_tasks(session)[-1]
    assert revision.plan_key == "@revision-1" and revision.status == "completed"
    revised_prompt = planner_prompts(scripted_llm, revision)[0]
    assert "Split it: add part two after one." in revised_prompt and '"key": "one"' in revised_prompt
    v1.refresh_from_db()
    assert (v1.status, v1.revision_requested) == (PlanStatus.SENT_BACK, False)
    assert sorted(by_key(session)) == ["@plan-1", "@revision-1", "one", "two"]

    # Edited through the API (re-checked), then approved: the graph runs in dependency order.
    edited = plan(*second["tasks"], task("three", "@@write three.txt third\\n\n@@final three done.", after=["two"]))
    response = api_client.put(f"/api/v1/sessions/{session.pk}/plan", edited, format="json")
    assert response.status_code == 200, response.content
    response = api_client.post(f"/api/v1/sessions/{session.pk}/plan/approve", {}, format="json")
    assert response.status_code == 200, response.content
    run_to_end(session)

    assert session.status == "completed", session.error
    tasks = by_key(session)
    assert [tasks[k].status for k in ("one", "two", "three")] == ["completed"] * 3
    assert tasks["one"].completed_at <= tasks["two"].started_at
    assert tasks["two"].completed_at <= tasks["three"].started_at
    worktree = settings.WORKSPACE_ROOT / session.reference
    assert [(worktree / f"{k}.txt").read_text() for k in ("one", "two", "three")] == ["first\n", "second\n", "third\n"]
    assert session.result["tasks"]["total"] == 3  # the planning tasks do not count in the outcome
    kinds = [e.type for e in SessionEvent.objects.filter(session=session, type__startswith="plan.").order_by("id")]
    assert kinds.count("plan.approved") == 1 and "plan.sent_back" in kinds and kinds.count("plan.turn") == 2


def test_an_invalid_answer_gets_one_repair_turn_and_auto_approval_runs_straight_through(
    worker, roster, repository, operator_user, scripted_llm
):
    invalid = plan(task("one", "@@final one", after=["missing"]))
    valid = plan(task("one", "@@write one.txt fixed\\n\n@@final one done."))
    session = create(repository, operator_user, work(invalid, valid), mode="planner", plan_approval="auto")
    run_to_end(session)

    assert session.status == "completed", session.error
    refused = [p for p in events(session, "plan.checked") if not p["ok"]]
    assert len(refused) == 1 and refused[0]["attempt"] == 1
    assert refused[0]["findings"][0]["tasks"] == ["one"]
    (planner,) = planning_tasks(session)
    # The repair turn continues the same OpenCode session, quoting the findings.
    prompts = planner_prompts(scripted_llm, planner)
    assert len(prompts) == 2 and "Your last answer was refused" in prompts[1] and "missing" in prompts[1]
    assert [p["kind"] for p in events(session, "plan.turn")] == ["plan", "repair"]
    v1 = SessionPlan.objects.get(session=session)
    assert (v1.status, v1.source) == (PlanStatus.APPROVED, "planner")
    assert review_pauses(session) == 0
    assert by_key(session)["one"].status == "completed"


def test_a_second_invalid_answer_fails_the_planning_task_and_the_session_with_plan_invalid(
    worker, roster, repository, operator_user
):
    invalid = plan(task("one", "@@final one", after=["one"]))
    session = create(repository, operator_user, work(invalid, {"tasks": []}), mode="planner", plan_approval="auto")
    run_to_end(session)

    assert session.status == "failed"
    assert session.error["type"] == "plan_invalid", session.error
    (planner,) = planning_tasks(session)
    assert planner.status == "failed" and planner.error["type"] == "plan_invalid"
    assert planner.error["context"]["findings"], planner.error
    assert [p["attempt"] for p in events(session, "plan.checked") if not p["ok"]] == [1, 2]
    assert not SessionPlan.objects.filter(session=session).exists()
    assert not Task.objects.filter(session=session, plan_key="one").exists()


def test_a_task_failed_for_good_triggers_one_replan_of_the_remaining_work(
    worker, roster, repository, operator_user, scripted_llm
):
    first = plan(task("broken", "@@fail 400\n@@final never"),
                 task("after-broken", "@@final never runs", after=["broken"]),
                 task("fine", "@@write fine.txt fine\\n\n@@final fine done."))
    remaining = plan(task("mended", "@@write mended.txt mended\\n\n@@final mended."), summary="The rest")
    session = create(repository, operator_user, work(first, remaining), mode="planner", plan_approval="auto",
                     replan_limit=1)
    run_to_end(session)

    assert session.status == "completed", session.error
    tasks = by_key(session)
    assert {k: t.status for k, t in tasks.items()} == {
        "@plan-1": "completed", "broken": "failed", "after-broken": "skipped", "fine": "completed",
        "@replan-1": "completed", "mended": "completed"}
    (replan,) = [p for p in events(session, "plan.replan") if p["started"]]
    assert replan["failed_keys"] == ["broken"] and replan["replans_used"] == 1
    assert sorted(tasks["@replan-1"].result["replaces"]) == sorted([tasks["broken"].pk, tasks["after-broken"].pk])
    prompt = planner_prompts(scripted_llm, tasks["@replan-1"])[0]
    assert "Completed tasks: fine." in prompt and "Task broken failed" in prompt
    v2 = SessionPlan.objects.get(session=session, version=2)
    assert (v2.source, v2.status) == ("replan", PlanStatus.APPROVED)
    assert plan_replans_used(session=session) == 1
    assert session.result["tasks"]["total"] == 2  # fine and mended; the replaced tasks left out


def test_without_replans_left_a_failed_task_ends_the_session_partially_completed(
    worker, roster, repository, operator_user
):
    first = plan(task("broken", "@@fail 400\n@@final never"), task("fine", "@@final fine done."))
    session = create(repository, operator_user, work(first), mode="planner", plan_approval="auto", replan_limit=0)
    run_to_end(session)

    assert session.status == "partially_completed", session.error
    (refused,) = events(session, "plan.replan")
    assert refused["started"] is False and refused["replan_limit"] == 0
    assert len(planning_tasks(session)) == 1


def test_template_mode_plans_from_the_decomposition_template(worker, roster, repository, operator_user):
    session = create(repository, operator_user, "Fix the crash when the list is empty.\n@@final step done.",
                     mode="template", template="bugfix", plan_approval="auto")
    run_to_end(session)

    assert session.status == "completed", session.error
    v1 = SessionPlan.objects.get(session=session)
    assert (v1.source, v1.status) == ("template", PlanStatus.APPROVED)
    assert v1.submitted["summary"].startswith("bugfix template")
    keys = [t["key"] for t in v1.submitted["tasks"]]
    tasks = by_key(session)
    assert sorted(tasks) == sorted(keys) and len(keys) > 1
    assert all(t.status == "completed" for t in tasks.values())
    assert not planning_tasks(session)


def test_a_plan_supplied_at_creation_waits_for_review_before_it_runs(
    worker, roster, repository, operator_user, api_client
):
    supplied = plan(task("only", "@@write only.txt only\\n\n@@final only done."))
    session = session_create_planned(
        title="Supplied", initial_prompt="Run the supplied plan.", repository=str(repository),
        actor=Actor.of_user(operator_user), planning={"plan_approval": "required"}, plan=supplied,
    )
    session_start(session=session, actor=Actor.of_user(operator_user))
    wait_for(session, in_review, "to pause for plan review")
    assert by_key(session)["only"].status in ("pending", "ready")

    response = api_client.post(f"/api/v1/sessions/{session.pk}/plan/approve", {}, format="json")
    assert response.status_code == 200, response.content
    run_to_end(session)
    assert session.status == "completed", session.error
    assert by_key(session)["only"].status == "completed"


def test_a_replan_waits_for_review_and_its_revision_still_plans_the_remaining_work(
    worker, roster, repository, operator_user, scripted_llm
):
    first = plan(task("broken", "@@fail 400\n@@final never"), task("fine", "@@final fine done."))
    remaining = plan(task("mended", "@@final mended."), summary="The rest")
    revised = plan(task("mended-better", "@@write better.txt better\\n\n@@final better."), summary="The rest, better")
    session = create(repository, operator_user, work(first, remaining, revised), mode="planner",
                     plan_approval="required", replan_limit=1)
    actor = Actor.of_user(operator_user)

    wait_for(session, in_review, "to pause for the first plan's review")
    plan_approve(session=CodingSession(pk=session.pk), actor=actor)
    wait_for(session, lambda s: in_review(s) and SessionPlan.objects.filter(session=s).count() == 2,
             "to pause for the replan's review")
    v2 = SessionPlan.objects.get(session=session, version=2)
    assert (v2.source, v2.status) == ("replan", PlanStatus.PROPOSED)
    assert by_key(session)["mended"].status in ("pending", "ready")

    plan_revise(session=CodingSession(pk=session.pk), comment="Write a file as well.", actor=actor)
    wait_for(session, lambda s: in_review(s) and SessionPlan.objects.filter(session=s).count() == 3,
             "to pause for the revised replan's review")
    revision = planning_tasks(session)[-1]
    prompt = planner_prompts(scripted_llm, revision)[0]
    assert "Write a file as well." in prompt and "Completed tasks: fine." in prompt and "Task broken failed" in prompt
    plan_approve(session=CodingSession(pk=session.pk), actor=actor)
    run_to_end(session)

    assert session.status == "completed", session.error
    tasks = by_key(session)
    assert "mended" not in tasks and tasks["mended-better"].status == "completed"
    assert (settings.WORKSPACE_ROOT / session.reference / "better.txt").read_text() == "better\n"
    assert plan_replans_used(session=session) == 1 and len(events(session, "plan.replan")) == 1
