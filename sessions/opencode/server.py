"""Start, watch and stop an `opencode serve` process, or wrap an existing server.

Choices:
- One server per worker process, serving many directories and sessions: each call names its
  worktree with `?directory=`. A server costs ~0.5 GB and is CPU-bound, so one per session would
  not scale; the first call for a new directory costs ~1 s once.
- The server listens on loopback only (`--hostname 127.0.0.1 --port 0`), with a generated
  `OPENCODE_SERVER_PASSWORD` (HTTP Basic auth, user "opencode"), so other local users cannot drive
  it. Its stdout line `opencode server listening on http://...` gives the URL; requests are sent
  only after that line and a health check (a request that connects while the port is opening can
  hang).
- Private HOME and XDG_* folders under `state_dir` keep its SQLite database, snapshots and logs
  away from the user's own OpenCode, and the offline flags stop it from fetching models, updates,
  LSP servers, default plugins or Claude Code settings. A plugin stub in its config folder
  (`node_modules/` + `package-lock.json` listing `@opencode-ai/plugin` at the pinned version) stops
  the `npm install` it would otherwise start.
- Configuration: explicit `config` (dict or JSON text) or `config_path`, else the settings
  OPENCODE_CONFIG_CONTENT / OPENCODE_CONFIG passed through unchanged, else, when given
  `scripted_llm_url`, the scripted demo model's configuration.
- Snapshots off by default (`snapshots=False`, written as the server's global configuration, so
  any configuration that sets `"snapshot"` wins): OpenCode's snapshots are a second git store of
  every worktree, updated at every step; the orchestrator keeps its own checkpoints and diffs in
  git, so they only cost time (a job's first prompt in a new directory ~1.2 s sooner). OpenCode's
  own per-turn diff (`GET /session/{id}/diff`) is empty without them; nothing here uses it.
- `ensure_running()` restarts a server whose process died (sessions it was running are lost to it
  and must be reconciled by the caller); `stop()` sends TERM to its process group, then KILL.
- `ExistingServer` gives the same interface over a server started elsewhere (OPENCODE_URL).
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from .client import OpenCodeClient
from .errors import OpenCodeError, Unreachable
from .events import EventStream
from .scripted_llm import opencode_config

PINNED_VERSION = "1.18.33"
OFFLINE_FLAGS = (
    "OPENCODE_DISABLE_MODELS_FETCH",
    "OPENCODE_DISABLE_AUTOUPDATE",
    "OPENCODE_DISABLE_LSP_DOWNLOAD",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS",
    "OPENCODE_DISABLE_SHARE",
    "OPENCODE_DISABLE_EXTERNAL_SKILLS",
    "OPENCODE_DISABLE_CLAUDE_CODE",
)
PRIVATE_FOLDERS = {
    "HOME": "home",
    "XDG_DATA_HOME": "data",
    "XDG_CONFIG_HOME": "config",
    "XDG_CACHE_HOME": "cache",
    "XDG_STATE_HOME": "state",
}
LISTENING = "listening on "
# A worker killed with -9 cannot stop its server; Linux can: setpriv (util-linux) asks for SIGTERM
# when the thread that started the server dies, so no server outlives its worker. The caller must
# start servers from a thread that lives as long as the worker (sessions.execution.servers does).
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "TERM", "--") if shutil.which("setpriv") else ()


class ServerStartFailed(OpenCodeError):
    """`opencode serve` exited or did not print its listening line before the deadline."""


def _setting(name, default=None):
    try:
        from django.conf import settings

        return getattr(settings, name, default)
    except Exception:  # noqa: BLE001 - no Django settings: plain default
        return default


def write_plugin_stub(config_dir, version=PINNED_VERSION):
    """Make OpenCode's config folder look like `@opencode-ai/plugin@version` is installed."""
    config_dir = Path(config_dir)
    package_dir = config_dir / "node_modules" / "@opencode-ai" / "plugin"
    package_dir.mkdir(parents=True, exist_ok=True)
    (package_dir / "package.json").write_text(json.dumps({"name": "@opencode-ai/plugin", "version": version}))
    dependencies = {"@opencode-ai/plugin": version}
    (config_dir / "package.json").write_text(json.dumps({"dependencies": dependencies}, indent=2))
    (config_dir / "package-lock.json").write_text(json.dumps({
        "name": "opencode",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {"dependencies": dependencies},
            "node_modules/@opencode-ai/plugin": {"version": version},
        },
    }, indent=2))


