"""The readiness rules of a task graph, in one place (plain Python, no Django).

`tasks.services.task_refresh_readiness` loads a session's statuses and edges, asks
`plan_readiness` what must change and writes it; `task_start` and `task_complete`
ask `start_blockers` and `finish_blockers`. The rules, for required dependencies only
(optional ones order the plan but never hold a task back):

- finish_to_start: the dependent may start once the prerequisite has completed.
- start_to_start: the dependent may start once the prerequisite has started
  (in_progress or any later status).
- finish_to_finish: the dependent may not complete before the prerequisite completes.
- start_to_finish: the dependent may not complete before the prerequisite starts.
- A prerequisite that failed, was skipped or was cancelled will never complete, so a
  pending or ready dependent is skipped, whatever the type; this repeats through the
  graph until nothing changes. (Cancelled counts too: otherwise its dependents would
  wait forever and the plan would never finish.)

Containers (tasks with subtasks) are never executed. Their status follows their
children (`container_status`), and a dependency on a container applies to each of
its leaves: a leaf is held back by its own dependencies and those of every ancestor.
"""

from dataclasses import dataclass, field

from tasks.graph import FINISH_TO_FINISH, FINISH_TO_START, START_TO_FINISH, START_TO_START

PENDING = "pending"
READY = "ready"
ASSIGNED = "assigned"
IN_PROGRESS = "in_progress"
BLOCKED = "blocked"
PAUSED = "paused"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
SKIPPED = "skipped"

NOT_STARTED = frozenset({PENDING, READY, ASSIGNED})
STARTED = frozenset({IN_PROGRESS, BLOCKED, PAUSED, COMPLETED, FAILED})
# A prerequisite in one of these will never complete.
DEAD = frozenset({FAILED, SKIPPED, CANCELLED})
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, SKIPPED})


def start_allows(dependency_type, prerequisite_status):
    """Whether a required dependency of this type lets its dependent start."""
    if dependency_type == FINISH_TO_START:
        return prerequisite_status == COMPLETED
    if dependency_type == START_TO_START:
        return prerequisite_status in STARTED
    return True


def finish_allows(dependency_type, prerequisite_status):
    """Whether a required dependency of this type lets its dependent complete."""
    if dependency_type == FINISH_TO_FINISH:
        return prerequisite_status == COMPLETED
    if dependency_type == START_TO_FINISH:
        return prerequisite_status in STARTED
    return True


def container_status(child_statuses):
    """The status of a container, derived from its children's.

    All children finished: failed if any failed, else completed if any completed,
    else cancelled if all were cancelled, else skipped. Still running: in_progress
    while any child is assigned or in progress (or some have finished), blocked or
    paused when that is all that is left in flight; nothing started: ready when any
    child is ready, else pending.
    """
    statuses = list(child_statuses)
    if not statuses:
        return None
    present = set(statuses)
    if present <= TERMINAL:
        if FAILED in present:
            return FAILED
        if COMPLETED in present:
            return COMPLETED
        if present == {CANCELLED}:
            return CANCELLED
        return SKIPPED
    if present & {ASSIGNED, IN_PROGRESS}:
        return IN_PROGRESS
    if BLOCKED in present:
        return BLOCKED
    if PAUSED in present:
        return PAUSED
    if present & TERMINAL:
        return IN_PROGRESS
    if READY in present:
        return READY
    return PENDING


@dataclass(frozen=True)
class Link:
    prerequisite: object
    dependent: object
    type: str = FINISH_TO_START
    required: bool = True


@dataclass
class ReadinessChanges:
    """What a refresh must write: leaves made ready, leaves skipped (with why), containers re-derived."""

    ready: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)  # id -> the prerequisite id that will never complete
    containers: dict = field(default_factory=dict)  # id -> new derived status

    def __bool__(self):
        return bool(self.ready or self.skipped or self.containers)


