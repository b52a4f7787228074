"""Contract of the OpenCode adapter against the real binary (1.18.33) and the scripted LLM.

One server and one scripted LLM serve the whole module; every process started here is stopped by
PID at the end. No database is used.
"""

import logging
import os
import signal
import subprocess
import threading
import time

import pytest
from django.conf import settings

from orchestrator.testing import free_port, wait_until
from sessions.opencode import errors
from sessions.opencode.client import OpenCodeClient
from sessions.opencode.events import RECONNECTED, EventCollector, session_snapshot
from sessions.opencode.scripted_llm import opencode_config
from sessions.opencode.server import HEALTH_FRESH_SECONDS, ExistingServer, OpenCodeServer

pytestmark = pytest.mark.opencode

THREE_STEPS = (
    "Make a file.\n"
    "@@write notes/hello.txt Hello from the scripted LLM\\n\n"
    "@@bash ls -1 notes > listing.txt\n"
    "@@final Done: notes/hello.txt and listing.txt."
)


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def llm(scripted_llm):
    return scripted_llm


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("repo")
    git("init", "-q", "-b", "main", cwd=path)
    (path / "README.md").write_text("# demo\n")
    git("add", ".", cwd=path)
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "init", cwd=path)
    return path


@pytest.fixture(scope="module")
def server(llm, repo, tmp_path_factory):
    state = tmp_path_factory.mktemp("opencode-state")
    managed = OpenCodeServer(
        workdir=repo, state_dir=state, binary=settings.OPENCODE_BIN,
        config=opencode_config(llm.base_url, cost=(1.0, 2.0)), startup_timeout=60, request_timeout=15,
        snapshots=True,  # this module documents OpenCode's own behaviour, per-turn diffs included
    )
    managed.start()
    yield managed
    pid = managed.pid
    managed.stop()
    assert managed.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.fixture(scope="module")
def oc(server, repo):
    return server.client(repo)


@pytest.fixture(scope="module")
def events(server, repo):
    collector = EventCollector(server.events(repo))
    collector.start()
    yield collector
    collector.stop()


def is_event(event_type, session_id, predicate=None):
    def check(event):
        return event.type == event_type and event.session_id == session_id and (predicate is None or predicate(event))
    return check


def start_turn(oc, text, *, title="contract", permission=None):
    session = oc.create_session(title=title, permission=permission)
    oc.prompt_async(session["id"], text=text)
    return session["id"]


@pytest.fixture(scope="module")
def finished_turn(oc, events, llm):
    session_id = start_turn(oc, THREE_STEPS, title="three steps")
    idle = events.wait(is_event("session.idle", session_id), timeout=60)
    assert idle is not None, "the three-step turn did not finish"
    return session_id


def test_health_reports_the_pinned_version(server, oc):
    assert oc.health() == {"healthy": True, "version": "1.18.33"}
    assert server.version == "1.18.33"
    assert server.url.startswith("http://127.0.0.1:")


def test_agents_and_providers_include_build_and_the_scripted_model(oc):
    assert "build" in [agent["name"] for agent in oc.agents()]
    providers = oc.providers()
    scripted = [provider for provider in providers["providers"] if provider["id"] == "scripted"]
    assert scripted and "scripted-model" in scripted[0]["models"]


def test_created_session_can_be_read_listed_and_deleted(oc, repo):
    session = oc.create_session(title="short-lived")

    assert session["id"].startswith("ses_") and session["directory"] == str(repo)
    assert oc.get_session(session["id"])["title"] == "short-lived"
    assert session["id"] in [item["id"] for item in oc.list_sessions()]
    assert oc.delete_session(session["id"]) is True
    with pytest.raises(errors.NotFound):
        oc.get_session(session["id"])


def test_three_step_turn_streams_status_tools_tokens_and_idle(finished_turn, events):
    session_id = finished_turn
    mine = events.of_session(session_id)
    types = [event.type for event in mine]

    assert any(e.type == "session.status" and e.properties["status"]["type"] == "busy" for e in mine)
    tool_states = {(e.properties["part"]["tool"], e.properties["part"]["state"]["status"])
                   for e in mine if e.type == "message.part.updated" and e.properties["part"]["type"] == "tool"}
    assert {("write", "pending"), ("write", "running"), ("write", "completed"),
            ("bash", "running"), ("bash", "completed")} <= tool_states
    assistant_updates = [e.properties["info"] for e in mine
                         if e.type == "message.updated" and e.properties["info"]["role"] == "assistant"]
    assert any(info["tokens"]["input"] == 100 and info["tokens"]["output"] == 20 for info in assistant_updates)
    assert any(info.get("cost", 0) > 0 for info in assistant_updates)
    assert "message.part.delta" in types
    final_completed = max(
        index for index, event in enumerate(mine)
        if event.type == "message.updated" and event.properties["info"].get("finish") == "stop"
        and event.properties["info"]["time"].get("completed")
    )
    assert types.index("session.idle") > final_completed


