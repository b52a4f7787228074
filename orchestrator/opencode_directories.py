"""Directories each OpenCode server holds open, as the worker's own requests show them.

OpenCode opens an instance for every directory a request names and keeps it until
`POST /instance/dispose` for that directory (OpenCode #33720). The OpenCode client hands each
successful request to `note_opencode_request` (one call in sessions.opencode.client); the worker's
metrics thread reads `open_directories` for the servers that still run. Importing this module loads
nothing of Django, so the adapter can call it cheaply.
"""

import threading
import time
from urllib.parse import urlparse

DISPOSE_PATH = "/instance/dispose"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_open = {}  # server base URL -> {directory: time.time() of the last request naming it}
_lock = threading.Lock()


def note_opencode_request(base_url: str, method: str, path: str, directory: str | None) -> None:
    if not directory:
        return
    with _lock:
        directories = _open.setdefault(base_url, {})
        if method == "POST" and path == DISPOSE_PATH:
            directories.pop(directory, None)
        else:
            directories[directory] = time.time()


def open_directories(*, live_servers: dict[int, float]) -> int:
    """Directories open on the servers still running; `live_servers` maps the port of each running
    managed (loopback) server to its process's start time. A port no server listens on any more
    took its directories with it; so did the server that listened on a port before the one that
    listens now (OpenCode tries port 4096 first, so a replacement often gets its predecessor's)."""
    with _lock:
        for base_url in list(_open):
            parsed = urlparse(base_url)
            if parsed.hostname not in LOOPBACK:
                continue  # a server of OPENCODE_URL: not ours to see start or stop
            started_at = live_servers.get(parsed.port)
            if started_at is None:
                del _open[base_url]
                continue
            directories = _open[base_url]
            for directory in [name for name, noted_at in directories.items() if noted_at < started_at]:
                del directories[directory]
        return sum(len(directories) for directories in _open.values())
