"""Pure parts of the OpenCode adapter: request shapes, event parsing, error mapping, plugin stub."""

import json

import pytest

from sessions.opencode import errors
from sessions.opencode.client import OpenCodeClient, model_ref, permission_rules
from sessions.opencode.events import Event, parse_frame
from sessions.opencode.server import OpenCodeServer, write_plugin_stub

# Frames as the real server sends them (from a recorded 1.18.33 run).
STATUS_FRAME = ('{"id":"evt_20afc7892001sEUd8Z6eAYBras","type":"session.status","properties":'
                '{"sessionID":"ses_df503880cffeGpu52SEWrR0HTJ","status":{"type":"busy"}}}')
PART_FRAME = ('{"id":"evt_20afc7ec8001aRjlLRFaAlkhBA","type":"message.part.updated","properties":'
              '{"sessionID":"ses_df503880cffeGpu52SEWrR0HTJ","part":{"id":"prt_1","messageID":"msg_1",'
              '"sessionID":"ses_df503880cffeGpu52SEWrR0HTJ","type":"tool","tool":"write","callID":"call_1",'
              '"state":{"status":"pending","input":{},"raw":""}},"time":1795480649416}}')


def test_model_ref_accepts_provider_slash_model_or_a_dict():
    assert model_ref("scripted/scripted-model") == {"providerID": "scripted", "modelID": "scripted-model"}
    assert model_ref({"providerID": "a", "modelID": "b"}) == {"providerID": "a", "modelID": "b"}
    assert model_ref(None) is None
    with pytest.raises(ValueError):
        model_ref("no-slash")


def test_permission_mapping_becomes_opencode_rules():
    assert permission_rules({"bash": "ask", "edit": {"*.md": "allow", "*": "deny"}}) == [
        {"permission": "bash", "pattern": "*", "action": "ask"},
        {"permission": "edit", "pattern": "*.md", "action": "allow"},
        {"permission": "edit", "pattern": "*", "action": "deny"},
    ]
    rules = [{"permission": "bash", "pattern": "git *", "action": "allow"}]
    assert permission_rules(rules) is rules


def test_prompt_body_has_parts_agent_model_and_system_and_nothing_unset():
    body = OpenCodeClient.prompt_body(text="hi", agent="build", model="p/m", system="be brief")

    assert body == {"parts": [{"type": "text", "text": "hi"}], "agent": "build",
                    "model": {"providerID": "p", "modelID": "m"}, "system": "be brief"}
    with pytest.raises(ValueError):
        OpenCodeClient.prompt_body()


def test_every_call_names_the_directory_given_per_call_or_per_client():
    client = OpenCodeClient("http://127.0.0.1:9", directory="/work/a", timeout=1)
    other = client.with_directory("/work/b")

    assert client.params() == {"directory": "/work/a"}
    assert client.params("/work/c", messageID=None, mode="git") == {"mode": "git", "directory": "/work/c"}
    assert other.params() == {"directory": "/work/b"} and other._http is client._http
    client.close()


def test_frames_parse_into_events_with_their_session():
    status = parse_frame(STATUS_FRAME)
    part = parse_frame(PART_FRAME)

    assert (status.id, status.type, status.session_id) == (
        "evt_20afc7892001sEUd8Z6eAYBras", "session.status", "ses_df503880cffeGpu52SEWrR0HTJ")
    assert part.properties["part"]["tool"] == "write" and part.session_id == "ses_df503880cffeGpu52SEWrR0HTJ"
    assert Event(id=None, type="file.edited", properties={"file": "/x"}).session_id is None
    assert parse_frame("not json") is None and parse_frame('{"no": "type"}') is None


def test_global_frames_are_unwrapped_with_their_directory():
    wrapped = json.dumps({"directory": "/work/a", "payload": json.loads(STATUS_FRAME)})

    event = parse_frame(wrapped, global_stream=True)

    assert event.type == "session.status" and event.directory == "/work/a"
    assert event.as_dict()["directory"] == "/work/a"


def test_error_statuses_map_to_typed_errors():
    assert errors.error_for_status(404) is errors.NotFound
    assert errors.error_for_status(400) is errors.BadRequest
    assert errors.error_for_status(401) is errors.Unauthorized
    assert errors.error_for_status(409) is errors.Conflict
    assert errors.error_for_status(500) is errors.ServerError
    assert errors.error_for_status(503) is errors.ServerError
    assert errors.error_for_status(418) is errors.OpenCodeError
    error = errors.NotFound("Session not found: ses_x", status=404, name="NotFoundError", method="GET",
                            path="/session/ses_x")
    assert str(error) == "GET /session/ses_x: HTTP 404 NotFoundError: Session not found: ses_x"
    assert isinstance(error, errors.OpenCodeError)


