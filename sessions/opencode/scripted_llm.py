"""A scripted OpenAI-compatible LLM server: the model side for tests, benchmarks and the demo model.

Longer than most modules on purpose: the server, its wire format and every directive the demo
model and the tests use are kept in one place, so a prompt's `@@` lines can be read next to the code
that answers them.

It speaks the chat-completions protocol OpenCode's `@ai-sdk/openai-compatible` provider uses
(`POST /v1/chat/completions`, streamed as SSE chunks or as one JSON body; `GET /v1/models`) and
decides each answer from directives in the latest user message, one per line, prefixed `@@`:

    @@write <path> <content>    tool call `write` {filePath, content}; `\\n`, `\\t`, `\\\\` in content are unescaped
    @@bash <command>            tool call `bash` {command, description}
    @@final <text>              plain answer: ends the turn
    @@plan <json>               a planning turn's answer: the JSON object (one line) in a ```json fence,
                                as tasks.plans expects from a planner; ends the turn. Several in a row
                                answer successive planning turns (the orchestrator's planner prompt
                                says `@@resume n` after n earlier turns: repair, revision, replan)
    @@text <text>               text streamed before the next step (in the same response)
    @@sleep <seconds>           delay before the next step's response
    @@wait <path> [seconds]     hold the next step's response until the file <path> exists (at most
                                `seconds`, default 60, then answer anyway): a test decides when the
                                model goes on, without guessing a delay
    @@usage <input> <output>    token figures reported from the next step on
    @@fail <status> [times=N]   answer the next step with that HTTP status and an OpenAI-style error
                                body; with times=N only the first N requests of that step fail

    @@resume <n>                the first n steps are already done (an orchestrator resuming the task in
                                a new conversation says so); the script continues at step n

The script is read from the latest user message that has directives, so a later plain message
("continue") carries on where the script stopped: the step is the number of tool results since
that message (plus any @@resume count). `write`, `bash` and `final` each close a step; `text`,
`sleep`, `wait`, `usage` and `fail` modify the step that follows them (trailing modifiers make a last
step that answers "Done."). The server is
stateless apart from the `times=` counters: the step of a request is the number of tool results
that follow the last user message, so each request maps to exactly one step, and a retried request
maps to the same step again. A request without tools (OpenCode's title generation) is answered with
a short title; a prompt without directives gets a short plain answer saying this is the demo model.

Every request is logged (in memory, and as JSON lines when a log path is given) with its time,
conversation key, step index and directive, so tests can assert "each step once" or "no request
after abort". The conversation key is OpenCode's session id (sent as the `x-session-id` header),
or, for clients that send none, a hash of the first user message.

Run it standalone with `python -m sessions.opencode.scripted_llm --port 0 --log FILE`; it prints
`scripted llm listening on http://127.0.0.1:<port>` and serves until SIGTERM. In-process:
`ScriptedLLM().start()` returns the base URL (ending in `/v1`) and `stop()` ends it.
"""

import argparse
import hashlib
import json
import re
import select
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROVIDER_ID = "scripted"
MODEL_ID = "scripted-model"
DEMO_LABEL = "Scripted demo model (not a real LLM)"
DEFAULT_USAGE = (100, 20)
DEFAULT_FINAL = "Done."
DEMO_ANSWER = (
    "This is the scripted demo model, not a real LLM: it follows @@ directives in the prompt "
    "(@@write, @@bash, @@final, ...). Configure a real provider to do real work."
)
DEFAULT_PERMISSION = {"edit": "allow", "bash": "allow", "webfetch": "deny"}

ACTIONS = ("write", "bash", "final", "plan")
PLAN_PREAMBLE = "Here is the plan."
MODIFIERS = ("text", "sleep", "wait", "usage", "fail")
WAIT_DEFAULT = 60.0
WAIT_MAX = 600.0


class ScriptError(ValueError):
    """A directive that cannot be understood."""


@dataclass
class Step:
    """One model response: an action, plus what the modifiers before it asked for."""

    kind: str  # "write", "bash", "final"
    directive: str
    arguments: dict = field(default_factory=dict)
    text: str = ""
    sleep: float = 0.0
    wait_for: tuple | None = None  # (path, seconds) from @@wait
    usage: tuple | None = None
    fail_status: int | None = None
    fail_times: int | None = None


