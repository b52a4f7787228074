"""One OpenCode event stream per server, shared by every task the worker runs on it.

OpenCode offers `/event?directory=<worktree>` (one directory's events) and `/global/event`
(every directory's, each event naming its directory). A stream per task cost OpenCode itself
~20-30 % more CPU with 12 sessions at once than one global stream did (measured: OpenCode fans
every event out to each subscription), and each task paid for a connection before its prompt.
So the worker reads `/global/event` once per server, on one thread, and hands each event to the
queues subscribed to its directory: the same events a per-directory stream delivered.

A reconnect of the shared stream (nothing is replayed) reaches every subscriber as the
`stream.reconnected` event, so each rebuilds its turn from OpenCode's messages; a stream that
fails for good hands the error to every subscriber, and the next subscriber starts a new one.
"""

import functools
import logging
import os
import threading

from sessions.opencode.events import RECONNECTED

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _key(directory):
    # OpenCode names the directory as it was asked for it; both sides are made comparable. Cached:
    # realpath stats every component of the path, and this runs for every event of the server.
    return os.path.realpath(str(directory))


class ServerEvents:
    """The shared `/global/event` stream of one OpenCode server (see the module docstring)."""

    def __init__(self, server):
        self.stream = server.events(global_stream=True)
        self.connected = self.stream.connected  # set while the stream is subscribed
        self._queues = {}  # directory key -> {queue: the event types it takes, or None for all}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="opencode-events", daemon=True)
        self._thread.start()

    @property
    def alive(self):
        return self._thread.is_alive()

    def subscribe(self, directory, queue, types=None):
        """Deliver `directory`'s events (and reconnects, and a fatal error) into `queue` from now on;
        with `types`, only events of those types. Most of what OpenCode streams for a directory
        (plugins loaded, deltas, session summaries, catalog and watcher news: about 60 % of the
        events of a task) is nothing a turn acts on, and each event put in a queue wakes its thread."""
        with self._lock:
            self._queues.setdefault(_key(directory), {})[queue] = frozenset(types) if types is not None else None

    def unsubscribe(self, directory, queue):
        with self._lock:
            queues = self._queues.get(_key(directory))
            if queues is not None:
                queues.pop(queue, None)
                if not queues:
                    del self._queues[_key(directory)]

    def stop(self):
        self.stream.stop()
        self._thread.join(timeout=2)

    def _pump(self):
        try:
            for event in self.stream:
                with self._lock:
                    if event.type == RECONNECTED:
                        targets = [queue for queues in self._queues.values() for queue in queues]
                    elif event.directory:
                        queues = self._queues.get(_key(event.directory)) or {}
                        targets = [queue for queue, types in queues.items() if types is None or event.type in types]
                    else:
                        targets = []
                for queue in targets:
                    queue.put(event)
        except Exception as error:  # handed to every subscriber, whose run decides
            if self.stream.stopped:
                return
            logger.warning("OpenCode's event stream failed: %s", error)
            with self._lock:
                targets = [queue for queues in self._queues.values() for queue in queues]
            for queue in targets:
                queue.put(error)
