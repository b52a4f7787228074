"""A worker's OpenCode servers: one serves many worktrees, and is replaced after
OPENCODE_SERVER_MAX_DIRECTORIES of them (a safety net: OpenCode keeps what a directory opened,
its inotify instance included, until told to close it) or near the kernel's memory map limit."""

import pytest

from sessions.execution import servers
from sessions.opencode.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.opencode


@pytest.fixture
def fresh_servers(settings, tmp_path):
    settings.OPENCODE_SERVER_MAX_DIRECTORIES = 2
    settings.OPENCODE_URL = ""
    with ScriptedLLM() as llm:
        settings.OPENCODE_SCRIPTED_LLM_URL = llm.base_url
        try:
            yield tmp_path
        finally:
            servers.shutdown()


def test_a_server_is_retired_after_its_directory_quota_and_stopped_when_idle(fresh_servers):
    folders = [fresh_servers / name for name in ("a", "b", "c")]
    for folder in folders:
        folder.mkdir()
    first = servers.acquire_server(directory=str(folders[0]))
    assert servers.acquire_server(directory=str(folders[1])) is first
    second = servers.acquire_server(directory=str(folders[2]))
    assert second is not first
    assert first.alive() and second.alive()

    servers.release_server(first)
    assert first.alive(), "still in use by the run on b"
    servers.release_server(first)
    assert not first.alive(), "retired and idle: stopped"
    assert servers.acquire_server(directory=str(folders[2])) is second
    assert second.client().health()["healthy"] is True


def test_a_server_near_the_kernels_memory_map_limit_is_retired(fresh_servers, settings):
    folders = [fresh_servers / name for name in ("a", "b")]
    for folder in folders:
        folder.mkdir()
    first = servers.acquire_server(directory=str(folders[0]))
    limit = int(open("/proc/sys/vm/max_map_count").read())
    assert 0 < first.memory_maps() < limit / 2  # a fresh server is far from it
    settings.OPENCODE_SERVER_MAX_MAP_SHARE = first.memory_maps() / limit / 2  # as if it had passed it

    second = servers.acquire_server(directory=str(folders[1]))
    assert second is not first and second.alive()
    servers.release_server(first)
    assert not first.alive(), "retired and idle: stopped"


def test_one_shared_event_stream_hands_each_task_the_events_of_its_own_worktree(fresh_servers):
    """streams.ServerEvents: one /global/event stream per server, events routed by directory
    (through symlinks too), nothing for a queue that unsubscribed, stopped with its server."""
    import queue

    from sessions.opencode.events import Event

    first, second = fresh_servers / "first", fresh_servers / "second"
    first.mkdir()
    second.mkdir()
    (fresh_servers / "link").symlink_to(first)
    server = servers.acquire_server(directory=str(first))
    servers.acquire_server(directory=str(second))
    shared = servers.events_of(server)
    assert servers.events_of(server) is shared
    assert shared.connected.wait(10)
    to_first, to_second, gone, only_created = queue.Queue(), queue.Queue(), queue.Queue(), queue.Queue()
    shared.subscribe(str(fresh_servers / "link"), to_first)
    shared.subscribe(str(second), to_second)
    shared.subscribe(str(second), gone)
    shared.unsubscribe(str(second), gone)
    shared.subscribe(str(second), only_created, types={"session.created"})

    def session_events(events, session_id, timeout=10.0):
        seen = []
        while True:
            try:
                event = events.get(timeout=timeout)
            except queue.Empty:
                return seen
            assert isinstance(event, Event)
            seen.append(event)
            if event.session_id == session_id and event.type == "session.created":
                return seen

    made_first = server.client(str(first)).create_session(title="in first")["id"]
    made_second = server.client(str(second)).create_session(title="in second")["id"]
    got_first = session_events(to_first, made_first)
    got_second = session_events(to_second, made_second)
    assert {e.session_id for e in got_first if e.session_id} == {made_first}
    assert {e.session_id for e in got_second if e.session_id} == {made_second}
    assert gone.empty()
    filtered = [only_created.get(timeout=10)]
    while not only_created.empty():
        filtered.append(only_created.get_nowait())
    assert {e.type for e in filtered} == {"session.created"}, "a subscription with types gets only those"

    servers.shutdown()
    assert not shared.alive


def test_a_worktree_kept_open_after_its_run_is_closed_later_unless_a_run_takes_it_again(fresh_servers, monkeypatch):
    """release_server(keep_open=True), as a run paused for plan review does: its worktree stays open in
    OpenCode for KEEP_OPEN_SECONDS, then is closed; a run that acquires it meanwhile keeps it open."""
    from urllib.parse import urlparse

    from orchestrator import opencode_directories
    from orchestrator.testing import wait_until

    monkeypatch.setattr(servers, "KEEP_OPEN_SECONDS", 1.0)
    reviewed, approved = fresh_servers / "reviewed", fresh_servers / "approved"
    for folder in (reviewed, approved):
        folder.mkdir()
    opencode_directories.open_directories(live_servers={})  # forget what other tests' servers left
    server = servers.acquire_server(directory=str(reviewed))
    assert servers.acquire_server(directory=str(approved)) is server
    port = urlparse(server.url).port

    def open_count():
        return opencode_directories.open_directories(live_servers={port: 0})

    for folder in (reviewed, approved):
        server.client(directory=str(folder)).status()  # OpenCode opens the directory
    assert open_count() == 2

    servers.release_server(server, close=str(reviewed), keep_open=True)
    servers.release_server(server, close=str(approved), keep_open=True)
    assert open_count() == 2  # both kept open for now
    assert servers.acquire_server(directory=str(approved)) is server  # approved: a run takes it again
    assert servers.pending_closes() == {str(reviewed)}  # approved's close is cancelled
    wait_until(lambda: open_count() == 1, timeout=15, message="the reviewed worktree to be closed")
    assert servers.pending_closes() == set()
    servers.release_server(server, close=str(approved))  # its run ends: closed now
    assert open_count() == 0
