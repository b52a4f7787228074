"""The OpenCode event stream (SSE): parsed events, reconnect, and state rebuild.

`GET /event?directory=...` streams `data: {"id", "type", "properties"}` frames for one directory;
`GET /global/event` streams every directory's events wrapped as `{directory, payload}`. Frames carry
no SSE `id:` field, so nothing is replayed after a reconnect: subscribe (and wait for `connected`)
before prompting, and after a reconnect rebuild state from `GET /session/status` and the messages
(`session_snapshot`), which `EventStream` signals with a synthetic `stream.reconnected` event and
the `on_reconnect` hook.

The server sends `server.heartbeat` every 10 s, so a read that sees no data for `idle_timeout`
(25 s) means the server is dead or wedged: the stream reconnects with bounded exponential backoff.
`stop()` may be called from any thread; it wakes a blocked read within milliseconds by shutting the
socket down.
"""

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx

from orchestrator.event_lag import note_opencode_event

from .client import OpenCodeClient, tls_context
from .errors import OpenCodeError, Unreachable, error_for_status

logger = logging.getLogger(__name__)

RECONNECTED = "stream.reconnected"
IDLE_TIMEOUT = 25.0


@dataclass
class Event:
    """One OpenCode event; `directory` is set for events from the global stream."""

    id: str | None
    type: str
    properties: dict = field(default_factory=dict)
    directory: str | None = None

    @property
    def session_id(self):
        """The session the event belongs to, when it names one."""
        properties = self.properties
        session_id = properties.get("sessionID")
        if session_id:
            return session_id
        for key in ("info", "part"):
            value = properties.get(key)
            if isinstance(value, dict) and value.get("sessionID"):
                return value["sessionID"]
        return None

    def as_dict(self):
        data = {"id": self.id, "type": self.type, "properties": self.properties}
        if self.directory is not None:
            data["directory"] = self.directory
        return data


def parse_frame(data, *, global_stream=False):
    """An `Event` from the JSON of one `data:` frame (None when it is not an event)."""
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    directory = None
    if global_stream and "payload" in payload:
        directory = payload.get("directory")
        payload = payload.get("payload") or {}
    event_type = payload.get("type")
    if not event_type:
        return None
    return Event(id=payload.get("id"), type=event_type, properties=payload.get("properties") or {},
                 directory=directory)


