"""A channel layer that reaches every process on one machine without Redis.

The embedded default runs the web server and the Celery worker as separate
processes, so an in-memory layer would never carry a worker's event to a
browser. This layer writes each `group_send` as a row into a small SQLite file
under var/; every process that has group members polls that file (every 20 ms)
and delivers new rows to its local members through the in-memory machinery.

Limits, by design: groups only (a message sent to one specific channel stays
in its process), and messages older than `expiry` seconds are deleted. The
database's SessionEvent rows stay the durable record; this only carries news.
With REDIS_URL set, channels-redis is used instead.
"""

import asyncio
import json
import sqlite3
import time

from channels.layers import InMemoryChannelLayer

SCHEMA = """
CREATE TABLE IF NOT EXISTS channel_message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class SQLiteChannelLayer(InMemoryChannelLayer):
    def __init__(self, path, poll_interval=0.02, expiry=60, **kwargs):
        super().__init__(expiry=expiry, **kwargs)
        self.path = path
        self.poll_interval = poll_interval
        self._pollers = {}
        self._ensure_schema()

    def _connect(self):
        connection = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _ensure_schema(self):
        with self._connect() as connection:
            connection.execute(SCHEMA)

    def _insert(self, group, message):
        connection = self._connect()
        try:
            connection.execute(
                "INSERT INTO channel_message (grp, body, created) VALUES (?, ?, ?)",
                (group, json.dumps(message), time.time()),
            )
        finally:
            connection.close()

    def _read_after(self, last_id):
        connection = self._connect()
        try:
            if last_id is None:
                row = connection.execute("SELECT COALESCE(MAX(id), 0) FROM channel_message").fetchone()
                return row[0], []
            rows = connection.execute(
                "SELECT id, grp, body FROM channel_message WHERE id > ? ORDER BY id", (last_id,)
            ).fetchall()
            if rows and rows[-1][0] % 500 == 0:
                connection.execute(
                    "DELETE FROM channel_message WHERE created < ?", (time.time() - self.expiry,)
                )
            return (rows[-1][0] if rows else last_id), rows
        finally:
            connection.close()

    async def group_send(self, group, message):
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        await asyncio.to_thread(self._insert, group, message)

    async def group_add(self, group, channel):
        await super().group_add(group, channel)
        ready = self._ensure_poller()
        if ready is not None:
            # Wait until the poller has read its starting point, so a message
            # sent after group_add returns is never skipped.
            await ready

    def _ensure_poller(self):
        loop = asyncio.get_running_loop()
        poller = self._pollers.get(loop)
        if poller is None or poller.done():
            ready = loop.create_future()
            self._pollers[loop] = loop.create_task(self._poll(ready))
            return ready
        return None

    async def _poll(self, ready):
        last_id, _ = await asyncio.to_thread(self._read_after, None)
        ready.set_result(True)
        while True:
            last_id, rows = await asyncio.to_thread(self._read_after, last_id)
            for _, group, body in rows:
                if group in self.groups:
                    await InMemoryChannelLayer.group_send(self, group, json.loads(body))
            if not rows:
                await asyncio.sleep(self.poll_interval)

    async def flush(self):
        await super().flush()
        for poller in self._pollers.values():
            poller.cancel()
        self._pollers = {}

    async def close(self):
        await self.flush()
