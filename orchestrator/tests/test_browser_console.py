"""The console in a real browser (Debian's Chromium driven by Playwright) on the real stack:
daphne, a Celery worker, OpenCode and the scripted LLM. Each test leaves a screenshot of its
final page under <ORCHESTRATOR_VAR_DIR>/test/screenshots/. The fixtures come from
orchestrator/tests/browser.py (a plugin of the root conftest.py)."""

import re

import pytest
from django.conf import settings

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` marker skips (or, in CI's services run, fails) every test here
    expect = None

from orchestrator.tests.browser import login, new_repository, wait_live
from sessions.models import CodingSession, PermissionRequest
from sessions.permissions import permission_request_record
from sessions.services import Actor, session_create, session_start

pytestmark = [pytest.mark.browser, pytest.mark.opencode, pytest.mark.worker]


def create_session(user, prompt, **fields):
    return session_create(
        title=fields.pop("title", "Write the release notes"), initial_prompt=prompt,
        repository=str(new_repository()), actor=Actor.of_user(user), **fields,
    )


def test_sign_in_lands_on_the_overview(page, browser_user, browser_db):
    operator = browser_user("operators")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    login(page, operator)
    expect(page.get_by_role("heading", name=re.compile("^Overview"))).to_be_visible()
    expect(page.get_by_role("navigation", name="Console").get_by_role("link", name="Overview")).to_have_attribute(
        "aria-current", "page")
    wait_live(page)
    assert page.console_errors == []


def test_overview_follows_a_session_from_queued_to_completed_without_a_reload(
    page, browser_user, idle_worker_at_end
):
    operator = browser_user("operators")
    login(page, operator)
    wait_live(page)
    page.evaluate("window.loadedOnce = true")
    session = create_session(operator, "@@sleep 2\n@@write notes.txt from the browser test\n@@final Wrote notes.txt.")
    # Held in the queue for a few seconds, so the overview can be seen showing it queued.
    session_start(session=session, actor=Actor.of_user(operator), countdown=4)

    expect(page.locator("#count-queued")).to_have_attribute("data-count", "1")
    expect(page.locator(f"#running-{session.pk}")).to_contain_text("running")
    expect(page.locator("#count-completed")).to_have_attribute("data-count", "1")
    expect(page.locator("#count-queued")).to_have_attribute("data-count", "0")
    expect(page.locator(f"#running-{session.pk}")).to_have_count(0)
    assert page.evaluate("window.loadedOnce") is True, "the page was reloaded"
    assert CodingSession.objects.get(pk=session.pk).status == "completed"


def test_a_permission_request_appears_in_the_inbox_and_approving_it_lets_the_run_go_on(
    page, browser_user, idle_worker_at_end
):
    operator = browser_user("operators")
    login(page, operator, next_url="/approvals/")
    wait_live(page)
    expect(page.locator("#nav-approvals")).to_have_text("0")
    session = create_session(
        operator, "@@bash echo approved > approved.txt\n@@final Ran the command.",
        permission_policy={"bash": "ask"}, title="Run the release script",
    )
    session_start(session=session, actor=Actor.of_user(operator))

    item = page.locator("#inbox .approval").filter(has_text=session.reference)
    expect(item).to_contain_text("bash")
    expect(item).to_contain_text("s left before the default applies")
    # The time left counts down in the page between pushes (no event arrives meanwhile).
    left = item.locator(".seconds-left")
    shown = int(left.inner_text().split()[0])
    expect(left).to_have_text(re.compile(rf"^({'|'.join(str(n) for n in range(max(0, shown - 5), shown))}) s left$"))
    expect(page.locator("#nav-approvals")).to_have_text("1")
    item.get_by_role("button", name=re.compile("^Approve once")).click()

    expect(page.locator("#inbox-notice")).to_contain_text(f"{session.reference} · bash: Allow once")
    expect(page.locator("#inbox .approval")).to_have_count(0)
    expect(page.locator("#nav-approvals")).to_have_text("0")
    request = PermissionRequest.objects.get(session=session)
    assert (request.status, request.reply, request.answered_by_id) == ("answered", "once", operator.pk)

    page.goto(f"/sessions/?search={session.title}")
    expect(page.locator(f"#session-row-{session.pk}")).to_contain_text("completed")
    assert (settings.WORKSPACE_ROOT / session.reference / "approved.txt").read_text() == "approved\n"


def test_the_agents_page_shows_load_while_a_task_runs(page, browser_user, idle_worker_at_end):
    operator = browser_user("operators")
    login(page, operator, next_url="/agents/")
    wait_live(page)
    session = create_session(operator, "@@sleep 6\n@@final Thought about it.")
    session_start(session=session, actor=Actor.of_user(operator))

    busy = page.locator("#agent-rows tr").filter(has_text=session.reference)
    expect(busy).to_have_count(1)
    expect(busy.locator(".loadbar > span")).not_to_have_attribute("style", "width: 0%")
    expect(busy).to_contain_text(re.compile(r"\b1/\d+"))
    expect(page.locator("#agent-rows tr").filter(has_text=session.reference)).to_have_count(0)


def test_a_viewer_sees_no_operator_buttons_and_a_forged_post_is_refused(page, browser_user, browser_db):
    operator, viewer = browser_user("operators"), browser_user("viewers")
    session = create_session(operator, "@@final nothing")
    request = permission_request_record(session_id=session.pk, task_id=None, opencode_session_id="ses_x",
                                        request={"id": "per_x", "permission": "bash", "patterns": ["make deploy"]})
    login(page, viewer, next_url="/approvals/")
    expect(page.locator(f"#approval-{request.pk}")).to_contain_text("make deploy")
    expect(page.locator(f"#approval-{request.pk}").get_by_role("button")).to_have_count(0)
    expect(page.get_by_role("link", name="New session")).to_have_count(0)

    csrf = next(cookie["value"] for cookie in page.context.cookies() if cookie["name"] == "csrftoken")
    forged = page.request.post(f"/approvals/{request.pk}/reply", form={"reply": "once"},
                               headers={"X-CSRFToken": csrf})
    assert forged.status == 403
    refused_create = page.request.post("/sessions/new", form={"title": "x"}, headers={"X-CSRFToken": csrf})
    assert refused_create.status == 403
    request.refresh_from_db()
    assert request.status == "pending"
    page.goto(f"/sessions/{session.pk}/")
    expect(page.locator("#session-header")).to_be_visible()
    expect(page.locator("#session-header button")).to_have_count(0)
    page.goto("/approvals/")
    expect(page.locator(f"#approval-{request.pk}")).to_be_visible()


def test_new_session_shows_errors_inline_then_creates_and_opens_the_monitor(page, browser_user, browser_db):
    operator = browser_user("operators")
    repository = new_repository()
    login(page, operator, next_url="/sessions/new")
    page.get_by_label("Title").fill("Untitled")
    page.get_by_label("Prompt").fill("@@final Nothing to do.")
    page.locator("select[name=repository_choice]").select_option(str(repository))
    page.get_by_label("Tasks at once").fill("2")
    page.get_by_label("Token budget, soft (pauses)").fill("900")
    page.get_by_label("Token budget, hard (stops)").fill("500")
    page.get_by_label("Start now").uncheck()
    page.get_by_role("button", name="Create session").click()

    expect(page.locator('[data-field="title"]')).to_contain_text("too generic")
    expect(page.locator('[data-field="token_budget_soft"]')).to_contain_text("must not exceed token_budget_hard")
    expect(page.locator("#new-session [role=alert]")).to_be_focused()
    assert not CodingSession.objects.exists()

    page.get_by_label("Title").fill("Tidy the changelog")
    page.get_by_label("Token budget, hard (stops)").fill("5000")
    page.get_by_label("Bash").select_option("ask")
    page.get_by_role("button", name="Create session").click()
    page.wait_for_url(re.compile(r"/sessions/\d+/$"))
    session = CodingSession.objects.get()
    expect(page.locator("#session-header")).to_contain_text(session.reference)
    assert (session.status, session.repository, session.metadata["task_concurrency"]) == (
        "pending", str(repository), 2)
    assert session.metadata["planning"]["task_concurrency"] == 2
    assert (session.token_budget_soft, session.token_budget_hard) == (900, 5000)
    assert session.permission_policy == {"bash": "ask"}
