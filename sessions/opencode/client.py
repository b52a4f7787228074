"""A thin httpx client of the OpenCode server's v1 routes (pinned 1.18.33).

Every call has a timeout (the client's default, or `timeout=` per call) and passes
`?directory=<abs path>` when a directory is given (per call, or the client's default): one server
serves many directories, and the server does not validate the value, so callers must send the
worktree they mean. Failures raise the typed errors of `sessions.opencode.errors`:
`NotFound` (404), `BadRequest` (400), `Unauthorized` (401/403), `Conflict` (409), `ServerError`
(5xx, also `UnknownError` for malformed ids), `Unreachable` (connect errors, timeouts) and
`UnexpectedResponse` (a 200 that is not JSON, such as the web UI's HTML for an unknown path).

The client is thread-safe (one httpx.Client with a connection pool) and cheap to share.
"""

import copy
import functools
import json

import httpx

from orchestrator.opencode_directories import note_opencode_request

from .errors import OpenCodeError, UnexpectedResponse, Unreachable, error_for_status

USERNAME = "opencode"
DEFAULT_TIMEOUT = 30.0
# A blocking prompt lasts as long as the model's whole turn.
DEFAULT_PROMPT_TIMEOUT = 600.0


@functools.cache
def tls_context():
    """One TLS context for every client of the process (the one httpx would build for each).

    httpx builds a fresh context for each Client unless given one, loading the whole CA bundle:
    ~25 ms of CPU, holding the GIL, for every event stream a task opens (measured), although the
    worker's own servers are plain HTTP on loopback."""
    return httpx.create_ssl_context()


def default_request_timeout():
    """OPENCODE_REQUEST_TIMEOUT from Django settings when they are configured, else 30 s."""
    try:
        from django.conf import settings

        return float(getattr(settings, "OPENCODE_REQUEST_TIMEOUT", DEFAULT_TIMEOUT))
    except Exception:  # noqa: BLE001 - no Django settings: use the plain default
        return DEFAULT_TIMEOUT


def model_ref(model):
    """`{"providerID", "modelID"}` from a "provider/model" string or such a dict (None stays None)."""
    if model is None or isinstance(model, dict):
        return model
    provider_id, separator, model_id = str(model).partition("/")
    if not separator or not provider_id or not model_id:
        raise ValueError(f"model must be 'provider/model', got {model!r}")
    return {"providerID": provider_id, "modelID": model_id}


def permission_rules(permission):
    """OpenCode's permission ruleset (a list of {permission, pattern, action}) from a list in that
    shape or a mapping {permission: action} / {permission: {pattern: action}}."""
    if permission is None or isinstance(permission, list):
        return permission
    rules = []
    for name, value in permission.items():
        if isinstance(value, dict):
            rules.extend(
                {"permission": name, "pattern": pattern, "action": action} for pattern, action in value.items()
            )
        else:
            rules.append({"permission": name, "pattern": "*", "action": value})
    return rules