def test_three_step_turn_writes_the_file_and_asks_the_llm_once_per_step(finished_turn, repo, llm):
    assert (repo / "notes" / "hello.txt").read_text() == "Hello from the scripted LLM\n"
    assert (repo / "listing.txt").read_text() == "hello.txt\n"
    steps = [(entry["step"], entry["kind"]) for entry in llm.requests_for(finished_turn)]
    assert steps == [(0, "write"), (1, "bash"), (2, "final")]


def test_messages_list_the_user_prompt_and_each_assistant_step(finished_turn, oc):
    messages = oc.messages(finished_turn)

    roles = [message["info"]["role"] for message in messages]
    assert roles == ["user", "assistant", "assistant", "assistant"]
    finishes = [message["info"].get("finish") for message in messages[1:]]
    assert finishes == ["tool-calls", "tool-calls", "stop"]
    assert all(message["info"]["time"].get("completed") for message in messages[1:])
    final_text = [part["text"] for part in messages[-1]["parts"] if part["type"] == "text"]
    assert final_text == ["Done: notes/hello.txt and listing.txt."]
    assert oc.message(finished_turn, messages[0]["info"]["id"])["info"]["role"] == "user"


def test_diff_of_the_turn_by_user_message_id(finished_turn, oc):
    user_message_id = oc.messages(finished_turn)[0]["info"]["id"]

    diff = oc.diff(finished_turn, message_id=user_message_id)

    by_file = {entry["file"]: entry for entry in diff}
    assert set(by_file) == {"notes/hello.txt", "listing.txt"}
    assert by_file["notes/hello.txt"]["additions"] == 1 and by_file["notes/hello.txt"]["status"] == "added"
    assert "+Hello from the scripted LLM" in by_file["notes/hello.txt"]["patch"]
    assert oc.diff(finished_turn) == []
    assert {"notes/hello.txt", "listing.txt"} <= {entry["file"] for entry in oc.vcs_diff(mode="git")}


def test_a_default_server_runs_without_snapshots_unless_configured(llm, repo, tmp_path, server, oc):
    """The orchestrator's servers turn OpenCode's snapshots off (git holds our checkpoints); an
    explicit `"snapshot"` in the configuration still wins over that default."""
    assert oc.config()["snapshot"] is True  # the module's server asked for them
    default = OpenCodeServer(workdir=repo, state_dir=tmp_path / "state", binary=settings.OPENCODE_BIN,
                             config=opencode_config(llm.base_url), startup_timeout=60, request_timeout=15)
    default.start()
    try:
        client = default.client(repo)
        assert client.config()["snapshot"] is False
        collector = EventCollector(default.events(repo))
        collector.start()
        try:
            session_id = start_turn(client, THREE_STEPS, title="no snapshots")
            assert collector.wait(is_event("session.idle", session_id), timeout=60) is not None
        finally:
            collector.stop()
        user_message_id = client.messages(session_id)[0]["info"]["id"]
        assert client.diff(session_id, message_id=user_message_id) == []  # no snapshot, no per-turn diff
        assert "notes/hello.txt" in {entry["file"] for entry in client.vcs_diff(mode="git")}
    finally:
        default.stop()


def test_snapshot_after_the_turn_is_idle_and_finished(finished_turn, oc):
    snapshot = session_snapshot(oc, finished_turn)

    assert snapshot["status"] == "idle" and snapshot["finished"] is True and snapshot["error"] is None
    assert finished_turn not in oc.status()


def test_a_snapshot_of_a_busy_session_can_leave_its_messages_unasked(oc, events, llm):
    session_id = start_turn(oc, "@@sleep 3\n@@final rested", title="busy snapshot")
    wait_until(lambda: llm.requests_for(session_id), timeout=30, message="the sleeping step to be requested")

    busy = session_snapshot(oc, session_id, messages_if_busy=False)
    assert (busy["status"], busy["messages"], busy["finished"]) == ("busy", None, False)
    assert session_snapshot(oc, session_id)["messages"]  # asked by default

    assert events.wait(is_event("session.idle", session_id), timeout=30) is not None
    idle = session_snapshot(oc, session_id, messages_if_busy=False)
    assert idle["finished"] is True and idle["last_assistant"]["role"] == "assistant"