class OpenCodeServer:
    """One managed `opencode serve` process.

    - `workdir`: the folder it starts in (its default directory; calls pass their own).
    - `state_dir`: private HOME/XDG folders, logs (default VAR_DIR/opencode-state/<pid>).
    - `binary`: the opencode executable (default OPENCODE_BIN).
    - `config` (dict or JSON text), `config_path`, or `scripted_llm_url`: see the module docstring.
    - `password`: Basic-auth password (default: generated).
    - `env`: extra environment variables.
    - `snapshots`: OpenCode's own snapshots (default off; see the module docstring).
    """

    def __init__(self, *, workdir=None, state_dir=None, binary=None, config=None, config_path=None,
                 scripted_llm_url=None, permission=None, password=None, startup_timeout=None,
                 request_timeout=None, env=None, snapshots=False):
        var_dir = Path(_setting("VAR_DIR", Path.cwd() / "var"))
        self.state_dir = Path(state_dir or var_dir / "opencode-state" / str(os.getpid())).resolve()
        self.workdir = Path(workdir or self.state_dir / "workdir").resolve()
        self.binary = str(binary or _setting("OPENCODE_BIN") or "opencode")
        self.password = password or secrets.token_urlsafe(24)
        self.startup_timeout = float(startup_timeout or _setting("OPENCODE_STARTUP_TIMEOUT", 60.0))
        self.request_timeout = float(request_timeout or _setting("OPENCODE_REQUEST_TIMEOUT", 30.0))
        self.extra_env = dict(env or {})
        self.snapshots = bool(snapshots)
        self.config_env = self._config_env(config, config_path, scripted_llm_url, permission)
        self.process = None
        self.url = None
        self.version = None
        self.healthy_at = None  # time.monotonic() of the last passed health check
        self.starts = 0
        self.log_path = None
        self._lock = threading.RLock()
        self._client = None

    @staticmethod
    def _config_env(config, config_path, scripted_llm_url, permission):
        if config is not None:
            content = config if isinstance(config, str) else json.dumps(config)
            return {"OPENCODE_CONFIG_CONTENT": content}
        if config_path is not None:
            return {"OPENCODE_CONFIG": str(config_path)}
        content = _setting("OPENCODE_CONFIG_CONTENT")
        path = _setting("OPENCODE_CONFIG")
        if scripted_llm_url is None and (content or path):
            env = {}
            if content:
                env["OPENCODE_CONFIG_CONTENT"] = content
            if path:
                env["OPENCODE_CONFIG"] = str(path)
            return env
        if scripted_llm_url is not None:
            return {"OPENCODE_CONFIG_CONTENT": json.dumps(opencode_config(scripted_llm_url, permission=permission))}
        return {}

    @property
    def pid(self):
        return self.process.pid if self.process is not None else None

    def environment(self):
        """The environment `opencode serve` runs with (private folders, offline flags, config)."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("OPENCODE_", "XDG_"))}
        for variable, folder in PRIVATE_FOLDERS.items():
            path = self.state_dir / folder
            path.mkdir(parents=True, exist_ok=True)
            env[variable] = str(path)
        for flag in OFFLINE_FLAGS:
            env[flag] = "1"
        env["OPENCODE_SERVER_PASSWORD"] = self.password
        env.update(self.config_env)
        env.update(self.extra_env)
        return env

    def start(self):
        """Start the process and wait until it listens and answers its health check.

        Raises ServerStartFailed (with the log's tail) when it exits or misses the deadline.
        """
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                return self
            self.workdir.mkdir(parents=True, exist_ok=True)
            env = self.environment()
            write_plugin_stub(Path(env["XDG_CONFIG_HOME"]) / "opencode")
            # The global configuration has the lowest precedence: explicit configurations win.
            (Path(env["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json").write_text(
                json.dumps({"snapshot": self.snapshots}))
            logs = self.state_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            self.starts += 1
            self.log_path = logs / f"serve-{self.starts}.log"
            log = open(self.log_path, "ab")
            try:
                self.process = subprocess.Popen(
                    [*DIE_WITH_PARENT, self.binary, "serve", "--hostname", "127.0.0.1", "--port", "0", "--print-logs"],
                    cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                    start_new_session=True,
                )
            except OSError as error:
                raise ServerStartFailed(f"cannot run {self.binary}: {error}") from error
            finally:
                log.close()
            listening = threading.Event()
            found = {}
            threading.Thread(target=self._pump_stdout, args=(self.process, listening, found),
                             name="opencode-stdout", daemon=True).start()
            deadline = time.monotonic() + self.startup_timeout
            while not listening.wait(0.05):
                if self.process.poll() is not None:
                    raise ServerStartFailed(f"opencode serve exited with {self.process.returncode}: "
                                            f"{self.log_tail()}")
                if time.monotonic() > deadline:
                    self._terminate()
                    raise ServerStartFailed(f"opencode serve did not listen within {self.startup_timeout}s: "
                                            f"{self.log_tail()}")
            self.url = found["url"]
            self._client = OpenCodeClient(self.url, password=self.password, timeout=self.request_timeout)
            self._wait_healthy(deadline)
            return self

    def _pump_stdout(self, process, listening, found):
        """Copy stdout to the log; note the listening line. Runs until the process closes stdout."""
        with open(self.log_path, "ab") as log:
            for raw in iter(process.stdout.readline, b""):
                log.write(b"[stdout] " + raw)
                log.flush()
                line = raw.decode(errors="replace").strip()
                if not listening.is_set() and LISTENING in line:
                    found["url"] = line.split(LISTENING, 1)[1].strip()
                    listening.set()
        process.stdout.close()

    def _wait_healthy(self, deadline):
        last_error = None
        while time.monotonic() < deadline:
            try:
                health = self._client.health(timeout=min(5.0, self.request_timeout))
            except OpenCodeError as error:
                last_error = error
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
                continue
            if health.get("healthy"):
                self.version = health.get("version")
                self.healthy_at = time.monotonic()
                return health
            last_error = health
            time.sleep(0.1)
        self._terminate()
        raise ServerStartFailed(f"opencode serve is not healthy: {last_error}; {self.log_tail()}")

    def log_tail(self, size=3000):
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-size:].decode(errors="replace")

    def alive(self):
        """True when the process runs and answers its health check."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            healthy = bool(self._client.health(timeout=5.0).get("healthy"))
        except OpenCodeError:
            return False
        if healthy:
            self.healthy_at = time.monotonic()
        return healthy

    def memory_maps(self):
        """How many memory mappings the server process has (Linux), or None when that cannot be read."""
        try:
            with open(f"/proc/{self.pid}/maps", "rb") as maps:
                return maps.read().count(b"\n")
        except (OSError, TypeError):
            return None

    def ensure_running(self):
        """Start the server if it is not running (first use, or its process died).

        Returns True when a (re)start happened. A server that runs but fails its health check is
        killed and restarted; one that passed it less than HEALTH_FRESH_SECONDS ago is not asked again.
        """
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                if _recently(self.healthy_at) or self.alive():
                    return False
                self._terminate()
            self.start()
            return True

    def client(self, directory=None):
        """An OpenCodeClient of this server (default directory: `directory`)."""
        if self._client is None:
            raise Unreachable("the server is not started")
        if directory is None:
            return self._client
        return self._client.with_directory(directory)

    def events(self, directory=None, **options):
        """An EventStream of this server for `directory` (see EventStream for options); after a
        restart it reconnects to the new address."""
        self.client()
        return EventStream(lambda: self.client(directory), directory=directory, **options)

    def stop(self, *, timeout=10.0):
        """Stop the process and its process group: TERM, then KILL after `timeout` seconds."""
        with self._lock:
            self._terminate(timeout=timeout)
            if self._client is not None:
                self._client.close()
                self._client = None

    def _terminate(self, *, timeout=10.0):
        process = self.process
        if process is None:
            return
        if process.poll() is not None:
            return
        _signal_group(process, signal.SIGTERM)
        _signal_group(process, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=5)
            return
        # Tool subprocesses may outlive the server in its group: end them too.
        _signal_group(process, signal.SIGKILL)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def _signal_group(process, signum):
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# A passed health check vouches for a running server this long. Every run checks its server when it
# starts, one after the other on the worker's keeper thread (sessions.execution.servers): in a burst
# of 20 starts OpenCode, busy opening their worktrees, answered slowly and the last start waited ~4 s
# for its turn. Now a burst asks once; a server that stops answering still fails the runs' own calls.
HEALTH_FRESH_SECONDS = 5.0


def _recently(healthy_at):
    return healthy_at is not None and time.monotonic() - healthy_at < HEALTH_FRESH_SECONDS


class ExistingServer:
    """A server started elsewhere (OPENCODE_URL), behind the same interface as OpenCodeServer.

    `start()` and `ensure_running()` only check its health (raising Unreachable when it does not
    answer: it cannot be restarted from here); `stop()` only closes the client.
    """

    def __init__(self, url=None, *, password=None, request_timeout=None):
        self.url = str(url or _setting("OPENCODE_URL") or "").rstrip("/")
        if not self.url:
            raise ValueError("ExistingServer needs a URL (OPENCODE_URL)")
        self.password = password if password is not None else _setting("OPENCODE_SERVER_PASSWORD")
        self.request_timeout = float(request_timeout or _setting("OPENCODE_REQUEST_TIMEOUT", 30.0))
        self.pid = None
        self.version = None
        self.healthy_at = None
        self._client = OpenCodeClient(self.url, password=self.password, timeout=self.request_timeout)

    def start(self):
        health = self._client.health(timeout=min(5.0, self.request_timeout))
        if not health.get("healthy"):
            raise Unreachable(f"{self.url} is not healthy: {health}")
        self.version = health.get("version")
        self.healthy_at = time.monotonic()
        return self

    def alive(self):
        try:
            healthy = bool(self._client.health(timeout=5.0).get("healthy"))
        except OpenCodeError:
            return False
        if healthy:
            self.healthy_at = time.monotonic()
        return healthy

    def memory_maps(self):
        return None  # another host's process

    def ensure_running(self):
        if not _recently(self.healthy_at):
            self.start()
        return False

    def client(self, directory=None):
        return self._client if directory is None else self._client.with_directory(directory)

    def events(self, directory=None, **options):
        return EventStream(self.client(directory), **options)

    def stop(self, **_options):
        self._client.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def server_from_settings(*, workdir=None, state_dir=None, scripted_llm_url=None):
    """ExistingServer when OPENCODE_URL is set, else a managed OpenCodeServer (not yet started)."""
    if _setting("OPENCODE_URL"):
        return ExistingServer()
    return OpenCodeServer(workdir=workdir, state_dir=state_dir, scripted_llm_url=scripted_llm_url)
