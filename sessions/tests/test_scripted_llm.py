"""The scripted LLM speaks the OpenAI chat-completions protocol OpenCode uses (plain httpx here)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.testing import wait_until
from sessions.opencode.scripted_llm import (
    DEMO_ANSWER,
    ScriptedLLM,
    ScriptError,
    opencode_config,
    parse_script,
    step_index,
    unescape,
)

TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
         for name in ("bash", "write")]
SCRIPT = (
    "Make a file.\n@@text Working on it\n@@write notes/hello.txt Hello\\nworld\n@@bash ls -1 notes\n@@final All done."
)


@pytest.fixture(scope="module")
def llm(scripted_llm):
    return scripted_llm


def chat(llm, messages, *, stream=True, tools=TOOLS, include_usage=True, headers=None):
    body = {"model": "scripted-model", "messages": messages, "stream": stream, "tool_choice": "auto"}
    if tools:
        body["tools"] = tools
    if stream and include_usage:
        body["stream_options"] = {"include_usage": True}
    return httpx.post(llm.base_url + "/chat/completions", json=body, headers=headers or {}, timeout=10)


def sse_payloads(response):
    """The `data:` payloads of an SSE body, in order ("[DONE]" kept as a string)."""
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [frame for frame in response.text.split("\n\n") if frame.strip()]
    payloads = []
    for frame in frames:
        assert frame.startswith("data: "), frame
        data = frame[len("data: "):]
        payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def conversation(prompt, tool_results=0):
    messages = [{"role": "system", "content": "You are opencode."}, {"role": "user", "content": prompt}]
    for number in range(tool_results):
        call_id = f"call_{number}"
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "bash", "arguments": "{}"}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": "ok"})
    return messages


def tool_call_of(payloads):
    calls = [call for payload in payloads if payload != "[DONE]" and payload["choices"]
             for call in payload["choices"][0]["delta"].get("tool_calls", [])]
    head = calls[0]
    arguments = "".join(call["function"].get("arguments", "") for call in calls)
    return head, json.loads(arguments)


def test_stream_of_a_write_step_frames_text_tool_call_usage_and_done(llm):
    payloads = sse_payloads(chat(llm, conversation(SCRIPT)))

    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text == "Working on it"
    assert sum(1 for chunk in chunks if chunk["choices"] and chunk["choices"][0]["delta"].get("content")) == 3
    head, arguments = tool_call_of(payloads)
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"]["name"] == "write"
    assert arguments == {"filePath": "notes/hello.txt", "content": "Hello\nworld"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}


def test_usage_chunk_is_sent_only_when_asked_for(llm):
    payloads = sse_payloads(chat(llm, conversation(SCRIPT), include_usage=False))

    assert not any("usage" in payload for payload in payloads if payload != "[DONE]")
    assert payloads[-1] == "[DONE]"


def test_step_is_the_number_of_tool_results_after_the_last_user_message(llm):
    bash = sse_payloads(chat(llm, conversation(SCRIPT, tool_results=1)))
    head, arguments = tool_call_of(bash)
    assert head["function"]["name"] == "bash"
    assert arguments == {"command": "ls -1 notes", "description": "scripted bash step"}

    final = sse_payloads(chat(llm, conversation(SCRIPT, tool_results=2)))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in final[:-1] if c["choices"])
    assert text == "All done."
    assert final[-3]["choices"][0]["finish_reason"] == "stop"

    earlier_turn = conversation(SCRIPT, tool_results=2) + [{"role": "assistant", "content": "All done."},
                                                           {"role": "user", "content": SCRIPT}]
    assert step_index(earlier_turn) == 0
    head, _ = tool_call_of(sse_payloads(chat(llm, earlier_turn)))
    assert head["function"]["name"] == "write"


def test_steps_past_the_script_answer_done(llm):
    payloads = sse_payloads(chat(llm, conversation("@@bash true", tool_results=1)))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in payloads[:-1] if c["choices"])
    assert text == "Done."


def test_non_streaming_answer_carries_tool_call_and_usage_directive(llm):
    response = chat(llm, conversation("@@usage 1234 56\n@@bash echo hi"), stream=False)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0]["function"]["name"] == "bash"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"])["command"] == "echo hi"
    assert body["usage"] == {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290}


def test_fail_with_times_fails_that_many_requests_then_continues(llm):
    prompt = "@@fail 500 times=2\n@@write a.txt x"
    headers = {"x-session-id": "ses_fail_times"}
    statuses = [chat(llm, conversation(prompt), headers=headers) for _ in range(3)]

    assert [response.status_code for response in statuses] == [500, 500, 200]
    error = statuses[0].json()["error"]
    assert error["type"] == "server_error" and "scripted failure 500" in error["message"]
    head, _ = tool_call_of(sse_payloads(statuses[2]))
    assert head["function"]["name"] == "write"
    kinds = [entry["kind"] for entry in llm.requests_for("ses_fail_times")]
    assert kinds == ["fail", "fail", "write"]


def test_fail_without_times_always_fails(llm):
    for _ in range(2):
        response = chat(llm, conversation("@@fail 400"), headers={"x-session-id": "ses_fail_400"})
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_request_without_tools_is_answered_with_a_short_title(llm):
    response = chat(llm, conversation("Refactor the parser please\n@@final ok"), tools=None, stream=False)

    assert response.json()["choices"][0]["message"]["content"] == "Refactor the parser please"
    assert llm.requests[-1]["kind"] == "title"


def test_prompt_without_directives_gets_the_demo_answer(llm):
    body = chat(llm, conversation("Hello there"), stream=False).json()

    assert body["choices"][0]["message"]["content"] == DEMO_ANSWER
    assert body["choices"][0]["finish_reason"] == "stop"


def test_sleep_delays_the_response(llm):
    started = time.monotonic()
    response = chat(llm, conversation("@@sleep 0.4\n@@final late"), stream=False)

    assert time.monotonic() - started >= 0.4
    assert response.json()["choices"][0]["message"]["content"] == "late"


def test_request_that_hangs_up_while_sleeping_is_abandoned(llm):
    headers = {"x-session-id": "ses_hangup"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(llm.base_url + "/chat/completions", headers=headers, timeout=0.3, json={
            "model": "scripted-model", "stream": True, "tools": TOOLS,
            "messages": conversation("@@sleep 30\n@@final never"),
        })

    wait_until(lambda: any(entry["key"] == "ses_hangup" for entry in llm.abandoned), timeout=5,
               message="the sleeping request to be abandoned")


def test_key_is_the_opencode_session_header_else_a_hash_of_the_first_user_message(llm):
    chat(llm, conversation("@@final a"), headers={"x-session-id": "ses_keyed"})
    chat(llm, conversation("@@final b"))
    chat(llm, conversation("@@final b"))

    assert llm.requests_for("ses_keyed")[0]["step"] == 0
    hashed = [
        entry for entry in llm.requests if entry["key"] not in ("ses_keyed",) and entry["directive"] == "@@final b"
    ]
    assert len(hashed) == 2 and hashed[0]["key"] == hashed[1]["key"]


def test_models_lists_the_scripted_model(llm):
    body = httpx.get(llm.base_url + "/models", timeout=5).json()

    assert [model["id"] for model in body["data"]] == ["scripted-model"]


def test_malformed_request_is_a_400_with_an_openai_error(llm):
    response = httpx.post(llm.base_url + "/chat/completions", content=b"{not json", timeout=5)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_directive_argument_is_answered_400(llm):
    response = chat(llm, conversation("@@sleep soon\n@@final x"), stream=False)

    assert response.status_code == 400
    assert "@@sleep needs seconds" in response.json()["error"]["message"]


def test_log_file_gets_one_json_line_per_request(tmp_path):
    log = tmp_path / "llm.jsonl"
    with ScriptedLLM(log_path=log) as server:
        chat(server, conversation("@@write a.txt x"), headers={"x-session-id": "ses_log"})
        chat(server, conversation("@@write a.txt x", tool_results=1), headers={"x-session-id": "ses_log"})

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["key"], line["step"], line["kind"]) for line in lines] == [
        ("ses_log", 0, "write"), ("ses_log", 1, "final")]
    assert lines[0]["directive"] == "@@write a.txt x"
    assert isinstance(lines[0]["time"], float)


def test_runs_as_a_program_until_sigterm(tmp_path):
    log = tmp_path / "program.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "sessions.opencode.scripted_llm", "--port", "0", "--log", str(log)],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("scripted llm listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        response = httpx.post(url + "/v1/chat/completions", timeout=5, json={
            "model": "scripted-model", "messages": conversation("@@final hi"), "tools": TOOLS})
        assert response.json()["choices"][0]["message"]["content"] == "hi"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert json.loads(log.read_text())["kind"] == "final"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)


def test_parse_script_attaches_modifiers_to_the_following_step():
    steps = parse_script("intro\n@@sleep 1.5\n@@fail 503 times=1\n@@text a\\tb\n@@bash make\n@@usage 7 8\n@@final ok")

    assert [step.kind for step in steps] == ["bash", "final"]
    assert (steps[0].sleep, steps[0].fail_status, steps[0].fail_times, steps[0].text) == (1.5, 503, 1, "a\tb")
    assert steps[1].usage == (7, 8) and steps[1].fail_status is None


def test_trailing_modifiers_make_a_last_step_and_no_directives_make_none():
    assert [step.kind for step in parse_script("@@write a b\n@@fail 500")] == ["write", "final"]
    assert parse_script("just words\n@@unknown thing") == []


def test_bad_directives_are_refused():
    for script in ("@@fail abc", "@@fail 200", "@@usage 1", "@@write", "@@bash"):
        with pytest.raises(ScriptError):
            parse_script(script)


def test_unescape_turns_escapes_into_characters():
    assert unescape("a\\nb\\tc\\\\n\\x") == "a\nb\tc\\n\\x"


def test_opencode_config_declares_the_scripted_provider_as_the_only_model():
    config = opencode_config("http://127.0.0.1:9/v1", permission={"bash": "ask"}, cost=(1.0, 2.0))

    provider = config["provider"]["scripted"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == "http://127.0.0.1:9/v1"
    assert "demo" in provider["name"].lower()
    model = provider["models"]["scripted-model"]
    assert model["tool_call"] is True and model["cost"] == {"input": 1.0, "output": 2.0}
    assert config["model"] == config["small_model"] == "scripted/scripted-model"
    assert config["enabled_providers"] == ["scripted"]
    assert (config["share"], config["autoupdate"], config["lsp"], config["formatter"]) == (
        "disabled",
        False,
        False,
        False,
    )
    assert config["permission"] == {"bash": "ask"}
    assert json.loads(json.dumps(config)) == config


def test_a_plain_follow_up_message_continues_the_script():
    from sessions.opencode.scripted_llm import script_position

    messages = [
        {"role": "user", "content": "@@write a.txt A\n@@write b.txt B\n@@final done"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": "interrupted"},
        {"role": "user", "content": [{"type": "text", "text": "Continue where you stopped."},
                                     {"type": "text", "text": "<system-reminder>x</system-reminder>"}]},
    ]
    script, index = script_position(messages)
    assert "@@write b.txt B" in script
    assert index == 1


def test_resume_count_skips_steps_already_done():
    from sessions.opencode.scripted_llm import script_position

    messages = [{"role": "user", "content": "@@write a.txt A\n@@bash ls\n@@final done\n@@resume 2"}]
    assert script_position(messages)[1] == 2
    messages += [{"role": "assistant", "content": ""}, {"role": "tool", "content": "ok"}]
    assert script_position(messages)[1] == 3
    assert script_position([{"role": "user", "content": "no directives here"}]) == ("", 0)


# --- planning turns (@@plan) ------------------------------------------------------------------

PLAN_A = {"summary": "one", "tasks": [{"key": "a", "title": "A", "prompt": "do a", "capabilities": [],
                                       "files": ["a.py"], "estimate_hours": {"optimistic": 1, "likely": 1,
                                                                             "pessimistic": 1}}]}
PLAN_B = {**PLAN_A, "summary": "two"}


def final_text(payloads):
    return "".join(payload["choices"][0]["delta"].get("content") or "" for payload in payloads
                   if payload != "[DONE]" and payload["choices"])


def test_a_planning_turn_is_answered_with_the_plan_in_a_json_fence(llm):
    from tasks.planner import planner_prompt
    from tasks.plans import check_answer

    work = f"Plan the work.\n@@plan {json.dumps(PLAN_A)}\n@@plan {json.dumps(PLAN_B)}"
    first = planner_prompt(title="Plan", work=work, files=["a.py"])
    text = final_text(sse_payloads(chat(llm, conversation(first))))
    assert "```json" in text
    checked = check_answer(text)
    assert checked.ok and checked.summary == "one" and [t.key for t in checked.tasks] == ["a"]
    # The second planning turn (a repair, a revision, a replan) gets the next @@plan.
    second = planner_prompt(title="Plan", work=work, files=["a.py"], turn=2, comment="again")
    assert check_answer(final_text(sse_payloads(chat(llm, conversation(second))))).summary == "two"


def test_a_plan_directive_without_json_is_a_script_error():
    with pytest.raises(ScriptError):
        parse_script("@@plan {not json")
    (step,) = parse_script('@@plan {"tasks": []}')
    assert step.kind == "final" and step.directive.startswith("@@plan")
