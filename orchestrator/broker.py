"""The embedded default's Celery broker: kombu's filesystem transport, made safe for several processes.

Kombu's filesystem producer creates the message file and then writes it, while a
consumer in another process may already move and read it, finding it empty: the
worker then dies on a JSON decode error. Here each message is written under a
temporary name (which no consumer picks up) and renamed into place, atomically.
Registered as the `fsqueue://` broker URL scheme.
"""

import os
import uuid
from time import monotonic

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"
        self._write(partial, str_to_bytes(dumps(payload)))
        os.replace(partial, final)

    def _write(self, path, data):
        with open(path, "wb") as handle:
            handle.write(data)


class Transport(filesystem.Transport):
    Channel = Channel
    driver_name = "fsqueue"


TRANSPORT_ALIASES.setdefault("fsqueue", "orchestrator.broker:Transport")