class EventStream:
    """Iterate OpenCode events until `stop()`; reconnects after errors and silent periods.

    - `client`: an `OpenCodeClient` (its URL, password and default directory are used), or a
      callable returning one, called again before each reconnect (so the stream follows a server
      restarted on another port).
    - `directory`: which directory's events (`GET /event`); `global_stream=True` reads
      `GET /global/event` (every directory, `Event.directory` set).
    - `on_reconnect(stream)`: called after each reconnect, before further events are yielded; use
      it to rebuild state (`session_snapshot`). A `stream.reconnected` event is also yielded.
    - `max_reconnects`: give up (raise `Unreachable`) after that many failed attempts in a row;
      None retries until stopped.
    - `connected`: a threading.Event set once `server.connected` arrives (subscribe, wait on it,
      then prompt).
    """

    def __init__(self, client, *, directory=None, global_stream=False, on_reconnect=None,
                 idle_timeout=IDLE_TIMEOUT, connect_timeout=5.0, backoff_initial=0.2, backoff_max=5.0,
                 max_reconnects=None):
        if isinstance(client, OpenCodeClient):
            self._client_source = lambda: client
        elif callable(client):
            self._client_source = client
        else:
            raise TypeError("EventStream needs an OpenCodeClient or a callable returning one")
        self.client = self._client_source()
        self.directory = directory or self.client.directory
        self.global_stream = global_stream
        self.on_reconnect = on_reconnect
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_reconnects = max_reconnects
        self.connected = threading.Event()
        self.reconnects = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._http = None
        self._response = None
        self._socket = None

    @property
    def stopped(self):
        return self._stopping.is_set()

    def stop(self):
        """End the iteration from any thread; a blocked read returns within milliseconds."""
        self._stopping.set()
        with self._lock:
            sock = self._socket
            response = self._response
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if response is not None:
            try:
                response.close()
            except Exception:  # noqa: BLE001 - the reading thread may be closing it at the same time
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def __iter__(self):
        failures = 0
        first = True
        last_error = None  # why the previous connection ended (None: the server closed it)
        delay = self.backoff_initial
        try:
            while not self._stopping.is_set():
                received = False
                try:
                    self._connect_client()
                    for event in self._read_once():
                        if not received:
                            received = True
                            failures = 0
                            delay = self.backoff_initial
                            if not first:
                                self.reconnects += 1
                                logger.warning("OpenCode event stream %s reconnected (%d) after: %s",
                                               self._path(), self.reconnects, last_error or "the server ended it")
                                if self.on_reconnect is not None:
                                    self.on_reconnect(self)
                                yield Event(id=None, type=RECONNECTED, properties={"reconnects": self.reconnects})
                            first = False
                        note_opencode_event(event)  # metrics: when OpenCode completed a step
                        yield event
                except (httpx.TransportError, OSError, Unreachable) as error:
                    if self._stopping.is_set():
                        return
                    last_error = error
                except OpenCodeError:
                    if self._stopping.is_set():
                        return
                    raise
                else:
                    last_error = None
                if self._stopping.is_set():
                    return
                self.connected.clear()
                if not received:
                    failures += 1
                    if self.max_reconnects is not None and failures > self.max_reconnects:
                        raise Unreachable(f"event stream lost after {failures} attempts: {last_error}",
                                          method="GET", path=self._path())
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, self.backoff_max)
        finally:
            with self._lock:
                self._response = None
                self._socket = None
            if self._http is not None:
                self._http.close()
                self._http = None

    def _connect_client(self):
        """(Re)build the HTTP client from the current OpenCodeClient (its URL may have changed)."""
        client = self._client_source()
        if self._http is not None and client.base_url == self.client.base_url and client.auth == self.client.auth:
            return
        if self._http is not None:
            self._http.close()
        self.client = client
        self._http = httpx.Client(
            base_url=client.base_url, auth=client.auth,
            timeout=httpx.Timeout(self.idle_timeout, connect=self.connect_timeout),
            verify=tls_context(),
        )

    def _path(self):
        return "/global/event" if self.global_stream else "/event"

    def _read_once(self):
        params = {} if self.global_stream else self.client.params(self.directory)
        request = self._http.build_request("GET", self._path(), params=params,
                                           headers={"Accept": "text/event-stream"})
        response = self._http.send(request, stream=True)
        try:
            with self._lock:
                self._response = response
                self._socket = _socket_of(response)
            if self._stopping.is_set():
                return
            if response.status_code >= 400:
                response.read()
                raise error_for_status(response.status_code)(
                    response.text[:300], status=response.status_code, method="GET", path=self._path())
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                raise Unreachable(f"not an event stream: {content_type}", status=response.status_code,
                                  method="GET", path=self._path())
            data_lines = []
            for line in _lines(response):
                if self._stopping.is_set():
                    return
                if line.startswith(b"data:"):
                    data_lines.append(line[5:].lstrip(b" "))
                    continue
                if line == b"" and data_lines:
                    event = parse_frame(b"\n".join(data_lines), global_stream=self.global_stream)
                    data_lines = []
                    if event is None:
                        continue
                    if event.type == "server.connected":
                        self.connected.set()
                    yield event
        finally:
            with self._lock:
                self._response = None
                self._socket = None
            response.close()