def test_blocking_prompt_returns_the_last_assistant_message(oc):
    session = oc.create_session(title="blocking")

    answer = oc.prompt(session["id"], text="@@final blocking answer", timeout=60)

    assert answer["info"]["role"] == "assistant"
    assert [part["text"] for part in answer["parts"] if part["type"] == "text"] == ["blocking answer"]


def test_abort_mid_run_ends_the_turn_quickly_and_the_llm_hears_nothing_more(oc, events, llm):
    session_id = start_turn(oc, "@@write aborted.txt x\n@@sleep 5\n@@final too late", title="abort")
    wait_until(lambda: any(entry["step"] == 1 for entry in llm.requests_for(session_id)), timeout=30,
               message="the sleeping step to be requested")

    started = time.monotonic()
    assert oc.abort(session_id) is True
    error = events.wait(is_event("session.error", session_id), timeout=5)
    elapsed = time.monotonic() - started

    assert error is not None and error.properties["error"]["name"] == "MessageAbortedError"
    assert elapsed < 2.0
    assert events.wait(is_event("session.idle", session_id), timeout=5) is not None
    wait_until(lambda: any(entry["key"] == session_id for entry in llm.abandoned), timeout=5,
               message="the scripted LLM to see the aborted request hang up")
    assert [entry["step"] for entry in llm.requests_for(session_id)] == [0, 1]
    assert session_snapshot(oc, session_id)["error"]["name"] == "MessageAbortedError"


def test_llm_http_400_fails_the_turn_quickly(oc, events, llm):
    started = time.monotonic()
    session_id = start_turn(oc, "@@fail 400\n@@final unreachable", title="fails")

    error = events.wait(is_event("session.error", session_id), timeout=10)

    assert error is not None and time.monotonic() - started < 5.0
    assert error.properties["error"]["name"] == "APIError"
    assert "scripted failure 400" in error.properties["error"]["data"]["message"]
    assert events.wait(is_event("session.idle", session_id), timeout=5) is not None
    assert [entry["kind"] for entry in llm.requests_for(session_id)] == ["fail"]


def test_unknown_session_is_not_found(oc):
    with pytest.raises(errors.NotFound) as caught:
        oc.get_session("ses_00000000000000000000000000")

    assert caught.value.status == 404 and caught.value.name == "NotFoundError"
    assert "ses_00000000000000000000000000" in caught.value.message
    with pytest.raises(errors.NotFound):
        oc.prompt_async("ses_00000000000000000000000000", text="hello")


def test_malformed_session_id_is_a_server_error(oc):
    with pytest.raises(errors.ServerError) as caught:
        oc.get_session("not-a-session-id")

    assert caught.value.status == 500 and caught.value.name == "UnknownError"


def test_bad_body_is_a_bad_request(oc):
    with pytest.raises(errors.BadRequest) as caught:
        oc.request("POST", "/session", json_body={"title": 5})

    assert caught.value.status == 400


def test_unknown_get_path_answers_html_and_is_an_unexpected_response(oc):
    with pytest.raises(errors.UnexpectedResponse) as caught:
        oc.request("GET", "/no/such/route")

    assert caught.value.status == 200 and "<html" in caught.value.body.lower()


def test_abort_of_an_unknown_session_answers_true(oc):
    assert oc.abort("ses_00000000000000000000000000") is True


def test_unknown_permission_request_is_not_found(oc):
    with pytest.raises(errors.NotFound) as caught:
        oc.reply_permission("per_00000000000000000000000000", "once")

    assert caught.value.name == "PermissionNotFoundError"


def test_wrong_password_is_unauthorized_and_a_closed_port_unreachable(server):
    with OpenCodeClient(server.url, password="wrong", timeout=5) as wrong:
        with pytest.raises(errors.Unauthorized) as caught:
            wrong.health()
    assert caught.value.status == 401
    with OpenCodeClient(f"http://127.0.0.1:{free_port()}", timeout=2) as nobody:
        with pytest.raises(errors.Unreachable):
            nobody.health()


