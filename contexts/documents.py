"""JSON documents addressed by dot paths: get, set, delete, diff and merge.

Longer than most modules on purpose: paths, diff and the five merge strategies share one
traversal and are tested together as one pure unit (contexts/tests/test_documents*.py).

Plain Python, no Django. A document is a JSON value whose root is an object
(dict); containers are dicts and lists, leaves are str, int, float, bool and None.

Paths
    `config.model` names key "model" inside key "config"; inside a list a segment
    is a non-negative index (`steps.2.name`). The empty path "" is the root. Keys
    that are empty or contain "." cannot be addressed, so `validate_document`
    refuses them. A stored null is a value: `get` answers `MISSING` only when the
    path does not exist.

Immutability
    No function here changes its arguments. `set_value` and `delete_value` copy
    the containers along the path and share everything else with the input, so
    callers must treat documents as values and never mutate them in place.

Diff
    `diff(a, b)` reports the deepest paths at which the documents differ: a path
    present only in `b` is added (with its whole value), only in `a` removed, in
    both with different values changed. Two dicts, or two lists, at the same path
    are compared element by element, so a changed leaf never also reports its
    parents; any other pair (dict against scalar, list against dict, 1 against
    1.0, True against 1) is one change at that path.

Merge
    `merge(source=..., target=..., strategy=...)` merges two documents without a
    common ancestor: what only one side has is kept, dicts present on both sides
    are merged key by key, and every other difference is a conflict that the
    strategy resolves (see `STRATEGIES`). Because there is no ancestor, a merge
    never deletes anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFER_SOURCE = "prefer_source"
PREFER_TARGET = "prefer_target"
LAST_WRITE_WINS = "last_write_wins"
DEEP_MERGE = "deep_merge"
MANUAL = "manual"

STRATEGIES = {
    PREFER_SOURCE: "the source's value wins every conflict",
    PREFER_TARGET: "the target's value wins every conflict",
    LAST_WRITE_WINS: "the side changed most recently at that path wins each conflict (the source on a tie)",
    DEEP_MERGE: "lists are unioned (target order, then new source items); the source wins other conflicts",
    MANUAL: "nothing is merged until every conflict has a resolution supplied by path",
}


class _Missing:
    """The absence of a value, distinct from a stored null."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return "MISSING"

    def __bool__(self):
        return False

    def __reduce__(self):
        return (_Missing, ())


MISSING = _Missing()


