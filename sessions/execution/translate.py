"""From OpenCode's event stream to what the orchestrator records.

`TurnTranslator` follows one OpenCode session through one prompt (a turn). It
is fed every event of the stream and answers the session events worth keeping
(status changes, tool calls with their state and a summary of their output,
assistant text, file edits, permission requests and replies, errors, each
completed step's tokens and cost). Streamed text deltas are not stored one by
one: a text part is recorded once, when it is complete. Pure Python: no
Django, no I/O, so it is tested on a real recorded stream.
"""

from dataclasses import dataclass, field

SUMMARY_LIMIT = 2000


def summarize(value, limit=SUMMARY_LIMIT):
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit} more characters)"


@dataclass
class StepUsage:
    message_id: str
    input: int = 0
    output: int = 0
    reasoning: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cost: float = 0.0
    # Whether the step called any tool. OpenCode changes files only through tools, so a step without
    # one (a turn's closing answer, most often) left the worktree as the step before left it.
    ran_tools: bool = True

    @classmethod
    def from_message(cls, info):
        tokens = info.get("tokens") or {}
        cache = tokens.get("cache") or {}
        return cls(
            message_id=info["id"],
            input=int(tokens.get("input") or 0),
            output=int(tokens.get("output") or 0),
            reasoning=int(tokens.get("reasoning") or 0),
            cache_read=int(cache.get("read") or 0),
            cache_write=int(cache.get("write") or 0),
            cost=float(info.get("cost") or 0.0),
        )


# The OpenCode event types TurnTranslator.feed acts on (one `_on_<type>` handler each); a task's
# queue receives only these from the shared stream (streams.ServerEvents.subscribe).
TURN_EVENT_TYPES = frozenset({
    "session.status", "session.idle", "session.error", "message.updated", "message.part.updated",
    "file.edited", "permission.asked", "permission.replied",
})


