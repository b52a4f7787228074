"""Directories each OpenCode server holds open, as the worker's own requests show them.

OpenCode opens an instance for every directory a request names and keeps it until
`POST /instance/dispose` for that directory (OpenCode #33720). The OpenCode client hands each
successful request to `note_opencode_request` (one call in sessions.opencode.client); the worker's
metrics thread reads `open_directories` for the servers that still run. Importing this module loads
nothing of Django, so the adapter can call it cheaply.
"""

import threading
from urllib.parse import urlparse

DISPOSE_PATH = "/instance/dispose"
_open = {}  # server base URL -> set of directories
_lock = threading.Lock()


def note_opencode_request(base_url: str, method: str, path: str, directory: str | None) -> None:
    if not directory:
        return
    with _lock:
        directories = _open.setdefault(base_url, set())
        if method == "POST" and path == DISPOSE_PATH:
            directories.discard(directory)
        else:
            directories.add(directory)


def open_directories(*, live_ports: set[int]) -> int:
    """Directories open on the servers still running. A loopback server (a managed one) whose port
    no live server listens on has ended, with its directories: it is forgotten."""
    with _lock:
        for base_url in list(_open):
            parsed = urlparse(base_url)
            if parsed.hostname in ("127.0.0.1", "localhost", "::1") and parsed.port not in live_ports:
                del _open[base_url]
        return sum(len(directories) for directories in _open.values())