class _Delete:
    """Marks a path for removal in a batch of changes (see `apply_changes`)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return "DELETE"

    def __reduce__(self):
        return (_Delete, ())


DELETE = _Delete()


class PathError(ValueError):
    """A path is malformed or cannot be followed through the document."""

    def __init__(self, path, reason):
        super().__init__(f"{path or '(root)'}: {reason}")
        self.path = path
        self.reason = reason


class DocumentError(ValueError):
    """A value is not a JSON document this module can address."""


class MergeError(ValueError):
    """A merge was asked for something it cannot do (unknown strategy, bad resolutions)."""


# --- paths -------------------------------------------------------------------


def parse_path(path: str) -> tuple[str, ...]:
    """Split a dot path into its segments; "" is the root (no segments)."""
    if not isinstance(path, str):
        raise PathError(str(path), "a path is a string such as config.model")
    if path == "":
        return ()
    segments = tuple(path.split("."))
    if any(segment == "" for segment in segments):
        raise PathError(path, "empty segment (leading, trailing or doubled dot)")
    return segments


def join_path(segments) -> str:
    return ".".join(str(segment) for segment in segments)


def _kind(value) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _list_index(path, segment, *, size, allow_end=False) -> int | None:
    """The list index a segment names; None when it is a valid index past the end."""
    if not segment.isdigit() or (len(segment) > 1 and segment.startswith("0")):
        raise PathError(path, f"{segment!r} is not a list index (use 0, 1, 2, ...)")
    index = int(segment)
    if index < size or (allow_end and index == size):
        return index
    return None


def get_value(document, path: str, default=MISSING):
    """The value at `path`, or `default` (MISSING) when the path does not exist.

    Raises PathError when the path runs through a leaf (`a.b` where `a` is 5) or
    uses a non-numeric segment inside a list.
    """
    current = document
    walked = []
    for segment in parse_path(path):
        walked.append(segment)
        if isinstance(current, dict):
            if segment not in current:
                return default
            current = current[segment]
        elif isinstance(current, list):
            index = _list_index(path, segment, size=len(current))
            if index is None:
                return default
            current = current[index]
        else:
            raise PathError(path, f"{join_path(walked[:-1]) or '(root)'} is {_kind(current)}, not an object or list")
    return current


def has_value(document, path: str) -> bool:
    return get_value(document, path) is not MISSING


def set_value(document, path: str, value):
    """A copy of `document` with `value` stored at `path`.

    Missing objects along the path are created. Inside a list the index must
    exist or equal the list's length (append); a larger index, a non-numeric
    segment, or a path through a leaf raises PathError. The root cannot be set.
    """
    segments = parse_path(path)
    if not segments:
        raise PathError(path, "the root cannot be replaced; set a key inside it")
    return _set(document, segments, value, path, 0)


def _set(node, segments, value, path, depth):
    segment = segments[depth]
    last = depth == len(segments) - 1
    if isinstance(node, dict):
        copy = dict(node)
        if last:
            copy[segment] = value
        else:
            child = node.get(segment, MISSING)
            copy[segment] = _set({} if child is MISSING else child, segments, value, path, depth + 1)
        return copy
    if isinstance(node, list):
        index = _list_index(path, segment, size=len(node), allow_end=True)
        if index is None:
            raise PathError(
                path,
                f"index {segment} is past the end of {join_path(segments[:depth]) or '(root)'} (length {len(node)})",
            )
        copy = list(node)
        if index == len(node):
            copy.append(value if last else _set({}, segments, value, path, depth + 1))
        else:
            copy[index] = value if last else _set(node[index], segments, value, path, depth + 1)
        return copy
    raise PathError(path, f"{join_path(segments[:depth]) or '(root)'} is {_kind(node)}, not an object or list")


def delete_value(document, path: str, *, missing_ok=False):
    """A copy of `document` without `path`; removing a list item shifts the ones after it.

    A missing path raises PathError unless `missing_ok`, in which case the
    document is returned unchanged.
    """
    segments = parse_path(path)
    if not segments:
        raise PathError(path, "the root cannot be deleted")
    if get_value(document, path) is MISSING:
        if missing_ok:
            return document
        raise PathError(path, "nothing is stored at this path")
    return _delete(document, segments, path, 0)


def _delete(node, segments, path, depth):
    segment = segments[depth]
    last = depth == len(segments) - 1
    if isinstance(node, dict):
        copy = dict(node)
        if last:
            del copy[segment]
        else:
            copy[segment] = _delete(node[segment], segments, path, depth + 1)
        return copy
    index = int(segment)
    copy = list(node)
    if last:
        del copy[index]
    else:
        copy[index] = _delete(node[index], segments, path, depth + 1)
    return copy


def apply_changes(document, changes: Mapping[str, Any]):
    """Apply {path: value or DELETE} in order; answers the new document.

    Deleting a path that does not exist is not an error (the result is the same).
    """
    result = document
    for path, value in changes.items():
        if value is DELETE:
            result = delete_value(result, path, missing_ok=True)
        else:
            result = set_value(result, path, value)
    return result


def leaves(document, prefix=()):
    """Yield (path, value) for every leaf, descending into objects only.

    Lists are leaves here: a prompt or a table reads them better whole.
    """
    if isinstance(document, dict) and (document or not prefix):
        for key, value in document.items():
            yield from leaves(value, prefix + (key,))
    else:
        yield join_path(prefix), document


# --- validation and equality -----------------------------------------------


def validate_document(document, *, root_must_be_object=True) -> list[str]:
    """Problems that make `document` unusable here; an empty list means it is fine."""
    problems = []
    if root_must_be_object and not isinstance(document, dict):
        return [f"(root): a document is an object, not {_kind(document)}"]
    _validate(document, (), problems)
    return problems


def _validate(value, prefix, problems):
    where = join_path(prefix) or "(root)"
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                problems.append(f"{where}: key {key!r} is not a string")
            elif key == "" or "." in key:
                problems.append(f"{where}: key {key!r} cannot be addressed by a dot path")
            else:
                _validate(child, prefix + (key,), problems)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _validate(child, prefix + (str(index),), problems)
    elif isinstance(value, float):
        if not math.isfinite(value):
            problems.append(f"{where}: {value} is not a JSON number")
    elif value is not None and not isinstance(value, (str, int, bool)):
        problems.append(f"{where}: {_kind(value)} is not a JSON value")


def same(a, b) -> bool:
    """JSON equality that keeps types apart (True is not 1, 1 is not 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def canonical(value) -> str:
    """A string equal for two values exactly when `same` holds (used to dedupe lists)."""
    return json.dumps(_tagged(value), sort_keys=True, separators=(",", ":"))


def _tagged(value):
    # json.dumps writes 1 and 1.0 differently but True and 1 differently too;
    # tagging floats keeps 1.0 apart from 1 even when the float is integral.
    if isinstance(value, dict):
        return {key: _tagged(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_tagged(child) for child in value]
    if isinstance(value, float):
        return {"$float": repr(value)}
    return value


def document_size(document) -> int:
    """Bytes of the compact JSON encoding."""
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())


# --- diff --------------------------------------------------------------------


@dataclass(frozen=True)
class Diff:
    """Leaf-level differences from one document to another.

    `added` {path: new}, `removed` {path: old}, `changed` {path: (old, new)}.
    """

    added: dict = field(default_factory=dict)
    removed: dict = field(default_factory=dict)
    changed: dict = field(default_factory=dict)

    def __bool__(self):
        return bool(self.added or self.removed or self.changed)

    @property
    def paths(self) -> list[str]:
        return [*self.added, *self.removed, *self.changed]

    def as_dict(self) -> dict:
        return {
            "added": dict(self.added),
            "removed": dict(self.removed),
            "changed": {path: {"old": old, "new": new} for path, (old, new) in self.changed.items()},
        }


def diff(a, b) -> Diff:
    """What changed from `a` to `b`, at the deepest paths that differ (see the module docstring)."""
    result = Diff()
    _diff(a, b, (), result)
    return result


def _diff(a, b, prefix, result):
    if isinstance(a, dict) and isinstance(b, dict):
        for key, old in a.items():
            if key in b:
                _diff(old, b[key], prefix + (key,), result)
            else:
                result.removed[join_path(prefix + (key,))] = old
        for key, new in b.items():
            if key not in a:
                result.added[join_path(prefix + (key,))] = new
    elif isinstance(a, list) and isinstance(b, list):
        for index in range(min(len(a), len(b))):
            _diff(a[index], b[index], prefix + (str(index),), result)
        for index in range(len(b), len(a)):
            result.removed[join_path(prefix + (str(index),))] = a[index]
        for index in range(len(a), len(b)):
            result.added[join_path(prefix + (str(index),))] = b[index]
    elif not same(a, b):
        if not prefix:
            raise DocumentError("the roots differ in type; diff compares two objects")
        result.changed[join_path(prefix)] = (a, b)


def _path_order(path):
    # Numeric segments sort as numbers so list items are removed from the end
    # backwards and appended from the front forwards.
    return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in parse_path(path))


