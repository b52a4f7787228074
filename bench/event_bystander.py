"""A second reader of an OpenCode server's global event stream, in a process of its own, that
writes when each tracked event reached it: where an event's latency goes, OpenCode's publishing
or the worker's handling (bench.execution_latency --bystander).

    python -m bench.event_bystander URL PASSWORD OUT

Tracked, as bench.execution_latency's event latencies are: a tool part that completed (by its
callID) and an assistant message that completed (by its id); one JSON line per first sighting:
{"kind": "tool"|"step", "key": ..., "received": epoch seconds}; "connected" on standard output once
the stream is open. Runs until it is sent SIGTERM.

Not on by default: OpenCode serialises and writes every event once per subscriber, so a second
global stream adds to OpenCode's own work in the batches it watches.
"""

import base64
import json
import signal
import sys
import time

import httpx


def tracked(event):
    """("tool" | "step", key) for an event the latencies follow, else None."""
    payload = event.get("payload") or event
    kind, properties = payload.get("type"), payload.get("properties") or {}
    if kind == "message.part.updated":
        part = properties.get("part") or {}
        if part.get("type") == "tool" and (part.get("state") or {}).get("status") == "completed":
            return "tool", part.get("callID")
    elif kind == "message.updated":
        info = properties.get("info") or {}
        if info.get("role") == "assistant" and (info.get("time") or {}).get("completed"):
            return "step", info.get("id")
    return None


def main(argv=None):
    url, password, out = (argv or sys.argv[1:])[:3]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    token = base64.b64encode(f"opencode:{password}".encode()).decode()
    seen = set()
    with open(out, "a", buffering=1) as sink, httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as http:
        with http.stream("GET", f"{url}/global/event", headers={"Authorization": f"Basic {token}"}) as response:
            response.raise_for_status()
            print("connected", flush=True)  # the caller waits for this line (bench.execution_stack.bystander)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                received = time.time()
                try:
                    found = tracked(json.loads(line[5:]))
                except ValueError:
                    continue
                if found is not None and found not in seen:
                    seen.add(found)
                    sink.write(json.dumps({"kind": found[0], "key": found[1], "received": received}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
