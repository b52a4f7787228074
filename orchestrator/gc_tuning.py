"""The web process's garbage collector settings (called by orchestrator.asgi at start-up).

The web process holds every console watcher's WebSocket for hours, and each event pushed to 200
watchers of a session allocates tens of thousands of short-lived objects. Python's full collections
(after 100 young ones by default, each scanning every object the process holds) paused its event
loop for 100-300 ms: the live delivery's p99 was 270 ms with 200 watchers at 20 events/s
(bench.console_live). Two changes, measured there (docs/decisions/0251):
- what Django and the project built at start-up is frozen out of the collector's scans (gc.freeze);
- full collections run 100 times less often; young collections are unchanged, so short-lived
  reference cycles are still freed promptly, and the rare full one still frees the old ones.
With both, p99 88-117 ms over four runs (GC off entirely: 86-113 ms).
"""

import gc

# gc's defaults are (700, 10, 10): a full collection after 10 collections of the middle generation.
FULL_COLLECTION_EVERY = 1_000


def tune_collector_for_web() -> None:
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