def unescape(value):
    """Turn the two-character escapes `\\n`, `\\t` and `\\\\` into the characters they name."""
    out = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            following = value[index + 1]
            if following in "nt\\":
                out.append({"n": "\n", "t": "\t", "\\": "\\"}[following])
                index += 2
                continue
        out.append(char)
        index += 1
    return "".join(out)


def parse_script(text):
    """The steps scripted by the `@@` lines of `text` (empty when there are none)."""
    steps = []
    pending = {"text": [], "sleep": 0.0, "wait": None, "usage": None, "fail": None}
    usage = None
    found = False
    for raw_line in (text or "").splitlines():
        line = raw_line.strip()
        if not line.startswith("@@"):
            continue
        name, _, rest = line[2:].partition(" ")
        name = name.strip().lower()
        rest = rest.strip()
        if name not in ACTIONS and name not in MODIFIERS:
            continue
        found = True
        if name == "text":
            pending["text"].append(unescape(rest))
        elif name == "sleep":
            try:
                pending["sleep"] += float(rest)
            except ValueError as error:
                raise ScriptError(f"@@sleep needs seconds, got {rest!r}") from error
        elif name == "wait":
            pending["wait"] = _parse_wait(rest)
        elif name == "usage":
            try:
                input_tokens, output_tokens = (int(part) for part in rest.split())
            except ValueError as error:
                raise ScriptError(f"@@usage needs two integers, got {rest!r}") from error
            usage = (input_tokens, output_tokens)
        elif name == "fail":
            pending["fail"] = _parse_fail(rest)
        else:
            steps.append(_make_step(name, rest, line, pending, usage))
            pending = {"text": [], "sleep": 0.0, "wait": None, "usage": None, "fail": None}
    if pending["text"] or pending["sleep"] or pending["wait"] or pending["fail"]:
        steps.append(_make_step("final", DEFAULT_FINAL, "@@final " + DEFAULT_FINAL, pending, usage))
    if not found:
        return []
    return steps


def _parse_wait(rest):
    parts = rest.split()
    if not parts or len(parts) > 2:
        raise ScriptError(f"@@wait needs a path and optional seconds, got {rest!r}")
    seconds = WAIT_DEFAULT
    if len(parts) == 2:
        try:
            seconds = float(parts[1])
        except ValueError as error:
            raise ScriptError(f"@@wait seconds must be a number, got {parts[1]!r}") from error
        if not 0 < seconds <= WAIT_MAX:
            raise ScriptError(f"@@wait seconds must be in (0, {WAIT_MAX:.0f}], got {seconds}")
    return (parts[0], seconds)


def _parse_fail(rest):
    parts = rest.split()
    if not parts:
        raise ScriptError("@@fail needs an HTTP status")
    try:
        status = int(parts[0])
    except ValueError as error:
        raise ScriptError(f"@@fail needs an HTTP status, got {parts[0]!r}") from error
    times = None
    for part in parts[1:]:
        if part.startswith("times="):
            try:
                times = int(part.removeprefix("times="))
            except ValueError as error:
                raise ScriptError(f"@@fail times= needs an integer, got {part!r}") from error
    if not 400 <= status <= 599:
        raise ScriptError(f"@@fail needs a 4xx or 5xx status, got {status}")
    return status, times


def _make_step(kind, rest, line, pending, usage):
    if kind == "write":
        path, _, content = rest.partition(" ")
        if not path:
            raise ScriptError("@@write needs a path")
        arguments = {"filePath": path, "content": unescape(content)}
    elif kind == "bash":
        if not rest:
            raise ScriptError("@@bash needs a command")
        arguments = {"command": rest, "description": "scripted bash step"}
    elif kind == "plan":
        try:
            plan = json.loads(rest)
        except ValueError as error:
            raise ScriptError(f"@@plan needs a JSON value on its line: {error}") from error
        # A final answer, as a planner gives it: the plan in a json fence after a sentence.
        kind = "final"
        arguments = {"text": f"{PLAN_PREAMBLE}\n\n```json\n{json.dumps(plan, indent=2)}\n```"}
    else:
        arguments = {"text": unescape(rest) or DEFAULT_FINAL}
    fail_status, fail_times = pending["fail"] or (None, None)
    return Step(
        kind=kind, directive=line, arguments=arguments, text="".join(pending["text"]),
        sleep=pending["sleep"], wait_for=pending["wait"], usage=usage, fail_status=fail_status, fail_times=fail_times,
    )


