"""Browser tests on the real stack: fixtures for Chromium driven by Playwright.

Loaded as a pytest plugin by the root conftest.py, so any test module marked `browser` can ask
for these fixtures; per module:

- `browser_llm`: the project's scripted LLM, in this process (its request log is readable here);
- `browser_worker`: a real Celery worker (threads pool) told the LLM's URL; it starts its own
  OpenCode server on its first session;
- `web_server`: daphne (HTTP + WebSocket) on a free port, on the test database and the same
  broker and channel layer as the worker;
- `chromium`: Debian's Chromium (/usr/bin/chromium), headless, launched by Playwright; Playwright's
  own browser downloads are never used;

and per test `page` (a fresh browser context: no cookies shared between tests), whose final
state is saved as a screenshot under <ORCHESTRATOR_VAR_DIR>/test/screenshots/<test name>.png,
and `login(page, user)`. Accounts come from `browser_user(role)`: a password hashed with the
server's own hashers, so the web process can check it.

The `browser` marker skips a test with the reason when Chromium or Playwright is missing (and
fails it when ORCHESTRATOR_REQUIRE_SERVICES=1, see the root conftest.py).
"""

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from orchestrator.testing import (
    BASE_DIR,
    free_port,
    make_git_repository,
    running_worker,
    stop_process,
    subprocess_env,
    wait_for_idle_worker,
    wait_until,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
PASSWORD = "correct horse battery staple"
VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen
EXPECT_TIMEOUT_MS = 90_000


def screenshots_dir() -> Path:
    folder = Path(settings.VAR_DIR) / "test" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def browser_missing() -> str | None:
    """Why browser tests cannot run here, or None."""
    if not CHROMIUM.is_file():
        return f"needs Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401  (only whether it imports)
    except ImportError:
        return "needs Playwright for Python (pip install playwright; the browser is Debian's, never downloaded)"
    return None


@pytest.fixture(scope="module")
def browser_llm():
    from sessions.opencode.scripted_llm import ScriptedLLM

    llm = ScriptedLLM()
    llm.start()
    yield llm
    llm.stop()


@pytest.fixture(scope="module")
def browser_worker(django_db_setup, django_db_blocker, browser_llm):
    env = {"OPENCODE_SCRIPTED_LLM_URL": browser_llm.base_url, "PERMISSION_TIMEOUT_SECONDS": 600}
    with running_worker(concurrency=4, env=env) as process:
        yield process


@pytest.fixture(scope="module")
def web_server(django_db_setup, django_db_blocker):
    """daphne serving the console on the test database; its URL (stopped by PID at the end)."""
    import httpx

    port = free_port()
    log_path = Path(settings.VAR_DIR) / f"web-{os.getpid()}-{time.time_ns()}.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "orchestrator.asgi:application"],
        cwd=BASE_DIR, env=subprocess_env(PERMISSION_TIMEOUT_SECONDS=600), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answering():
        if process.poll() is not None:
            return True
        try:
            return httpx.get(url + "/login/", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answering, timeout=60, interval=0.1, message="daphne to answer")
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited early:\n{log_path.read_text(errors='replace')[-3000:]}")
        process.url, process.log_path = url, log_path
        yield process
    finally:
        stop_process(process)
        log.close()


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module (Debian's binary, never a download)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps its event loop registered on this thread between calls, which
    # Django takes for async code and refuses ORM calls; the test's own code is plain sync code.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def browser_db(request, transactional_db):
    """Committed rows (the web server and the worker are other processes); the default roster."""
    from agents.models import Agent
    from agents.roster import DEFAULT_ROSTER
    from agents.services import agent_register

    for entry in DEFAULT_ROSTER:
        if not Agent.objects.filter(name=entry["name"]).exists():
            agent_register(**entry)


@pytest.fixture
def idle_worker_at_end(request):
    """The worker finishes its jobs before the test database is flushed (see sessions/tests/conftest.py:
    a job writing while PostgreSQL truncates the tables deadlocks). The database is set up inside
    this fixture so that its flush comes after the wait."""
    worker = request.getfixturevalue("browser_worker")
    request.getfixturevalue("browser_db")
    yield worker
    wait_for_idle_worker(worker)


@pytest.fixture
def page(request, chromium, web_server):
    """A page in a fresh browser context; its final state is saved as a screenshot."""
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    context = chromium.new_context(base_url=web_server.url, viewport=VIEWPORT)
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    browser_page = context.new_page()
    console_errors = []
    browser_page.on("pageerror", lambda error: console_errors.append(str(error)))
    browser_page.console_errors = console_errors
    try:
        yield browser_page
    finally:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            browser_page.screenshot(path=str(screenshots_dir() / f"{name}.png"), full_page=True)
        finally:
            context.close()


@pytest.fixture
def browser_user(browser_db):
    """make(role) -> a user in that role ("operators" or "viewers"), password PASSWORD."""
    from django.contrib.auth.models import Group, User

    def make(role):
        user = User.objects.create_user(f"{role[:-1]}-{uuid.uuid4().hex[:6]}", password=PASSWORD)
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        return user

    return make


def login(page, user, *, next_url="/"):
    """Sign in through the login form, as a person would; lands on `next_url`."""
    page.goto(f"/login/?next={next_url}")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(next_url) + r"$"))


def wait_live(page):
    """Wait until the page's live feed says it is connected."""
    from playwright.sync_api import expect

    expect(page.locator(".live-state").first).to_have_text("live")


def new_repository():
    return make_git_repository(settings.REPOSITORY_ROOTS[0] / f"browser-{uuid.uuid4().hex[:8]}")