@dataclass
class TurnTranslator:
    opencode_session_id: str
    status: str = ""
    retry: dict | None = None
    error: dict | None = None
    finished: bool = False
    final_text: str = ""
    last_message_id: str = ""
    completed_steps: list = field(default_factory=list)
    permission_requests: list = field(default_factory=list)
    rejected_permissions: list = field(default_factory=list)
    _busy_seen: bool = False
    _tool_status: dict = field(default_factory=dict)
    _texts: dict = field(default_factory=dict)
    _texts_recorded: set = field(default_factory=set)
    _completed_messages: set = field(default_factory=set)
    _files: set = field(default_factory=set)
    _user_messages: set = field(default_factory=set)
    _tool_messages: set = field(default_factory=set)  # assistant messages (steps) with a tool part
    # Steps completed in earlier turns on the same OpenCode session (see next_turn).
    _earlier_messages: frozenset = frozenset()

    def next_turn(self) -> "TurnTranslator":
        """A translator for the next prompt on the same OpenCode session (an operator's message).

        What this one recorded stays recorded: a late event of the ended turn, or a rebuild from the
        session's messages (which lists every turn), records no step, text or tool twice. Its own
        end is its own: it finishes on an idle seen after its busy, like any first turn."""
        return TurnTranslator(
            self.opencode_session_id,
            _earlier_messages=self._earlier_messages | frozenset(self._completed_messages),
            _texts_recorded=set(self._texts_recorded), _tool_status=dict(self._tool_status),
            _user_messages=set(self._user_messages), _tool_messages=set(self._tool_messages),
        )

    @property
    def turn_started(self):
        """OpenCode has reported this turn busy (so an idle state afterwards means it ended)."""
        return self._busy_seen

    @property
    def aborted(self):
        return bool(self.error and self.error.get("name") == "MessageAbortedError")

    def _ours(self, properties):
        session_id = properties.get("sessionID")
        if session_id is None:
            info = properties.get("info") or properties.get("part") or {}
            session_id = info.get("sessionID")
        return session_id is None or session_id == self.opencode_session_id

    def feed(self, event):
        """Take one event; answer a list of (type, payload) to record, possibly empty."""
        kind = event.get("type", "")
        properties = event.get("properties") or {}
        if not self._ours(properties):
            return []
        handler = getattr(self, "_on_" + kind.replace(".", "_"), None)
        return handler(properties) if handler else []

    def flush(self):
        """Text parts that never reported their end (an aborted turn): record them as they stand."""
        records = []
        for part_id, (message_id, text) in self._texts.items():
            if part_id not in self._texts_recorded and text.strip():
                self._texts_recorded.add(part_id)
                self.final_text = text
                records.append(("assistant.text", {"message_id": message_id, "text": summarize(text, 20000)}))
        return records

    def _on_session_status(self, properties):
        status = properties.get("status") or {}
        kind = status.get("type", "")
        if kind == "busy":
            self._busy_seen = True
        previous, self.status = self.status, kind
        self.retry = status if kind == "retry" else None
        if kind == previous and kind != "retry":
            return []
        payload = {"status": kind}
        if kind == "retry":
            payload.update(attempt=status.get("attempt"), message=status.get("message"), next=status.get("next"))
        return [("opencode.status", payload)]

    def _on_session_idle(self, properties):
        if self._busy_seen or self._completed_messages or self.error:
            self.finished = True
            self.status = "idle"
            return self.flush()
        return []

    def _on_session_error(self, properties):
        error = properties.get("error") or {}
        data = error.get("data") or {}
        self.error = {
            "name": error.get("name", "UnknownError"),
            "message": data.get("message") or error.get("name", "OpenCode reported an error"),
            "data": data,
        }
        return [("opencode.error", {"name": self.error["name"], "message": summarize(self.error["message"])})]

    def _on_message_updated(self, properties):
        info = properties.get("info") or {}
        if info.get("role") == "user":
            self._user_messages.add(info.get("id"))
        if info.get("role") != "assistant" or info.get("id") in self._earlier_messages:
            return []
        self.last_message_id = info.get("id", self.last_message_id)
        completed = (info.get("time") or {}).get("completed")
        if not completed or info["id"] in self._completed_messages:
            return []
        self._completed_messages.add(info["id"])
        usage = StepUsage.from_message(info)
        usage.ran_tools = info["id"] in self._tool_messages
        self.completed_steps.append(usage)
        payload = {
            "message_id": info["id"],
            "finish": info.get("finish"),
            "tokens": {
                "input": usage.input, "output": usage.output, "reasoning": usage.reasoning,
                "cache_read": usage.cache_read, "cache_write": usage.cache_write,
            },
            "cost": usage.cost,
        }
        if info.get("error"):
            payload["error"] = {"name": info["error"].get("name"), "message": summarize(
                (info["error"].get("data") or {}).get("message", ""))}
        return [("opencode.step", payload)]

    def _on_message_part_updated(self, properties):
        part = properties.get("part") or {}
        kind = part.get("type")
        if kind == "tool":
            return self._tool(part)
        if kind == "text":
            return self._text(part)
        return []

    def _tool(self, part):
        self._tool_messages.add(part.get("messageID"))
        state = part.get("state") or {}
        status = state.get("status", "")
        if status == "pending" or self._tool_status.get(part["id"]) == status:
            return []
        self._tool_status[part["id"]] = status
        payload = {
            "tool": part.get("tool"),
            "call_id": part.get("callID"),
            "message_id": part.get("messageID"),
            "status": status,
            "input": summarize(state.get("input") or {}, 500),
        }
        if state.get("title"):
            payload["title"] = state["title"]
        if status == "completed":
            payload["output"] = summarize(state.get("output") or "")
        if status == "error":
            payload["error"] = summarize(state.get("error") or "")
        return [("tool." + status, payload)]

    def _text(self, part):
        if part.get("synthetic") or part.get("ignored") or part.get("messageID") in self._user_messages:
            return []
        self._texts[part["id"]] = (part.get("messageID", ""), part.get("text", ""))
        if (part.get("time") or {}).get("end") and part["id"] not in self._texts_recorded:
            text = part.get("text", "")
            if not text.strip():
                return []
            self._texts_recorded.add(part["id"])
            self.final_text = text
            return [("assistant.text", {"message_id": part.get("messageID"), "text": summarize(text, 20000)})]
        return []

    def _on_file_edited(self, properties):
        path = properties.get("file", "")
        if not path or path in self._files:
            return []
        self._files.add(path)
        return [("file.edited", {"file": path})]

    def _on_permission_asked(self, properties):
        request = {
            "id": properties.get("id"),
            "permission": properties.get("permission"),
            "patterns": properties.get("patterns") or [],
            "metadata": properties.get("metadata") or {},
            "tool": properties.get("tool") or {},
        }
        self.permission_requests.append(request)
        return [("permission.asked", request)]

    def _on_permission_replied(self, properties):
        if properties.get("reply") == "reject":
            self.rejected_permissions.append(properties.get("requestID"))
        return [("permission.replied", {"id": properties.get("requestID"), "reply": properties.get("reply")})]