def message_text(message):
    """The text of a chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Parts are separate blocks (OpenCode adds a <system-reminder> part after the prompt):
        # gluing them would append the reminder to the prompt's last directive.
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def conversation_key(messages, session_id=None):
    """A stable key of a conversation: OpenCode's session id (its `x-session-id` header) when it
    sends one, else a short hash of the first user message."""
    if session_id:
        return session_id
    for message in messages:
        if message.get("role") == "user":
            return hashlib.sha256(message_text(message).encode()).hexdigest()[:16]
    return "none"


SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?(</system-reminder>|$)", re.DOTALL)


RESUME = re.compile(r"^\s*@@resume\s+(\d+)\s*$", re.MULTILINE)


def has_directives(text):
    """Whether `text` has a directive line (checked without parsing, so errors surface later)."""
    for line in text.splitlines():
        name = line.strip()[2:].partition(" ")[0].lower() if line.strip().startswith("@@") else ""
        if name in ACTIONS or name in MODIFIERS or name == "resume":
            return True
    return False


def script_position(messages):
    """(script text, step index): the latest user message with directives, and how far it has got.

    The step is the number of tool results after that message plus its `@@resume n`, so a plain
    follow-up message ("continue") resumes the script instead of starting a new one.
    """
    for position in range(len(messages) - 1, -1, -1):
        message = messages[position]
        if message.get("role") != "user":
            continue
        text = SYSTEM_REMINDER.sub("", message_text(message))
        if not has_directives(text):
            continue
        resumed = sum(int(count) for count in RESUME.findall(text))
        done = sum(1 for later in messages[position + 1:] if later.get("role") == "tool")
        return text, resumed + done
    return "", 0


def step_index(messages):
    """How many tool results follow the last user message: the step this request asks for."""
    last_user = None
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            last_user = index
    if last_user is None:
        return 0
    return sum(1 for message in messages[last_user + 1:] if message.get("role") == "tool")


def last_user_text(messages):
    """The latest user message as the user wrote it, without OpenCode's system reminders."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return SYSTEM_REMINDER.sub("", message_text(message))
    return ""


def title_for(messages):
    """A short title: the first words of the first line of the prompt that is not a directive."""
    for line in last_user_text(messages).splitlines():
        line = line.strip()
        if line and not line.startswith("@@"):
            words = line.split()[:6]
            return " ".join(words)[:60]
    return "Scripted session"


class _Handler(BaseHTTPRequestHandler):
    server_version = "ScriptedLLM/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class names it so
        return

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._send_json(200, {
                "object": "list",
                "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": PROVIDER_ID}],
            })
        elif path in ("", "/health"):
            self._send_json(200, {"ok": True, "model": MODEL_ID})
        else:
            self._send_error(404, f"unknown path {self.path}", "not_found_error")

    def do_POST(self):  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._send_error(404, f"unknown path {self.path}", "not_found_error")
            return
        try:
            body = json.loads(raw or b"{}")
            messages = body["messages"]
            if not isinstance(messages, list):
                raise TypeError("messages must be a list")
        except (ValueError, KeyError, TypeError) as error:
            self._send_error(400, f"malformed request: {error}", "invalid_request_error")
            return
        llm = self.server.llm
        llm._enter()
        try:
            llm._answer(self, body, messages, session_id=self.headers.get("x-session-id"))
        finally:
            llm._leave()

    def _send_json(self, status, payload, *, close=False):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status, message, error_type):
        self._send_json(status, {"error": {"message": message, "type": error_type, "param": None, "code": None}})


