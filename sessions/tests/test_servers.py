"""A worker's OpenCode servers: one serves many worktrees, and is replaced after
OPENCODE_SERVER_MAX_DIRECTORIES of them (OpenCode never lets go of a directory's inotify
instance, and Linux allows 128 per user)."""

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