def test_plugin_stub_lists_the_pinned_plugin_so_no_npm_install_runs(tmp_path):
    write_plugin_stub(tmp_path, version="1.18.33")

    lock = json.loads((tmp_path / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == {"@opencode-ai/plugin": "1.18.33"}
    assert (tmp_path / "node_modules" / "@opencode-ai" / "plugin" / "package.json").is_file()


def test_server_config_comes_from_arguments_before_settings(tmp_path, settings):
    settings.OPENCODE_CONFIG_CONTENT = '{"model": "mine/model"}'
    settings.OPENCODE_CONFIG = None

    from_settings = OpenCodeServer(state_dir=tmp_path, binary="opencode")
    explicit = OpenCodeServer(state_dir=tmp_path, binary="opencode", config={"model": "x/y"})
    by_path = OpenCodeServer(state_dir=tmp_path, binary="opencode", config_path=tmp_path / "c.json")
    demo = OpenCodeServer(state_dir=tmp_path, binary="opencode", scripted_llm_url="http://127.0.0.1:9/v1",
                          permission={"bash": "ask"})

    assert from_settings.config_env == {"OPENCODE_CONFIG_CONTENT": '{"model": "mine/model"}'}
    assert explicit.config_env == {"OPENCODE_CONFIG_CONTENT": '{"model": "x/y"}'}
    assert by_path.config_env == {"OPENCODE_CONFIG": str(tmp_path / "c.json")}
    demo_config = json.loads(demo.config_env["OPENCODE_CONFIG_CONTENT"])
    assert demo_config["model"] == "scripted/scripted-model" and demo_config["permission"] == {"bash": "ask"}
    assert from_settings.environment()["OPENCODE_CONFIG_CONTENT"] == '{"model": "mine/model"}'


def test_server_start_fails_clearly_when_the_binary_is_missing(tmp_path):
    server = OpenCodeServer(state_dir=tmp_path, binary=str(tmp_path / "missing-opencode"), config={})

    with pytest.raises(errors.OpenCodeError) as caught:
        server.start()

    assert "missing-opencode" in str(caught.value)


def test_clients_and_event_streams_share_one_tls_context(monkeypatch):
    """httpx loads the whole CA bundle for every Client it builds unless given a context (~25 ms of
    CPU each); a worker builds a client per event stream, so they all share the process's one."""
    import ssl

    from sessions.opencode.client import tls_context
    from sessions.opencode.events import EventStream

    tls_context()  # the process's one load
    loads = []
    real_load = ssl.SSLContext.load_verify_locations

    def counting_load(self, *args, **kwargs):
        loads.append(args)
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting_load)
    client = OpenCodeClient("http://127.0.0.1:9", directory="/tmp/x")
    stream = EventStream(client)
    stream._connect_client()
    try:
        assert loads == []
        assert stream._http._transport._pool._ssl_context is tls_context()
    finally:
        stream._http.close()
        client.close()


def test_a_session_create_may_wait_longer_than_the_clients_timeout():
    """The runner gives the call that opens a worktree in OpenCode more time than other calls. A
    create with a longer timeout starts first and outlasts a create with the client's timeout: both
    are held by the endpoint (OpenCode opening the directory) until the short one has timed out."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    arrived, release = threading.Semaphore(0), threading.Event()

    class SlowCreate(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            arrived.release()
            release.wait(10)
            body = b'{"id": "ses_slow"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowCreate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = OpenCodeClient(f"http://127.0.0.1:{server.server_port}", directory="/work/a", timeout=0.2)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            opening = pool.submit(client.create_session, title="opening", timeout=10)
            assert arrived.acquire(timeout=5), "the long create reached the endpoint"
            with pytest.raises(errors.Unreachable, match="timed out"):
                client.create_session(title="default timeout")
            release.set()
            assert opening.result(timeout=10)["id"] == "ses_slow"
    finally:
        release.set()
        client.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_stream_lines_are_split_across_chunks_and_line_endings():
    from sessions.opencode.events import _lines

    class Chunks:
        def __init__(self, *chunks):
            self.chunks = chunks

        def iter_bytes(self):
            return iter(self.chunks)

    response = Chunks(b"data: {\"a\"", b": 1}\r\n\r", b"\ndata: x\n", b"\n", b"tail")
    assert list(_lines(response)) == [b'data: {"a": 1}', b"", b"data: x", b"", b"tail"]
    assert list(_lines(Chunks(b"one\n", b"two\n"))) == [b"one", b"two"]