def _lines(response):
    """The stream's lines as bytes, without their endings (LF or CRLF). httpx's iter_lines decodes
    the text chunk by chunk in Python: on a worker's shared stream, a fifth of the time spent
    reading it. JSON is parsed from the bytes of each frame."""
    pending = []
    for chunk in response.iter_bytes():
        pieces = chunk.split(b"\n")
        if len(pieces) == 1:
            pending.append(chunk)
            continue
        pieces[0] = b"".join(pending) + pieces[0]
        pending = [pieces.pop()]
        for line in pieces:
            yield line[:-1] if line.endswith(b"\r") else line
    if pending and pending != [b""]:
        rest = b"".join(pending)
        yield rest[:-1] if rest.endswith(b"\r") else rest


def _socket_of(response):
    """The socket under a streamed httpx response (to wake a blocked read on stop)."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    try:
        return stream.get_extra_info("socket")
    except Exception:  # noqa: BLE001 - a transport without a socket (tests' mock transports)
        return None


def session_snapshot(client, session_id, *, directory=None, messages_if_busy=True):
    """The state of one session rebuilt from `GET /session/status` and its messages.

    Returns {"status": "busy" | "retry" | "idle", "status_detail": {...}, "messages": [...],
    "last_assistant": the last assistant message's info or None, "finished": True when the session
    is idle and its last assistant message has completed (or errored), "error": that message's
    error or None}.

    With `messages_if_busy=False` a session still busy (or retrying) is not asked for its messages
    ("messages" is None, "finished" False): a caller that only wants a finished turn's messages
    spares OpenCode from serialising every part of a running one (the runner's check of a quiet
    stream found most turns busy under load).
    """
    statuses = client.status(directory=directory)
    detail = statuses.get(session_id) or {"type": "idle"}
    if not messages_if_busy and detail.get("type", "idle") != "idle":
        return {"status": detail.get("type"), "status_detail": detail, "messages": None,
                "last_assistant": None, "finished": False, "error": None}
    messages = client.messages(session_id, directory=directory)
    last_assistant = None
    for message in reversed(messages):
        if message.get("info", {}).get("role") == "assistant":
            last_assistant = message["info"]
            break
    status = detail.get("type", "idle")
    completed = bool(last_assistant and ((last_assistant.get("time") or {}).get("completed")
                                         or last_assistant.get("error")))
    return {
        "status": status,
        "status_detail": detail,
        "messages": messages,
        "last_assistant": last_assistant,
        "finished": status == "idle" and (completed or last_assistant is None),
        "error": last_assistant.get("error") if last_assistant else None,
    }


class EventCollector:
    """Reads a stream in a background thread and keeps every event, for waiting on conditions.

    `wait(predicate, timeout)` returns the first collected event (from `since` on) that satisfies
    `predicate`, or None at the deadline. `stop()` stops the stream and joins the thread.
    """

    def __init__(self, stream):
        self.stream = stream
        self.events = []
        self.error = None
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="opencode-events", daemon=True)

    def start(self, *, connected_timeout=10.0):
        """Start reading; wait until the server has confirmed the subscription."""
        self._thread.start()
        if not self.stream.connected.wait(connected_timeout):
            self.stop()
            raise Unreachable(f"event stream not connected within {connected_timeout}s",
                              method="GET", path=self.stream._path())
        return self

    def _run(self):
        try:
            for event in self.stream:
                with self._condition:
                    self.events.append(event)
                    self._condition.notify_all()
        except Exception as error:  # noqa: BLE001 - kept for the waiting thread to see
            self.error = error
        finally:
            with self._condition:
                self._condition.notify_all()

    def wait(self, predicate, *, timeout, since=0):
        """The first event at index >= `since` satisfying `predicate`, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        index = since
        with self._condition:
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return None
                self._condition.wait(remaining)

    def of_session(self, session_id, *types):
        """Collected events of one session, optionally only the given types."""
        with self._condition:
            return [event for event in self.events
                    if event.session_id == session_id and (not types or event.type in types)]

    def stop(self):
        self.stream.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
