"""The session monitor in a real browser (Debian's Chromium driven by Playwright) on the real stack:
daphne, a Celery worker, OpenCode and the scripted LLM. A planned session created in the console,
reviewed, edited and approved, its graph followed live; the patch of a changed file; a checkpoint
restored from the timeline; a follow-up to a running task answered; what a viewer may not do; every
form control of the console labelled. Each test leaves a screenshot of its final page under
<ORCHESTRATOR_VAR_DIR>/test/screenshots/ (fixtures: orchestrator/tests/browser.py)."""

import json
import re
import uuid

import pytest
from django.conf import settings

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` marker skips (or, in CI's services run, fails) every test here
    expect = None

from orchestrator.tests.browser import login, new_repository, wait_live
from sessions.models import Checkpoint, CodingSession, SessionEvent
from sessions.planning import services as planning
from sessions.services import Actor, session_add_checkpoint, session_create, session_start
from tasks.models import PlanStatus, SessionPlan, Task

pytestmark = [pytest.mark.browser, pytest.mark.opencode, pytest.mark.worker]

# A form control with no label: no <label> (for= or around it), no aria-label, no aria-labelledby.
UNLABELLED = """() => Array.from(document.querySelectorAll('input, select, textarea'))
  .filter(el => el.type !== 'hidden')
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.getAttribute('aria-labelledby'))
  .map(el => el.outerHTML.slice(0, 160))"""


def plan_task(key, prompt, *, after=()):
    return {"key": key, "title": f"Part {key}", "prompt": prompt, "capabilities": ["code_generation"],
            "files": [], "estimate_hours": {"optimistic": 0.5, "likely": 1, "pessimistic": 2}, "after": list(after)}


def gate_path():
    """A file a scripted step waits for (`@@wait <path>`): the test decides when the model goes on."""
    folder = settings.VAR_DIR / "test" / "gates"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"gate-{uuid.uuid4().hex[:8]}"


def started(user, prompt, *, title):
    actor = Actor.of_user(user)
    session = session_create(title=title, initial_prompt=prompt, repository=str(new_repository()), actor=actor)
    return session_start(session=session, actor=actor)


def accept_dialogs(page):
    """hx-confirm asks with window.confirm: answer yes, as the operator would."""
    page.on("dialog", lambda dialog: dialog.accept())


def test_a_planned_session_is_reviewed_edited_approved_and_its_graph_turns_completed_live(
    page, browser_user, idle_worker_at_end
):
    operator = browser_user("operators")
    repository = new_repository()
    gate = gate_path()
    proposed = {"summary": "Three parts", "tasks": [
        plan_task("one", f"@@wait {gate} 60\n@@write one.txt first\\n\n@@final one done."),
        plan_task("two", "@@write two.txt second\\n\n@@final two done."),
        plan_task("three", "@@write three.txt third\\n\n@@final three done.", after=["one"]),
    ]}
    login(page, operator, next_url="/sessions/new")
    page.get_by_label("Title").fill("Build the parts")
    page.get_by_label("Prompt").fill(f"Build the parts.\n@@plan {json.dumps(proposed)}")
    page.locator("select[name=repository_choice]").select_option(str(repository))
    page.locator("select[name=planning_mode]").select_option("planner")
    page.locator("select[name=plan_approval]").select_option("required")
    page.get_by_role("button", name="Create session").click()
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    session = CodingSession.objects.get(title="Build the parts")
    assert session.metadata["planning"]["mode"] == "planner"
    wait_live(page)

    # The planner's answer pauses the session for review; the panel arrives without a reload.
    plan = page.locator("#session-plan")
    expect(plan).to_contain_text("waits in plan_review")
    expect(page.locator("#session-header .badge").first).to_have_text("paused")
    expect(plan.locator("fieldset.plan-task")).to_have_count(4)  # three tasks and the one to add
    # Remove "three", make "two" wait for "one"; saved, re-checked.
    plan.locator("#plan-row-2").get_by_label("Remove this task").check()
    plan.get_by_label("After (task keys, comma separated)").nth(1).fill("one")
    plan.get_by_role("button", name="Save and re-check").click()
    expect(plan.locator("#plan-title")).to_contain_text("version 2 · proposed")
    expect(plan.locator("fieldset.plan-task")).to_have_count(3)
    edited = SessionPlan.objects.get(session=session, status=PlanStatus.PROPOSED)
    assert [(t["key"], t["after"]) for t in edited.submitted["tasks"]] == [("one", []), ("two", ["one"])]
    plan.get_by_role("button", name="Approve plan").click()
    # The answer's notice may be replaced at once by the pushed panel: the state is what stays.
    expect(plan.locator("#plan-title")).to_contain_text("version 2 · approved")
    expect(plan.get_by_role("button", name="Approve plan")).to_have_count(0)

    page.get_by_role("link", name="Task graph").first.click()
    page.wait_for_url(re.compile(rf"/sessions/{session.pk}/graph$"))
    wait_live(page)
    page.evaluate("window.loadedOnce = true")
    tasks = {t.plan_key: t for t in Task.objects.filter(session=session, plan_key__in=["one", "two", "three"])}
    assert sorted(tasks) == ["one", "two"]
    one, two = (page.locator(f"#node-{tasks[key].pk}") for key in ("one", "two"))
    expect(one).to_have_class(re.compile(r"\bnode-in_progress\b"))  # held by its @@wait
    expect(two).not_to_have_class(re.compile(r"\bnode-completed\b"))
    gate.touch()
    expect(one).to_have_class(re.compile(r"\bnode-completed\b"))
    expect(two).to_have_class(re.compile(r"\bnode-completed\b"))
    expect(page.locator("#task-graph")).to_contain_text("completed")
    assert page.evaluate("window.loadedOnce") is True, "the page was reloaded"
    tasks["one"].refresh_from_db()
    tasks["two"].refresh_from_db()
    assert tasks["one"].completed_at <= tasks["two"].started_at
    assert page.console_errors == []


def test_the_patch_of_a_changed_file_is_shown_on_the_monitor(page, browser_user, idle_worker_at_end):
    operator = browser_user("operators")
    session = started(operator, "@@write notes/release.txt Release 2.0\\nFaster startup\\n\n@@final Wrote it.",
                      title="Write the release notes")
    login(page, operator, next_url=f"/sessions/{session.pk}/")
    wait_live(page)
    expect(page.locator("#session-header .badge").first).to_have_text("completed")
    patch = page.locator("#session-patch .file-patch").filter(has_text="notes/release.txt")
    expect(patch).to_be_visible()
    expect(patch.locator(".pl-add").filter(has_text="+Release 2.0")).to_be_visible()
    expect(patch.locator(".pl-add").filter(has_text="+Faster startup")).to_be_visible()
    expect(page.locator("#session-patch")).to_contain_text("1 file changed")


def test_an_operator_restores_a_checkpoint_from_the_timeline(page, browser_user, idle_worker_at_end):
    operator = browser_user("operators")
    gate = gate_path()
    session = started(operator, f"@@write a.txt one\\n\n@@write b.txt two\\n\n@@wait {gate} 60\n@@final done",
                      title="Write two files, then wait")
    try:
        accept_dialogs(page)
        login(page, operator, next_url=f"/sessions/{session.pk}/")
        wait_live(page)
        timeline = page.locator("#checkpoint-timeline")
        expect(timeline.locator("#checkpoint-2")).to_contain_text("b.txt")
        expect(timeline.get_by_role("button", name=re.compile("^Restore"))).to_have_count(0)  # it runs
        page.locator("#session-header").get_by_role("button", name="Stop").click()
        expect(page.locator("#session-header .badge").first).to_have_text("stopped")

        # The transition pushed the timeline again: now it offers restore, without a reload.
        timeline.get_by_role("button", name="Restore checkpoint 1").click()
        # The answer's notice may be replaced at once by the timeline the restore events push.
        expect(page.locator("#event-log .event-checkpoint").filter(has_text="restored checkpoint #1")).to_have_count(2)
        session.refresh_from_db()
        assert session.resume_checkpoint.sequence == 1
        worktree = settings.WORKSPACE_ROOT / session.reference
        assert (worktree / "a.txt").read_text() == "one\n" and not (worktree / "b.txt").exists()
        assert SessionEvent.objects.filter(session=session, type="workspace.restored").count() == 1
    finally:
        gate.touch()


def test_a_follow_up_sent_from_the_monitor_is_answered_by_the_running_tasks_agent(
    page, browser_user, idle_worker_at_end
):
    operator = browser_user("operators")
    gate = gate_path()
    session = started(operator, f"Say hello.\n@@wait {gate} 60\n@@final Hello first.", title="Answer, then listen")
    try:
        login(page, operator, next_url=f"/sessions/{session.pk}/")
        wait_live(page)
        expect(page.locator("#event-log")).to_contain_text("task.prompted")
        followup = page.locator("#session-followup")
        followup.get_by_label(re.compile("^To the agent of the running task")).fill(
            "Also say goodbye, please.\n@@final Goodbye from the follow-up.")
        followup.get_by_role("button", name="Send").click()
        expect(page.locator("#session-followup")).to_contain_text("Message kept for task")
        expect(page.locator("#event-log .event-operator")).to_contain_text("Also say goodbye, please.")
    finally:
        gate.touch()
    answers = page.locator("#event-log .assistant-text")
    expect(answers.filter(has_text="Goodbye from the follow-up.")).to_have_count(1)
    expect(answers.filter(has_text="Hello first.")).to_have_count(1)
    expect(page.locator("#session-header .badge").first).to_have_text("completed")
    assert SessionEvent.objects.filter(session=session, type="operator.message.delivered").count() == 1


def in_review_with_a_checkpoint(user):
    """A session paused in plan_review (a worker's claim, then its review pause) holding a checkpoint:
    every operator control of the monitor is offered to an operator."""
    actor = Actor.of_user(user)
    session = planning.session_create_planned(
        actor=actor, planning={"mode": "planner", "plan_approval": "required"},
        plan={"summary": "Two parts", "tasks": [plan_task("one", "@@final one"),
                                                plan_task("two", "@@final two", after=["one"])]},
        title="Review me", initial_prompt="Two parts.", repository=str(new_repository()))
    session_start(session=session, immediate=True, worker_id="worker-browser")
    session_add_checkpoint(session=CodingSession.objects.get(pk=session.pk), data={"reason": "step"},
                           actor=Actor.worker("worker-browser"))
    planning.plan_await_review(session=CodingSession.objects.get(pk=session.pk), actor=Actor.worker("worker-browser"))
    return CodingSession.objects.get(pk=session.pk)


def test_a_viewer_sees_no_plan_restore_or_message_controls_and_forged_posts_are_refused(
    page, browser_user, browser_db
):
    operator, viewer = browser_user("operators"), browser_user("viewers")
    session = in_review_with_a_checkpoint(operator)
    monitor = f"/sessions/{session.pk}/"

    # What an operator sees on this page, so the viewer's page below lacks them for the role alone.
    login(page, operator, next_url=monitor)
    expect(page.get_by_role("button", name="Approve plan")).to_be_visible()
    expect(page.get_by_role("button", name="Save and re-check")).to_be_visible()
    expect(page.get_by_role("button", name="Restore checkpoint 1")).to_be_visible()
    expect(page.locator("#session-followup textarea")).to_be_visible()

    page.context.clear_cookies()
    login(page, viewer, next_url=monitor)
    plan = page.locator("#session-plan")
    expect(plan).to_contain_text("an operator approves or sends the plan back")
    expect(plan.locator("#plan-task-one")).to_be_visible()
    expect(plan.locator("form, button, textarea, input")).to_have_count(0)
    expect(page.locator("#checkpoint-timeline")).to_contain_text("#1")
    expect(page.locator("#checkpoint-timeline button")).to_have_count(0)
    expect(page.locator("#session-followup")).to_have_count(0)
    expect(page.locator("#session-header .actions button")).to_have_count(0)

    csrf = next(cookie["value"] for cookie in page.context.cookies() if cookie["name"] == "csrftoken")
    forged = {
        f"{monitor}plan/edit": {"version": "1", "task_count": "1", "summary": "x", "tasks-0-key": "one"},
        f"{monitor}plan/approve": {},
        f"{monitor}plan/revise": {"comment": "Do less."},
        f"{monitor}checkpoints/1/restore": {},
        f"{monitor}messages": {"text": "Stop everything."},
    }
    for url, form in forged.items():
        answer = page.request.post(url, form=form, headers={"X-CSRFToken": csrf})
        assert answer.status == 403, (url, answer.status)
    session.refresh_from_db()
    assert session.status == "paused" and session.resume_checkpoint_id is None
    assert list(SessionPlan.objects.filter(session=session).values_list("version", "status")) == [
        (1, PlanStatus.PROPOSED)]
    assert not SessionEvent.objects.filter(session=session, type__in=[
        "operator.message", "session.checkpoint_restored", "plan.approved", "plan.sent_back"]).exists()
    assert Checkpoint.objects.filter(session=session).count() == 1
    page.reload()
    expect(page.locator("#session-plan")).to_contain_text("version 1 · proposed")


def test_every_form_control_of_the_console_has_a_label(page, browser_user, browser_db):
    operator = browser_user("operators")
    session = in_review_with_a_checkpoint(operator)
    pages = ["/", "/sessions/", "/sessions/new", f"/sessions/{session.pk}/", f"/sessions/{session.pk}/plan",
             f"/sessions/{session.pk}/graph", f"/sessions/{session.pk}/diff", "/approvals/", "/agents/",
             "/contexts/", "/tasks/"]
    login(page, operator)
    unlabelled = {}
    for url in pages:
        response = page.goto(url)
        assert response.status == 200, url
        controls = page.locator("input:not([type=hidden]), select, textarea").count()
        missing = page.evaluate(UNLABELLED)
        if missing:
            unlabelled[url] = missing
        assert url != f"/sessions/{session.pk}/" or controls > 20  # the plan form, restore, message
    # A refused new-session form too: its error lists sit inside the labels.
    page.goto("/sessions/new")
    page.get_by_role("button", name="Create session").click()
    expect(page.locator("#new-session [role=alert]")).to_be_visible()
    missing = page.evaluate(UNLABELLED)
    if missing:
        unlabelled["/sessions/new (refused)"] = missing
    assert unlabelled == {}