def apply_diff(document, changes: Diff):
    """Apply a Diff: `apply_diff(a, diff(a, b))` equals `b`.

    Changed paths are written first, then removals (list items from the highest
    index down), then additions (list items from the lowest index up).
    """
    result = document
    for path, (_old, new) in changes.changed.items():
        result = set_value(result, path, new)
    for path in sorted(changes.removed, key=_path_order, reverse=True):
        result = delete_value(result, path)
    for path in sorted(changes.added, key=_path_order):
        result = set_value(result, path, changes.added[path])
    return result


def diff_as_changes(a, b) -> dict:
    """The {path: value or DELETE} batch that turns `a` into `b`, in apply order."""
    d = diff(a, b)
    changes = {path: new for path, (_old, new) in d.changed.items()}
    for path in sorted(d.removed, key=_path_order, reverse=True):
        changes[path] = DELETE
    for path in sorted(d.added, key=_path_order):
        changes[path] = d.added[path]
    return changes


# --- merge -------------------------------------------------------------------


class ChangeTimes:
    """When each path of one document last changed, for `last_write_wins`.

    `times` maps paths to comparable moments (datetimes or numbers); `default` is
    the moment for paths with no entry at, above or below them (for a context
    with a complete history: when it was created).

    Rule: the moment a path P last changed on a side is the latest of: the times
    recorded for P itself, for any ancestor of P (writing `config` replaced
    `config.model`), and for any descendant of P (writing `config.model` changed
    `config`). Only when none is recorded does `default` apply.
    """

    def __init__(self, times: Mapping[str, Any] | None = None, default=None):
        self.times = dict(times or {})
        self.default = default
        self._subtree = {}
        for path, moment in self.times.items():
            segments = parse_path(path)
            for depth in range(len(segments) + 1):
                prefix = join_path(segments[:depth])
                known = self._subtree.get(prefix)
                if known is None or moment > known:
                    self._subtree[prefix] = moment

    def at(self, path: str):
        candidates = []
        below = self._subtree.get(path)
        if below is not None:
            candidates.append(below)
        segments = parse_path(path)
        for depth in range(len(segments)):
            above = self.times.get(join_path(segments[:depth]))
            if above is not None:
                candidates.append(above)
        if candidates:
            return max(candidates)
        return self.default

    def combine(self, other: ChangeTimes) -> ChangeTimes:
        """The later moment of the two per path (for folding several merges)."""
        times = dict(self.times)
        for path, moment in other.times.items():
            if path not in times or moment > times[path]:
                times[path] = moment
        defaults = [moment for moment in (self.default, other.default) if moment is not None]
        return ChangeTimes(times, max(defaults) if defaults else None)


