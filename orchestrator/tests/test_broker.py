"""The embedded broker never shows a consumer a half-written message file.

Kombu's own filesystem transport creates the message file, then writes it; a worker in
another process could take the empty file and die decoding it (seen under load). Ours
writes under a name no consumer reads and renames the file into place once complete.
"""

import os

from kombu import Connection

from orchestrator import broker


def test_a_message_is_visible_only_after_it_is_completely_written(tmp_path, monkeypatch):
    folders = {name: tmp_path / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir()
    seen_while_writing = []
    original_write = broker.Channel._write

    def spying_write(channel, path, data):
        original_write(channel, path, data)
        # Written, not yet renamed: what could a consumer listing the folder take now?
        seen_while_writing.append(sorted(os.listdir(folders["queue"])))

    monkeypatch.setattr(broker.Channel, "_write", spying_write)
    options = {
        "data_folder_in": str(folders["queue"]), "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]), "control_folder": str(folders["control"]),
    }
    with Connection("fsqueue://", transport_options=options) as connection:
        queue = connection.SimpleQueue("jobs")
        queue.put({"n": 1})
        assert len(seen_while_writing) == 1
        (visible,) = seen_while_writing
        assert [name for name in visible if name.endswith(".msg")] == []
        assert [name for name in visible if name.endswith(".msg.partial")]
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