class _Graph:
    def __init__(self, parents, links):
        self.parents = parents
        self.children = {}
        for node, parent in parents.items():
            if parent is not None and parent in parents:
                self.children.setdefault(parent, []).append(node)
        self.incoming = {}
        for link in links:
            if link.required:
                self.incoming.setdefault(link.dependent, []).append(link)
        self._depth = {}

    def ancestors_and_self(self, node):
        while node is not None and node in self.parents:
            yield node
            node = self.parents[node]

    def effective_links(self, node):
        for holder in self.ancestors_and_self(node):
            yield from self.incoming.get(holder, ())

    def depth(self, node):
        if node not in self._depth:
            self._depth[node] = sum(1 for _ in self.ancestors_and_self(node))
        return self._depth[node]


def start_blockers(node, statuses, parents, links):
    """The required links (own and inherited) that keep `node` from starting now."""
    graph = _Graph(parents, links)
    return [link for link in graph.effective_links(node) if not start_allows(link.type, statuses[link.prerequisite])]


def finish_blockers(node, statuses, parents, links):
    """The required links (own and inherited) that keep `node` from completing now."""
    graph = _Graph(parents, links)
    return [link for link in graph.effective_links(node) if not finish_allows(link.type, statuses[link.prerequisite])]


def plan_readiness(statuses, parents, links):
    """What must change so the graph obeys the rules; the inputs are left untouched.

    `statuses`: id -> status; `parents`: id -> parent id (None for the root);
    `links`: iterable of Link. Repeats until nothing changes, so skips and container
    statuses propagate through any number of levels.
    """
    graph = _Graph(parents, links)
    current = dict(statuses)
    containers = sorted(graph.children, key=graph.depth, reverse=True)
    leaves = [node for node in current if node not in graph.children]
    changes = ReadinessChanges()
    changed = True
    while changed:
        changed = False
        for container in containers:
            derived = container_status(current[child] for child in graph.children[container])
            if derived != current[container]:
                current[container] = derived
                changes.containers[container] = derived
                changed = True
        for leaf in leaves:
            status = current[leaf]
            if status not in (PENDING, READY):
                continue
            links_in = list(graph.effective_links(leaf))
            dead = next((link for link in links_in if current[link.prerequisite] in DEAD), None)
            if dead is not None:
                current[leaf] = SKIPPED
                changes.skipped[leaf] = dead.prerequisite
                if leaf in changes.ready:
                    changes.ready.remove(leaf)
                changed = True
            elif status == PENDING and all(start_allows(link.type, current[link.prerequisite]) for link in links_in):
                current[leaf] = READY
                changes.ready.append(leaf)
                changed = True
    # A container re-derived back to the status it started with is no change at all.
    changes.containers = {node: status for node, status in changes.containers.items() if status != statuses[node]}
    return changes


def plan_summary(leaf_statuses):
    """Counts of a plan's leaves by outcome, and whether it has finished.

    {"total", "completed", "failed", "skipped", "cancelled", "other", "finished", "outcome"}:
    outcome is None while anything else remains, "completed" when every leaf completed
    (cancelled ones aside), "partially_completed" when some completed and some failed or
    were skipped, "failed" when none completed.
    """
    counts = {"total": 0, COMPLETED: 0, FAILED: 0, SKIPPED: 0, CANCELLED: 0}
    for status in leaf_statuses:
        counts["total"] += 1
        if status in counts:
            counts[status] += 1
    counts["other"] = counts["total"] - counts[COMPLETED] - counts[FAILED] - counts[SKIPPED] - counts[CANCELLED]
    counts["finished"] = counts["other"] == 0
    if not counts["finished"]:
        outcome = None
    elif counts[FAILED] == 0 and counts[SKIPPED] == 0 and counts[COMPLETED] > 0:
        outcome = "completed"
    elif counts[COMPLETED] > 0:
        outcome = "partially_completed"
    else:
        outcome = "failed"
    counts["outcome"] = outcome
    return counts