@dataclass
class MergeConflict:
    """Both sides hold different values at `path`.

    `winner` is "source", "target", "union" (deep_merge lists), "resolution"
    (manual, supplied by the caller) or None (manual, still unresolved); `value`
    is what the merged document holds there (MISSING while unresolved).
    """

    path: str
    source: Any
    target: Any
    winner: str | None
    value: Any = MISSING
    # Which source document this came from, when a caller folds several merges.
    source_id: Any = None

    def as_dict(self) -> dict:
        data = {"path": self.path, "source": self.source, "target": self.target, "winner": self.winner}
        if self.value is not MISSING:
            data["value"] = self.value
        if self.source_id is not None:
            data["source_id"] = self.source_id
        return data


@dataclass
class MergeResult:
    """The merged document and every conflict met on the way.

    For `manual` with unresolved conflicts, `document` is None: nothing may be
    written until a second call supplies the missing resolutions.
    """

    document: dict | None
    conflicts: list[MergeConflict]

    @property
    def unresolved(self) -> list[MergeConflict]:
        return [conflict for conflict in self.conflicts if conflict.winner is None]

    @property
    def used_resolutions(self) -> set[str]:
        return {conflict.path for conflict in self.conflicts if conflict.winner == "resolution"}


def merge(
    *,
    source,
    target,
    strategy: str,
    source_times: ChangeTimes | None = None,
    target_times: ChangeTimes | None = None,
    resolutions: Mapping[str, Any] | None = None,
) -> MergeResult:
    """Merge `source` into `target` with one of `STRATEGIES`.

    `last_write_wins` needs `source_times` and `target_times`. `manual` takes
    `resolutions` {conflict path: value}; a conflict without one stays
    unresolved and the result's document is None. Resolutions for paths that are
    not in conflict are ignored here (see `MergeResult.used_resolutions`) so a
    caller folding several merges can check them across all of them.
    """
    if strategy not in STRATEGIES:
        raise MergeError(f"unknown merge strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not isinstance(source, dict) or not isinstance(target, dict):
        raise DocumentError("merge takes two objects")
    if strategy == LAST_WRITE_WINS and (source_times is None or target_times is None):
        raise MergeError("last_write_wins needs the change times of both sides")
    conflicts: list[MergeConflict] = []
    merger = _Merger(strategy, source_times, target_times, dict(resolutions or {}), conflicts)
    document = merger.merge(source, target, ())
    if strategy == MANUAL and any(conflict.winner is None for conflict in conflicts):
        document = None
    return MergeResult(document=document, conflicts=conflicts)


class _Merger:
    def __init__(self, strategy, source_times, target_times, resolutions, conflicts):
        self.strategy = strategy
        self.source_times = source_times
        self.target_times = target_times
        self.resolutions = resolutions
        self.conflicts = conflicts

    def merge(self, source, target, prefix):
        if isinstance(source, dict) and isinstance(target, dict):
            merged = dict(target)
            for key, value in source.items():
                if key in target:
                    merged[key] = self.merge(value, target[key], prefix + (key,))
                else:
                    merged[key] = value
            return merged
        if same(source, target):
            return target
        return self.resolve(join_path(prefix), source, target)

    def resolve(self, path, source, target):
        winner, value = self.choose(path, source, target)
        self.conflicts.append(MergeConflict(path=path, source=source, target=target, winner=winner, value=value))
        # An unresolved manual conflict keeps the target's value so the walk can
        # go on collecting conflicts; the document is discarded afterwards.
        return target if value is MISSING else value

    def choose(self, path, source, target):
        if self.strategy == PREFER_SOURCE:
            return "source", source
        if self.strategy == PREFER_TARGET:
            return "target", target
        if self.strategy == LAST_WRITE_WINS:
            source_at = self.source_times.at(path)
            target_at = self.target_times.at(path)
            if target_at is not None and (source_at is None or target_at > source_at):
                return "target", target
            return "source", source
        if self.strategy == DEEP_MERGE:
            if isinstance(source, list) and isinstance(target, list):
                return "union", union_lists(target, source)
            return "source", source
        if path in self.resolutions:
            return "resolution", self.resolutions[path]
        return None, MISSING


def union_lists(first: list, second: list) -> list:
    """Items of `first`, then items of `second` not already present; no duplicates."""
    seen = set()
    result = []
    for item in (*first, *second):
        key = canonical(item)
        if key not in seen:
            seen.add(key)
            result.append(item)
    return result
