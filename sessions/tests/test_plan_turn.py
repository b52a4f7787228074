"""A planning turn on the real OpenCode binary: its read-only `plan` agent, the scripted LLM answering
with `@@plan`, and the answer read and checked by tasks.plans. No database is used.

The server and the scripted LLM are stopped at the end (by PID, through OpenCodeServer.stop)."""

import json
import subprocess

import pytest
from django.conf import settings

from sessions.opencode.scripted_llm import opencode_config
from sessions.opencode.server import OpenCodeServer
from tasks.planner import planner_prompt
from tasks.plans import check_answer

pytestmark = pytest.mark.opencode

PLAN = {
    "summary": "Two independent files, then a check that reads both.",
    "tasks": [
        {"key": "models", "title": "Models", "prompt": "Write books/models.py", "capabilities": ["code_generation"],
         "files": ["books/models.py"], "estimate_hours": {"optimistic": 0.5, "likely": 1, "pessimistic": 2}},
        {"key": "migrations", "title": "Migrations", "prompt": "Write the migrations",
         "capabilities": ["code_generation"], "files": ["books/"],
         "estimate_hours": {"optimistic": 0.5, "likely": 1, "pessimistic": 2}},
    ],
}


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def server(scripted_llm, tmp_path_factory):
    repo = tmp_path_factory.mktemp("plan-repo")
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "README.md").write_text("# books\n")
    git("add", ".", cwd=repo)
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "init", cwd=repo)
    managed = OpenCodeServer(
        workdir=repo, state_dir=tmp_path_factory.mktemp("plan-state"), binary=settings.OPENCODE_BIN,
        config=opencode_config(scripted_llm.base_url), startup_timeout=60, request_timeout=15,
    )
    managed.start()
    yield managed, repo
    managed.stop()


def test_the_plan_agent_answers_a_planning_turn_with_a_checkable_plan(server, scripted_llm):
    managed, repo = server
    client = managed.client(repo)
    assert "plan" in [agent["name"] for agent in client.agents()]
    session = client.create_session(title="planning")
    prompt = planner_prompt(title="Books", work=f"Add books.\n@@plan {json.dumps(PLAN)}", files=["README.md"])

    answer = client.prompt(session["id"], text=prompt, agent="plan", timeout=60)

    assert answer["info"]["role"] == "assistant" and answer["info"]["agent"] == "plan"
    text = "".join(part["text"] for part in answer["parts"] if part["type"] == "text")
    checked = check_answer(text, repository=repo)
    assert checked.ok, checked.findings
    assert [task.key for task in checked.tasks] == ["models", "migrations"]
    # The two tasks own overlapping files: ordered, reported as an adjustment.
    assert [(a.tasks) for a in checked.adjustments] == [("models", "migrations")]
    directives = [entry["directive"] or "" for entry in scripted_llm.requests_for(session["id"])]
    assert any(directive.startswith("@@plan") for directive in directives)