class ScriptedLLM:
    """The scripted LLM server, in-process: `start()` returns its base URL, `stop()` ends it.

    `requests` holds the request log (a list of dicts); `log_path` also appends them as JSON lines.
    `abandoned` lists the requests whose client hung up while they slept (aborted turns);
    `in_flight` counts chat requests being answered.
    `chunk_delay` spaces streamed chunks (seconds), to make deltas observable.
    """

    def __init__(self, *, host="127.0.0.1", port=0, log_path=None, chunk_delay=0.0):
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.chunk_delay = chunk_delay
        self.requests = []
        self.abandoned = []
        self.in_flight = 0
        self._lock = threading.Lock()
        self._fail_counts = {}
        self._stopping = threading.Event()
        self._httpd = None
        self._thread = None

    @property
    def url(self):
        """The server's root URL (`http://127.0.0.1:<port>`)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self):
        """The OpenAI-style base URL to configure a provider with (`.../v1`)."""
        return self.url + "/v1"

    def start(self):
        """Bind and serve in a daemon thread; return the base URL (ending in `/v1`)."""
        self._bind()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-llm", daemon=True)
        self._thread.start()
        return self.base_url

    def serve_forever(self):
        """Bind and serve in the calling thread until `stop()` (or SIGTERM when run as a program)."""
        self._bind()
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def _bind(self):
        self._stopping.clear()
        self._httpd = ThreadingHTTPServer((self.host, self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.llm = self
        self.port = self._httpd.server_address[1]

    def stop(self):
        """Stop serving; requests still sleeping are woken and dropped."""
        self._stopping.set()
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def requests_for(self, key):
        with self._lock:
            return [entry for entry in self.requests if entry["key"] == key]

    def clear(self):
        with self._lock:
            self.requests.clear()
            self.abandoned.clear()
            self._fail_counts.clear()

    def _record(self, entry):
        with self._lock:
            self.requests.append(entry)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as log:
                    log.write(json.dumps(entry) + "\n")

    def _answer(self, handler, body, messages, *, session_id=None):
        key = conversation_key(messages, session_id)
        script, index = script_position(messages)
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        entry = {
            "time": time.time(), "key": key, "step": index, "stream": stream,
            "model": body.get("model"), "tools": len(body.get("tools") or []),
            "prompt": last_user_text(messages)[:4000],
            "system": "\n".join(message_text(m) for m in messages if m.get("role") == "system")[:4000],
        }
        if not body.get("tools"):
            self._record({**entry, "kind": "title", "directive": None})
            self._respond(handler, body, stream, include_usage, text=title_for(messages),
                          tool_call=None, usage=DEFAULT_USAGE)
            return
        try:
            steps = parse_script(script)
        except ScriptError as error:
            self._record({**entry, "kind": "script-error", "directive": str(error)})
            handler._send_error(400, f"scripted llm: {error}", "invalid_request_error")
            return
        if not steps:
            self._record({**entry, "kind": "demo", "directive": None})
            self._respond(handler, body, stream, include_usage, text=DEMO_ANSWER, tool_call=None,
                          usage=DEFAULT_USAGE)
            return
        if index < len(steps):
            step = steps[index]
        else:
            step = Step(kind="final", directive="@@final " + DEFAULT_FINAL, arguments={"text": DEFAULT_FINAL},
                        usage=steps[-1].usage)
        if step.fail_status is not None and self._should_fail(key, index, step.fail_times):
            self._record({**entry, "kind": "fail", "directive": f"@@fail {step.fail_status}"})
            if self._pause(step.sleep, handler.connection):
                self._abandon(key, index)
                return
            error_type = "invalid_request_error" if step.fail_status < 500 else "server_error"
            handler._send_json(step.fail_status, {"error": {
                "message": f"scripted failure {step.fail_status} at step {index}",
                "type": error_type, "param": None, "code": None,
            }}, close=True)
            return
        self._record({**entry, "kind": step.kind, "directive": step.directive})
        if step.wait_for and self._wait_for(*step.wait_for, handler.connection):
            self._abandon(key, index)
            return
        if self._pause(step.sleep, handler.connection):
            self._abandon(key, index)
            return
        usage = step.usage or DEFAULT_USAGE
        if step.kind == "final":
            self._respond(handler, body, stream, include_usage, text=step.text + step.arguments["text"],
                          tool_call=None, usage=usage)
        else:
            self._respond(handler, body, stream, include_usage, text=step.text,
                          tool_call=(step.kind, step.arguments), usage=usage)

    def _enter(self):
        with self._lock:
            self.in_flight += 1

    def _leave(self):
        with self._lock:
            self.in_flight -= 1

    def _abandon(self, key, index):
        with self._lock:
            self.abandoned.append({"time": time.time(), "key": key, "step": index})

    def _should_fail(self, key, index, times):
        if times is None:
            return True
        with self._lock:
            done = self._fail_counts.get((key, index), 0)
            if done >= times:
                return False
            self._fail_counts[(key, index)] = done + 1
            return True

    def _wait_for(self, path, seconds, connection=None):
        """Hold until `path` exists (at most `seconds`); True when the response should be dropped (see _pause)."""
        deadline = time.monotonic() + seconds
        while not Path(path).exists() and time.monotonic() < deadline:
            if self._pause(0.05, connection):
                return True
        return False

    def _pause(self, seconds, connection=None):
        """Sleep `seconds`; True when the response should be dropped: the server is stopping, or
        the client closed the connection meanwhile (an aborted request, as a real server sees it)."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._stopping.is_set():
                return True
            if connection is None:
                self._stopping.wait(min(remaining, 0.05))
                continue
            readable, _, _ = select.select([connection], [], [], min(remaining, 0.05))
            if readable:
                try:
                    peeked = connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    return True
                if not peeked:
                    return True
                self._stopping.wait(min(remaining, 0.05))

    def _respond(self, handler, body, stream, include_usage, *, text, tool_call, usage):
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        model = body.get("model") or MODEL_ID
        call_id = "call_" + uuid.uuid4().hex[:24]
        finish_reason = "tool_calls" if tool_call else "stop"
        usage_body = {
            "prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1],
        }
        if not stream:
            message = {"role": "assistant", "content": text or None}
            if tool_call:
                message["tool_calls"] = [{
                    "id": call_id, "type": "function",
                    "function": {"name": tool_call[0], "arguments": json.dumps(tool_call[1])},
                }]
            handler._send_json(200, {
                "id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": usage_body,
            })
            return
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-cache")
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.close_connection = True
            base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
            for chunk in stream_chunks(text=text, tool_call=tool_call, call_id=call_id,
                                       finish_reason=finish_reason):
                handler.wfile.write(_sse({**base, **chunk}))
                handler.wfile.flush()
                if self.chunk_delay and self._stopping.wait(self.chunk_delay):
                    return
            if include_usage:
                handler.wfile.write(_sse({**base, "choices": [], "usage": usage_body}))
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (an abort): nothing more to send.
            return