class OpenCodeClient:
    """Calls one OpenCode server at `base_url`; `password` turns on Basic auth (user "opencode")."""

    def __init__(self, base_url, *, password=None, directory=None, timeout=None, transport=None):
        self.base_url = str(base_url).rstrip("/")
        self.password = password
        self.directory = str(directory) if directory else None
        self.timeout = float(timeout) if timeout is not None else default_request_timeout()
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=(USERNAME, password) if password else None,
            timeout=self.timeout,
            transport=transport,
            headers={"Accept": "application/json"},
            verify=tls_context(),
        )

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def with_directory(self, directory):
        """A client for the same server whose calls default to `directory`; it shares this client's
        connection pool (closing either closes both)."""
        other = copy.copy(self)
        other.directory = str(directory) if directory else None
        return other

    @property
    def auth(self):
        return (USERNAME, self.password) if self.password else None

    # --- plumbing -------------------------------------------------------------------------

    def params(self, directory=None, **extra):
        """Query parameters of a call: the directory (explicit or the client's) plus `extra`."""
        params = {key: value for key, value in extra.items() if value is not None}
        directory = directory or self.directory
        if directory:
            params["directory"] = str(directory)
        return params

    def request(self, method, path, *, directory=None, params=None, json_body=None, timeout=None, expect="json"):
        """Send one request; return the decoded JSON (`expect="json"`) or None (`expect="empty"`).

        Raises the typed errors of `sessions.opencode.errors`.
        """
        query = self.params(directory, **(params or {}))
        try:
            response = self._http.request(
                method, path, params=query, json=json_body,
                timeout=self.timeout if timeout is None else timeout,
            )
        except httpx.TimeoutException as error:
            raise Unreachable(f"timed out: {error}", method=method, path=path) from error
        except (httpx.TransportError, OSError) as error:
            raise Unreachable(f"no answer: {error}", method=method, path=path) from error
        note_opencode_request(self.base_url, method, path, query.get("directory"))  # metrics: directories open
        return self._decode(response, method, path, expect)

    def _decode(self, response, method, path, expect):
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        if status >= 400:
            name, message, body = _error_details(response)
            raise error_for_status(status)(message, status=status, name=name, method=method, path=path, body=body)
        if expect == "empty" and not response.content:
            return None
        if "json" not in content_type:
            raise UnexpectedResponse(
                f"expected JSON, got {content_type or 'no content type'}: {response.text[:120]!r}",
                status=status, method=method, path=path, body=response.text[:2000],
            )
        try:
            return response.json()
        except ValueError as error:
            raise UnexpectedResponse(
                f"malformed JSON: {error}", status=status, method=method, path=path, body=response.text[:2000],
            ) from error

    # --- server ---------------------------------------------------------------------------

    def health(self, *, timeout=None):
        """`{"healthy": true, "version": "1.18.33"}`."""
        return self.request("GET", "/global/health", timeout=timeout)

    def agents(self, *, directory=None):
        return self.request("GET", "/agent", directory=directory)

    def providers(self, *, directory=None):
        return self.request("GET", "/config/providers", directory=directory)

    def config(self, *, directory=None):
        return self.request("GET", "/config", directory=directory)

    def dispose_instance(self, *, directory=None):
        """Close OpenCode's instance of a directory (its file watcher, LSP clients and caches); the
        next call naming the directory opens it again. OpenCode answers true, even for a directory
        it never opened (which it opens, then closes)."""
        return self.request("POST", "/instance/dispose", directory=directory)

    # --- sessions -------------------------------------------------------------------------

    def create_session(self, *, title=None, parent_id=None, permission=None, directory=None, timeout=None):
        """Create a session; `permission` is a ruleset list or a mapping {permission: action}.
        `timeout` overrides the client's: the first call in a directory opens it in OpenCode."""
        body = {"title": title, "parentID": parent_id, "permission": permission_rules(permission)}
        return self.request("POST", "/session", directory=directory, timeout=timeout,
                            json_body={key: value for key, value in body.items() if value is not None})

    def get_session(self, session_id, *, directory=None):
        return self.request("GET", f"/session/{session_id}", directory=directory)

    def list_sessions(self, *, directory=None, limit=None):
        return self.request("GET", "/session", directory=directory, params={"limit": limit})

    def delete_session(self, session_id, *, directory=None):
        return self.request("DELETE", f"/session/{session_id}", directory=directory)

    def status(self, *, directory=None):
        """Busy and retrying sessions: `{ses_x: {"type": "busy"}}`; idle sessions are absent."""
        return self.request("GET", "/session/status", directory=directory)

    def messages(self, session_id, *, directory=None, limit=None):
        """`[{info, parts}]`, oldest first."""
        return self.request("GET", f"/session/{session_id}/message", directory=directory, params={"limit": limit})

    def message(self, session_id, message_id, *, directory=None):
        return self.request("GET", f"/session/{session_id}/message/{message_id}", directory=directory)

    @staticmethod
    def prompt_body(*, text=None, parts=None, agent=None, model=None, system=None, message_id=None, tools=None):
        if parts is None:
            if text is None:
                raise ValueError("a prompt needs text or parts")
            parts = [{"type": "text", "text": text}]
        body = {
            "parts": parts, "agent": agent, "model": model_ref(model), "system": system,
            "messageID": message_id, "tools": tools,
        }
        return {key: value for key, value in body.items() if value is not None}

    def prompt_async(self, session_id, *, text=None, parts=None, agent=None, model=None, system=None,
                     message_id=None, tools=None, directory=None):
        """Start a turn and return at once (204); a prompt sent while busy is queued by OpenCode."""
        body = self.prompt_body(text=text, parts=parts, agent=agent, model=model, system=system,
                                message_id=message_id, tools=tools)
        self.request("POST", f"/session/{session_id}/prompt_async", directory=directory, json_body=body,
                     expect="empty")

    def prompt(self, session_id, *, text=None, parts=None, agent=None, model=None, system=None,
               message_id=None, tools=None, directory=None, timeout=DEFAULT_PROMPT_TIMEOUT):
        """Run a whole turn; return the last assistant message `{info, parts}`."""
        body = self.prompt_body(text=text, parts=parts, agent=agent, model=model, system=system,
                                message_id=message_id, tools=tools)
        return self.request("POST", f"/session/{session_id}/message", directory=directory, json_body=body,
                            timeout=timeout)

    def abort(self, session_id, *, directory=None):
        """Abort the running turn; OpenCode answers true even for idle or unknown sessions."""
        return self.request("POST", f"/session/{session_id}/abort", directory=directory)

    def diff(self, session_id, *, message_id=None, directory=None):
        """Files changed by the turn of user message `message_id`: `[{file, patch, additions,
        deletions, status}]` (OpenCode answers [] without a message id)."""
        return self.request("GET", f"/session/{session_id}/diff", directory=directory,
                            params={"messageID": message_id})

    def vcs_diff(self, *, mode="git", directory=None):
        """The whole working tree's diff against git (`mode="git"`) or the branch (`"branch"`)."""
        return self.request("GET", "/vcs/diff", directory=directory, params={"mode": mode})

    def revert(self, session_id, *, message_id, part_id=None, directory=None):
        """Undo the changes from `message_id` (optionally from one part) on; returns the session."""
        body = {"messageID": message_id}
        if part_id:
            body["partID"] = part_id
        return self.request("POST", f"/session/{session_id}/revert", directory=directory, json_body=body)

    def unrevert(self, session_id, *, directory=None):
        return self.request("POST", f"/session/{session_id}/unrevert", directory=directory)

    # --- permissions ----------------------------------------------------------------------

    def permissions(self, *, directory=None):
        """Pending permission requests `[{id, sessionID, permission, patterns, metadata, ...}]`."""
        return self.request("GET", "/permission", directory=directory)

    def reply_permission(self, request_id, reply, *, message=None, directory=None):
        """Answer a permission request: "once", "always" or "reject"."""
        if reply not in ("once", "always", "reject"):
            raise ValueError(f"reply must be once, always or reject, got {reply!r}")
        body = {"reply": reply}
        if message:
            body["message"] = message
        return self.request("POST", f"/permission/{request_id}/reply", directory=directory, json_body=body)


def _error_details(response):
    """(name, message, body) of an error answer, whatever its shape."""
    text = response.text
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return None, (text[:500] or response.reason_phrase), text[:2000]
    name = None
    message = None
    if isinstance(body, dict):
        name = body.get("name") or body.get("_tag")
        data = body.get("data")
        if isinstance(data, dict):
            message = data.get("message")
        message = message or body.get("message")
        errors = body.get("errors")
        if not message and errors:
            message = json.dumps(errors)[:500]
    return name, message or text[:500] or response.reason_phrase, body


__all__ = ["OpenCodeClient", "OpenCodeError", "model_ref", "permission_rules"]