def test_existing_server_wraps_a_running_server_with_the_same_interface(server, repo):
    existing = ExistingServer(server.url, password=server.password, request_timeout=5)

    assert existing.start().version == "1.18.33"
    assert existing.ensure_running() is False and existing.alive() is True
    assert existing.client(repo).status() is not None
    with pytest.raises(errors.Unauthorized):
        ExistingServer(server.url, password="wrong").start()


def test_permission_ask_then_reply_once_lets_the_tool_run(oc, events, repo):
    session_id = start_turn(oc, "@@bash echo allowed > permitted.txt\n@@final ok", title="ask",
                            permission={"bash": "ask"})

    asked = events.wait(is_event("permission.asked", session_id), timeout=30)
    assert asked is not None and asked.properties["permission"] == "bash"
    assert asked.properties["id"] in [request["id"] for request in oc.permissions()]
    assert not (repo / "permitted.txt").exists()

    assert oc.reply_permission(asked.properties["id"], "once") is True

    assert events.wait(is_event("permission.replied", session_id), timeout=10) is not None
    assert events.wait(is_event("session.idle", session_id), timeout=30) is not None
    assert (repo / "permitted.txt").read_text() == "allowed\n"
    assert session_snapshot(oc, session_id)["error"] is None


def test_permission_reject_fails_the_tool(oc, events, repo):
    session_id = start_turn(oc, "@@bash echo refused > refused.txt\n@@final ok", title="reject",
                            permission={"bash": "ask"})
    asked = events.wait(is_event("permission.asked", session_id), timeout=30)
    assert asked is not None

    oc.reply_permission(asked.properties["id"], "reject")

    assert events.wait(is_event("session.idle", session_id), timeout=30) is not None
    assert not (repo / "refused.txt").exists()
    tools = [part for message in oc.messages(session_id) for part in message["parts"] if part["type"] == "tool"]
    assert [(part["tool"], part["state"]["status"]) for part in tools] == [("bash", "error")]


def test_revert_undoes_the_turn_and_unrevert_restores_it(oc, events, repo):
    session_id = start_turn(oc, "@@write reverted.txt temporary\n@@final ok", title="revert")
    assert events.wait(is_event("session.idle", session_id), timeout=30) is not None
    assert (repo / "reverted.txt").exists()
    user_message_id = oc.messages(session_id)[0]["info"]["id"]

    reverted = oc.revert(session_id, message_id=user_message_id)

    assert reverted["revert"]["messageID"] == user_message_id
    assert not (repo / "reverted.txt").exists()
    oc.unrevert(session_id)
    assert (repo / "reverted.txt").read_text() == "temporary"


def test_event_stream_stops_from_another_thread_within_100_ms(server, repo):
    collector = EventCollector(server.events(repo))
    collector.start()

    started = time.monotonic()
    collector.stop()

    assert time.monotonic() - started < 0.1
    assert not collector._thread.is_alive() and collector.error is None


def test_silent_stream_is_treated_as_dead_and_state_is_rebuilt_after_reconnect(server, repo, finished_turn, caplog):
    caplog.set_level(logging.WARNING, logger="sessions.opencode.events")
    rebuilt = []
    stream = server.events(repo, idle_timeout=1.0, backoff_initial=0.05,
                           on_reconnect=lambda s: rebuilt.append(session_snapshot(s.client, finished_turn)))
    with EventCollector(stream) as collector:
        reconnected = collector.wait(lambda event: event.type == RECONNECTED, timeout=10)

    assert reconnected is not None and stream.reconnects >= 1
    assert rebuilt and rebuilt[0]["finished"] is True and len(rebuilt[0]["messages"]) == 4
    # Each reconnect is logged with what ended the previous connection (here: the idle timeout).
    warnings = [record.getMessage() for record in caplog.records if "reconnected" in record.getMessage()]
    assert warnings and "/event reconnected (1) after:" in warnings[0] and "timed out" in warnings[0].lower()