def stream_chunks(*, text, tool_call, call_id, finish_reason):
    """The `choices` parts of the streamed chunks of one answer (without id/model framing)."""
    yield {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    for piece in _pieces(text):
        yield {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
    if tool_call:
        name, arguments = tool_call
        encoded = json.dumps(arguments)
        yield {"choices": [{"index": 0, "delta": {"tool_calls": [{
            "index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""},
        }]}, "finish_reason": None}]}
        middle = max(1, len(encoded) // 2)
        for piece in (encoded[:middle], encoded[middle:]):
            if piece:
                yield {"choices": [{"index": 0, "delta": {"tool_calls": [{
                    "index": 0, "function": {"arguments": piece},
                }]}, "finish_reason": None}]}
    yield {"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}


def _pieces(text):
    """Split text into a few word-aligned pieces, so streamed deltas are real."""
    if not text:
        return []
    words = text.split(" ")
    pieces = []
    for index, word in enumerate(words):
        pieces.append(word + (" " if index < len(words) - 1 else ""))
    return [piece for piece in pieces if piece]


def _sse(payload):
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def opencode_config(base_url, *, permission=None, api_key="scripted-demo", cost=None, snapshot=None):
    """The OpenCode configuration (a dict, to dump as JSON) that uses this server as its only model.

    `base_url` is the server's OpenAI base URL (ending in `/v1`). `permission` is OpenCode's
    permission policy ({"edit": ..., "bash": "allow" | "ask" | "deny", ...}; default: edits and bash
    allowed, webfetch denied). `cost` = (input, output) price per million tokens makes OpenCode
    count a cost; `snapshot` False turns OpenCode's own snapshots off.
    """
    model = {
        "name": DEMO_LABEL,
        "tool_call": True,
        "limit": {"context": 128000, "output": 4096},
    }
    if cost is not None:
        model["cost"] = {"input": cost[0], "output": cost[1]}
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            PROVIDER_ID: {
                "npm": "@ai-sdk/openai-compatible",
                "name": DEMO_LABEL,
                "options": {"baseURL": base_url, "apiKey": api_key},
                "models": {MODEL_ID: model},
            }
        },
        "model": f"{PROVIDER_ID}/{MODEL_ID}",
        "small_model": f"{PROVIDER_ID}/{MODEL_ID}",
        "enabled_providers": [PROVIDER_ID],
        "share": "disabled",
        "autoupdate": False,
        "lsp": False,
        "formatter": False,
        "permission": dict(permission if permission is not None else DEFAULT_PERMISSION),
    }
    if snapshot is not None:
        config["snapshot"] = bool(snapshot)
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible LLM (the demo model).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", default=None, help="append the request log to this file (JSON lines)")
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    options = parser.parse_args(argv)
    llm = ScriptedLLM(host=options.host, port=options.port, log_path=options.log, chunk_delay=options.chunk_delay)

    def terminate(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    llm._bind()
    print(f"scripted llm listening on {llm.url}", flush=True)
    try:
        llm._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        llm._stopping.set()
        llm._httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
