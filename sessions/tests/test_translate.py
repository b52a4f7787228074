"""The translator on a real recorded OpenCode stream (write tool → bash tool → final text)."""

import json
from pathlib import Path

from sessions.execution.translate import TurnTranslator

SAMPLE = Path(__file__).parent / "data" / "recipe-events.sse"
SESSION = "ses_df503880cffeGpu52SEWrR0HTJ"


def recorded_stream():
    return [json.loads(line[6:]) for line in SAMPLE.read_text().splitlines() if line.startswith("data: ")]


def translate(events, session_id=SESSION):
    translator = TurnTranslator(session_id)
    records = [record for event in events for record in translator.feed(event)]
    return translator, records


def test_recorded_turn_becomes_tool_step_text_and_status_records():
    translator, records = translate(recorded_stream())
    assert [kind for kind, _ in records] == [
        "opencode.status",
        "tool.running", "file.edited", "tool.completed", "opencode.step",
        "tool.running", "tool.completed", "opencode.step",
        "assistant.text", "opencode.step",
        "opencode.status",
    ]
    assert translator.finished is True
    assert translator.error is None
    assert translator.final_text == "Done: notes/hello.txt and listing.txt."


def test_each_completed_step_is_counted_once_with_its_tokens():
    translator, records = translate(recorded_stream())
    assert len(translator.completed_steps) == 3
    assert {step.input for step in translator.completed_steps} == {100}
    assert sum(step.output for step in translator.completed_steps) == 60
    steps = [payload for kind, payload in records if kind == "opencode.step"]
    assert [step["finish"] for step in steps] == ["tool-calls", "tool-calls", "stop"]
    # The closing answer ran no tool: its checkpoint can be the previous step's (checkpointer.StepCheckpointer.take).
    assert [step.ran_tools for step in translator.completed_steps] == [True, True, False]


def test_tool_records_carry_input_and_output_summaries():
    _, records = translate(recorded_stream())
    bash_done = [p for kind, p in records if kind == "tool.completed" and p["tool"] == "bash"][0]
    assert "ls -1 notes > listing.txt" in bash_done["input"]
    assert bash_done["output"] == "(no output)"


def test_events_of_other_sessions_are_ignored():
    translator, records = translate(recorded_stream(), session_id="ses_someone_else")
    assert [kind for kind, _ in records] == ["file.edited"]  # file.edited carries no session id
    assert translator.finished is False


def test_provider_error_is_the_failure_signal():
    translator = TurnTranslator("ses_1")
    translator.feed({"type": "session.status", "properties": {"sessionID": "ses_1", "status": {"type": "busy"}}})
    retry = translator.feed({"type": "session.status", "properties": {
        "sessionID": "ses_1", "status": {"type": "retry", "attempt": 2, "message": "HTTP 500", "next": 4000}}})
    assert retry == [("opencode.status", {"status": "retry", "attempt": 2, "message": "HTTP 500", "next": 4000})]
    assert translator.retry["attempt"] == 2
    error = translator.feed(
        {
            "type": "session.error",
            "properties": {
                "sessionID": "ses_1",
                "error": {"name": "APIError", "data": {"message": "Internal error", "isRetryable": True}},
            },
        }
    )
    assert error == [("opencode.error", {"name": "APIError", "message": "Internal error"})]
    translator.feed({"type": "session.idle", "properties": {"sessionID": "ses_1"}})
    assert translator.finished and translator.error["data"]["isRetryable"] is True
    assert translator.aborted is False


def test_abort_keeps_partial_text():
    translator = TurnTranslator("ses_1")
    translator.feed({"type": "session.status", "properties": {"sessionID": "ses_1", "status": {"type": "busy"}}})
    translator.feed({"type": "message.part.updated", "properties": {"sessionID": "ses_1", "part": {
        "id": "prt_1", "messageID": "msg_1", "sessionID": "ses_1", "type": "text", "text": "half an ans"}}})
    translator.feed({"type": "session.error", "properties": {
        "sessionID": "ses_1", "error": {"name": "MessageAbortedError", "data": {"message": "Aborted"}}}})
    records = translator.feed({"type": "session.idle", "properties": {"sessionID": "ses_1"}})
    assert translator.aborted
    assert records == [("assistant.text", {"message_id": "msg_1", "text": "half an ans"})]


def test_permission_requests_are_recorded_and_kept():
    translator = TurnTranslator("ses_1")
    asked = translator.feed({"type": "permission.asked", "properties": {
        "id": "per_1", "sessionID": "ses_1", "permission": "bash", "patterns": ["rm -rf build"], "metadata": {}}})
    assert asked[0][0] == "permission.asked"
    assert translator.permission_requests[0]["id"] == "per_1"
    replied = translator.feed({"type": "permission.replied", "properties": {
        "sessionID": "ses_1", "requestID": "per_1", "reply": "once"}})
    assert replied == [("permission.replied", {"id": "per_1", "reply": "once"})]


def test_the_event_types_a_task_subscribes_to_are_the_ones_the_translator_handles():
    from sessions.execution.translate import TURN_EVENT_TYPES, TurnTranslator

    handled = {name[len("_on_"):].replace("_", ".") for name in dir(TurnTranslator) if name.startswith("_on_")}
    assert TURN_EVENT_TYPES == handled