def started_own_server(llm, tmp_path):
    """(its workdir, a managed server of the test's own, started): for tests that kill or freeze it."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    managed = OpenCodeServer(workdir=workdir, state_dir=tmp_path / "state", binary=settings.OPENCODE_BIN,
                             scripted_llm_url=llm.base_url, startup_timeout=60)
    return workdir, managed.start()


def test_dead_server_is_restarted_and_the_event_stream_follows_it(llm, tmp_path):
    workdir, managed = started_own_server(llm, tmp_path)
    try:
        stream = managed.events(str(workdir), backoff_initial=0.05, backoff_max=0.3)
        with EventCollector(stream) as collector:
            first_pid = managed.pid
            os.kill(first_pid, signal.SIGKILL)
            wait_until(lambda: managed.process.poll() is not None, timeout=10, message="the server to die")
            assert managed.alive() is False

            assert managed.ensure_running() is True

            assert managed.pid != first_pid and managed.alive() is True
            assert managed.ensure_running() is False
            assert collector.wait(lambda event: event.type == RECONNECTED, timeout=20) is not None
            assert collector.stream.client.base_url == managed.url
    finally:
        managed.stop()
    assert managed.process.poll() is not None


def test_a_server_that_just_passed_its_health_check_is_not_asked_again_until_that_is_stale(llm, tmp_path):
    _, managed = started_own_server(llm, tmp_path)
    first_pid = managed.pid
    try:
        os.kill(first_pid, signal.SIGSTOP)  # running, but it would answer nothing now
        assert managed.ensure_running() is False and managed.pid == first_pid  # vouched for by start's check

        managed.healthy_at -= HEALTH_FRESH_SECONDS
        assert managed.ensure_running() is True  # asked, no answer: restarted
        assert managed.pid != first_pid and managed.alive() is True
        wait_until(lambda: not os.path.exists(f"/proc/{first_pid}"), timeout=15, message="the frozen server to end")
    finally:
        try:
            os.kill(first_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        managed.stop()


def test_server_has_private_folders_offline_flags_password_and_plugin_stub(server):
    env = server.environment()

    for variable in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        assert env[variable].startswith(str(server.state_dir))
    assert env["OPENCODE_DISABLE_MODELS_FETCH"] == "1" and env["OPENCODE_DISABLE_AUTOUPDATE"] == "1"
    assert env["OPENCODE_SERVER_PASSWORD"] == server.password and len(server.password) >= 24
    config_dir = server.state_dir / "config" / "opencode"
    assert (config_dir / "node_modules").is_dir()
    assert '"@opencode-ai/plugin": "1.18.33"' in (config_dir / "package-lock.json").read_text()
    assert "opencode server listening on" in server.log_tail(100_000)


def test_concurrent_sessions_in_one_directory_all_finish(oc, events):
    session_ids = []
    lock = threading.Lock()

    def run(number):
        session_id = start_turn(oc, f"@@write parallel/{number}.txt {number}\n@@final ok", title=f"p{number}")
        with lock:
            session_ids.append(session_id)

    threads = [threading.Thread(target=run, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for session_id in session_ids:
        assert events.wait(is_event("session.idle", session_id), timeout=60) is not None
    assert len(session_ids) == 4


def inotify_instances(pid):
    """inotify instances the process holds (OpenCode's file watcher makes one per open directory)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except OSError:  # closed meanwhile
            pass
    return count


def test_disposing_a_directory_frees_its_watcher_and_a_later_turn_there_opens_it_again(server, tmp_path):
    """What the worker does when a run is done with a worktree: the instance goes (its inotify
    instance with it, announced on the global stream, which stays connected), and the directory's
    OpenCode session still takes a prompt afterwards."""
    worktree = tmp_path / "disposed"
    worktree.mkdir()
    git("init", "-q", "-b", "main", cwd=worktree)
    client = server.client(worktree)
    collector = EventCollector(server.events(global_stream=True))
    collector.start()
    try:
        before = inotify_instances(server.pid)
        session_id = start_turn(client, "@@write first.txt one\\n\n@@final first turn", title="disposed")
        assert collector.wait(is_event("session.idle", session_id), timeout=60) is not None
        wait_until(lambda: inotify_instances(server.pid) > before, timeout=10,
                   message="the directory's file watcher")

        assert client.dispose_instance() is True

        disposed = collector.wait(lambda event: event.type == "server.instance.disposed"
                                  and event.properties.get("directory") == str(worktree), timeout=10)
        assert disposed is not None
        wait_until(lambda: inotify_instances(server.pid) == before, timeout=10, message="the watcher to close")
        assert collector.stream.reconnects == 0

        since = len(collector.events)
        client.prompt_async(session_id, text="@@write second.txt two\\n\n@@final second turn")
        assert collector.wait(is_event("session.idle", session_id), timeout=60, since=since) is not None
        assert (worktree / "second.txt").read_text() == "two\n"
        assert [m["info"]["role"] for m in client.messages(session_id)].count("user") == 2
    finally:
        collector.stop()
