"""Every write to a context: create, set by path, merge, share, expire, purge.

Writes use optimistic locking. A writer names the version it read; the new
document is computed from the row as stored at that version and written with
one compare-and-set statement,
    UPDATE contexts_context SET data = ..., version = version + 1
    WHERE id = ... AND version = <expected>
so a concurrent write in between makes the statement match nothing and the
caller gets StaleVersion with the current version; nothing is written. The
same transaction adds one ContextChange row per changed leaf path.

Writers that never read the document (the engine recording a task output, a
merge or share that names no version) lock the row instead and apply their
change to whatever is current, through the same compare-and-set statement.

`actor` is either a user or a short label such as "engine" or "agent:CODER-1".

Over 600 lines on purpose: every writer here (set, merge, share, task outputs) goes through the
one compare-and-set write (`_write`) and its history rows; split apart, that write would cross modules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone

from contexts import documents
from contexts.documents import DELETE, MISSING, Diff, MergeConflict
from contexts.models import RETENTION, SESSION_CONTEXT_NAME, ChangeAction, Context, ContextChange, Scope
from orchestrator.errors import Conflict, NotFound, StaleVersion, ValidationFailed

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from agents.models import Agent
    from sessions.models import CodingSession

    # Who changed a context: a user, or a short label such as "engine" or "agent:CODER-1".
    ContextActor = AbstractBaseUser | str | None

MERGE_STRATEGIES = tuple(documents.STRATEGIES)
COPY = "copy"
SHARE_STRATEGIES = (COPY, *MERGE_STRATEGIES)
# A context is read into agents' prompts and rewritten whole on every change;
# beyond a few megabytes it belongs in a file, not here.
MAX_DOCUMENT_BYTES = 4_000_000
# Retries of writers that re-read on a stale version (task outputs, merges and
# shares without a named version). Each failed attempt means another writer
# succeeded, so a writer is starved only by that many writes in a row; a
# session rarely runs more tasks at once.
WRITE_ATTEMPTS = 50


@dataclass
class MergeOutcome:
    """What a merge or share did: the written context, the conflicts it resolved, the changes."""

    context: Context
    conflicts: list[MergeConflict] = field(default_factory=list)
    changes: Diff = field(default_factory=Diff)


def _actor_fields(actor) -> tuple[str, Any]:
    if actor is None:
        return "", None
    if isinstance(actor, str):
        return actor[:250], None
    if getattr(actor, "is_authenticated", False):
        return actor.get_username()[:250], actor
    return str(actor)[:250], None


def _check_document(data, *, field_name="data"):
    if not isinstance(data, dict):
        raise ValidationFailed(field=field_name, rule="must be a JSON object")
    problems = documents.validate_document(data)
    if problems:
        raise ValidationFailed(errors={field_name: problems})
    size = documents.document_size(data)
    if size > MAX_DOCUMENT_BYTES:
        raise ValidationFailed(
            field=field_name, rule=f"is {size} bytes; a context holds at most {MAX_DOCUMENT_BYTES}"
        )


def _expiry_on_create(*, scope, session, now):
    if scope == Scope.TEMPORARY or scope == Scope.AGENT:
        return now + RETENTION[scope]
    if scope == Scope.SESSION and session is not None and session.ended_at is not None:
        return session.ended_at + RETENTION[Scope.SESSION]
    return None


def _use_fields(context, now) -> dict:
    """Fields that record a use: agent contexts live 7 days after their last use."""
    fields = {"last_used_at": now}
    if context.scope == Scope.AGENT:
        fields["expires_at"] = now + RETENTION[Scope.AGENT]
    return fields


def context_create(
    *,
    scope: str,
    name: str,
    data: dict | None = None,
    session: CodingSession | None = None,
    agent: Agent | None = None,
    actor: ContextActor = None,
) -> Context:
    """Create a context at version 1; its expiry follows the scope's retention.

    Session contexts belong to a session, agent contexts to an agent, global
    contexts to neither; a temporary one may name either. Names are unique per
    session, per agent, and among global contexts (Conflict otherwise).
    """
    if scope not in Scope.values:
        raise ValidationFailed(field="scope", rule=f"must be one of {', '.join(Scope.values)}")
    name = (name or "").strip()
    if not name:
        raise ValidationFailed(field="name", rule="is required")
    if len(name) > Context._meta.get_field("name").max_length:
        raise ValidationFailed(field="name", rule="is too long")
    errors = {}
    if scope == Scope.SESSION and session is None:
        errors["session"] = ["a session context needs a session"]
    if scope == Scope.AGENT and agent is None:
        errors["agent"] = ["an agent context needs an agent"]
    if scope in (Scope.AGENT, Scope.GLOBAL) and session is not None:
        errors["session"] = [f"a {scope} context has no session"]
    if scope in (Scope.SESSION, Scope.GLOBAL) and agent is not None:
        errors["agent"] = [f"a {scope} context has no agent"]
    if errors:
        raise ValidationFailed(errors=errors)
    data = {} if data is None else data
    _check_document(data)

    now = timezone.now()
    _label, user = _actor_fields(actor)
    try:
        with transaction.atomic():
            return Context.objects.create(
                scope=scope,
                name=name,
                data=data,
                session=session,
                agent=agent,
                created_by=user,
                created_at=now,
                updated_at=now,
                last_used_at=now,
                expires_at=_expiry_on_create(scope=scope, session=session, now=now),
            )
    except IntegrityError:
        existing = (
            Context.objects.filter(scope=scope, name=name, session=session, agent=agent)
            .values_list("pk", flat=True)
            .first()
        )
        raise Conflict(
            f"A {scope} context named {name!r} already exists here", details={"existing_id": existing}
        ) from None


def _history_rows(context, version, changes: Diff, actor, note, now) -> list[ContextChange]:
    label, user = _actor_fields(actor)
    common = {
        "context_id": context.pk,
        "version": version,
        "actor": label,
        "user": user,
        "note": note[:500],
        "created_at": now,
    }
    rows = [ContextChange(path=p, action=ChangeAction.ADD, new_value=v, **common) for p, v in changes.added.items()]
    rows += [
        ContextChange(path=p, action=ChangeAction.REMOVE, old_value=v, **common) for p, v in changes.removed.items()
    ]
    rows += [
        ContextChange(path=p, action=ChangeAction.CHANGE, old_value=old, new_value=new, **common)
        for p, (old, new) in changes.changed.items()
    ]
    return rows


def _read_row(context_id, *, lock=False) -> dict:
    queryset = Context.objects.filter(pk=context_id)
    if lock:
        queryset = queryset.select_for_update()
    row = queryset.values("data", "version").first()
    if row is None:
        raise NotFound(f"Context {context_id} does not exist", details={"id": context_id})
    return row


def _write(*, context, expected_version, compute, actor, note="", extra_fields=None) -> Diff:
    """Compute the new document from the stored one at `expected_version` and compare-and-set it.

    `compute(data)` answers the new document. A stale `expected_version`, or a
    write that lands between the read and the update, raises StaleVersion and
    writes nothing. No effective change writes nothing either (the version stays).

    `expected_version=None` is for writers that did not read the document
    first (task outputs, merges and shares that name no version): the row is
    locked (SELECT ... FOR UPDATE) and its current version is the expected one,
    so such writers queue behind each other instead of retrying.

    Updates `context` in place and answers the leaf diff that was written.
    """
    with transaction.atomic():
        row = _read_row(context.pk, lock=expected_version is None)
        if expected_version is None:
            expected_version = row["version"]
        if row["version"] != expected_version:
            raise StaleVersion(expected=expected_version, current=row["version"])
        try:
            new_data = compute(row["data"])
        except documents.PathError as exc:
            raise ValidationFailed(errors={exc.path or "path": [exc.reason]}) from None
        changes = documents.diff(row["data"], new_data)
        now = timezone.now()
        extra = dict(extra_fields or {})
        if not changes:
            if extra:
                Context.objects.filter(pk=context.pk).update(**extra)
            _refresh_in_place(context, data=row["data"], version=row["version"], fields=extra)
            return changes
        _check_document(new_data)
        fields = {"data": new_data, "updated_at": now, **_use_fields(context, now), **extra}
        written = Context.objects.filter(pk=context.pk, version=expected_version).update(
            version=F("version") + 1, **fields
        )
        if written != 1:
            current = Context.objects.filter(pk=context.pk).values_list("version", flat=True).first()
            raise StaleVersion(expected=expected_version, current=current)
        new_version = expected_version + 1
        ContextChange.objects.bulk_create(_history_rows(context, new_version, changes, actor, note, now))
    _refresh_in_place(context, data=new_data, version=new_version, fields=fields)
    return changes


def _refresh_in_place(context, *, data, version, fields):
    context.data = data
    context.version = version
    for name, value in fields.items():
        setattr(context, name, value)


def _check_changes(changes) -> None:
    if not isinstance(changes, dict) or not changes:
        raise ValidationFailed(field="changes", rule="must map at least one path to a value")
    errors = {}
    for path, value in changes.items():
        try:
            if not documents.parse_path(path):
                errors[path or "(root)"] = ["the root cannot be changed; name a path inside it"]
                continue
        except documents.PathError as exc:
            errors[str(path)] = [exc.reason]
            continue
        if value is not DELETE:
            problems = documents.validate_document(value, root_must_be_object=False)
            if problems:
                errors[path] = problems
    if errors:
        raise ValidationFailed(errors=errors)


def context_set(
    *, context: Context, changes: dict, expected_version: int, actor: ContextActor, note: str = ""
) -> Context:
    """Write several paths at once: {path: value, or documents.DELETE to remove it}.

    Applied in order to the document as stored at `expected_version`; raises
    StaleVersion (nothing written) when that is not the current version,
    ValidationFailed for a bad path or value. One history row per changed leaf.
    Answers `context`, updated in place with the new data and version.
    """
    _check_changes(changes)
    _write(
        context=context,
        expected_version=expected_version,
        compute=lambda data: documents.apply_changes(data, changes),
        actor=actor,
        note=note,
    )
    return context


def context_touch(*, context: Context) -> None:
    """Record a use (reads count): moves an agent context's expiry 7 days ahead."""
    fields = _use_fields(context, timezone.now())
    Context.objects.filter(pk=context.pk).update(**fields)
    for name, value in fields.items():
        setattr(context, name, value)


def context_get_value(*, context: Context, path: str, default: Any = MISSING, touch: bool = True) -> Any:
    """The value at `path` in `context.data` (a stored null is answered as None).

    A missing path answers `default`, or raises NotFound when no default is
    given; a malformed path or one through a leaf raises ValidationFailed.
    """
    try:
        value = documents.get_value(context.data, path)
    except documents.PathError as exc:
        raise ValidationFailed(field="path", rule=str(exc)) from None
    if touch:
        context_touch(context=context)
    if value is MISSING:
        if default is MISSING:
            raise NotFound(f"Nothing is stored at {path!r}", details={"path": path})
        return default
    return value


def context_diff(*, context: Context, other: Context) -> Diff:
    """Leaf differences from `context` to `other`."""
    return documents.diff(context.data, other.data)


def _change_times(context: Context) -> documents.ChangeTimes:
    """Per-path last change moments of one context, for last_write_wins.

    A path's moment is the latest history row at, above or below it (see
    ChangeTimes). Every write after creation leaves history rows, so a path
    without any has held its value since the context was created: its moment
    is `created_at`. (updated_at would be wrong there: a later write to another
    path moves it and would make an old value look new.)
    """
    times = dict(
        ContextChange.objects.filter(context_id=context.pk)
        .values("path")
        .annotate(at=Max("created_at"))
        .values_list("path", "at")
    )
    return documents.ChangeTimes(times, default=context.created_at)


def _check_strategy(strategy, allowed):
    if strategy not in allowed:
        raise ValidationFailed(field="strategy", rule=f"must be one of {', '.join(allowed)}")


def _fold(*, base, base_times, sources, strategy, resolutions):
    """Merge each source into the accumulated document in order.

    Answers (document or None, conflicts). For `manual` the same resolutions
    apply at every step, and a resolution that matches no conflict is refused so
    a mistyped path never passes silently.
    """
    document = base
    times = base_times
    conflicts: list[MergeConflict] = []
    used = set()
    unresolved = False
    for source in sources:
        source_times = _change_times(source) if strategy == documents.LAST_WRITE_WINS else None
        try:
            result = documents.merge(
                source=source.data,
                target=document,
                strategy=strategy,
                source_times=source_times,
                target_times=times,
                resolutions=resolutions,
            )
        except (documents.MergeError, documents.DocumentError) as exc:
            raise ValidationFailed(field="strategy", rule=str(exc)) from None
        for conflict in result.conflicts:
            conflict.source_id = source.pk
        conflicts.extend(result.conflicts)
        used |= result.used_resolutions
        if result.document is None:
            unresolved = True
        else:
            document = result.document
        if source_times is not None:
            times = times.combine(source_times)
    if strategy == documents.MANUAL:
        unknown = sorted(set(resolutions or {}) - used - {c.path for c in conflicts})
        if unknown:
            raise ValidationFailed(errors={"resolutions": [f"{path} is not in conflict" for path in unknown]})
        if unresolved:
            pending = [c.as_dict() for c in conflicts if c.winner is None]
            raise Conflict(
                f"{len(pending)} conflict(s) need a resolution; nothing was written",
                details={"strategy": strategy, "conflicts": pending},
            )
    return document, conflicts


def context_merge(
    *,
    sources: list[Context],
    strategy: str,
    target: Context | None = None,
    resolutions: dict | None = None,
    expected_version: int | None = None,
    actor: ContextActor,
) -> MergeOutcome:
    """Merge `sources`, in order, into `target` with one of documents.STRATEGIES.

    With a target, the merge is computed from the target as stored and written
    with compare-and-set: when `expected_version` is given a stale one raises
    StaleVersion, otherwise the target row is locked while the merge is
    computed and written, so concurrent writers wait rather than fail. Without a target the first
    source is the base and the result goes into a new temporary context (kept 1 h) that the outcome names.

    `manual` writes nothing and raises Conflict listing the conflicts in
    `details["conflicts"]` until `resolutions` {path: value} covers all of them.
    `last_write_wins` takes each side's per-path change times from the history,
    falling back to the context's created_at (see _change_times).
    """
    _check_strategy(strategy, MERGE_STRATEGIES)
    sources = list(sources)
    if not sources:
        raise ValidationFailed(field="sources", rule="name at least one context")
    ids = [source.pk for source in sources]
    if len(set(ids)) != len(ids):
        raise ValidationFailed(field="sources", rule="a context is named twice")
    if target is not None and target.pk in ids:
        raise ValidationFailed(field="target", rule="the target cannot also be a source")
    if resolutions is not None and not isinstance(resolutions, dict):
        raise ValidationFailed(field="resolutions", rule="must map conflict paths to values")
    note = f"merge from {', '.join(f'#{s.pk} v{s.version}' for s in sources)} ({strategy})"

    if target is None:
        base, rest = sources[0], sources[1:]
        base_times = _change_times(base) if strategy == documents.LAST_WRITE_WINS else None
        document, conflicts = _fold(
            base=base.data, base_times=base_times, sources=rest, strategy=strategy, resolutions=resolutions
        )
        created = context_create(
            scope=Scope.TEMPORARY,
            name=f"merge of {', '.join(f'#{pk}' for pk in ids)}"[:200],
            data=document,
            actor=actor,
        )
        return MergeOutcome(context=created, conflicts=conflicts, changes=documents.diff({}, document))

    def merged(data):
        target_times = _change_times(target) if strategy == documents.LAST_WRITE_WINS else None
        return _fold(base=data, base_times=target_times, sources=sources, strategy=strategy, resolutions=resolutions)

    return _merge_into(
        target=target,
        expected_version=expected_version,
        actor=actor,
        note=note,
        outcome=MergeOutcome(context=target),
        merged=merged,
    )


def _merge_into(*, target, expected_version, actor, note, outcome, merged, extra_fields=None, attempts=WRITE_ATTEMPTS):
    """Write `merged(data)` -> (document, conflicts) into `target`.

    With `expected_version` a stale target raises StaleVersion. Without one the
    target row is locked for the merge (see _write); a lost race, possible only
    where rows cannot be locked, starts the merge over from the fresh target.
    """

    def compute(data):
        document, conflicts = merged(data)
        outcome.conflicts = conflicts
        return document

    for _attempt in range(attempts):
        try:
            outcome.changes = _write(
                context=target,
                expected_version=expected_version,
                compute=compute,
                actor=actor,
                note=note,
                extra_fields=extra_fields,
            )
        except StaleVersion:
            if expected_version is not None:
                raise
            continue
        return outcome
    current = _read_row(target.pk)["version"]
    raise StaleVersion(
        expected=current, current=current, message=f"Context {target.pk} kept changing; the merge gave up"
    )


def context_for_session(*, session: CodingSession) -> Context:
    """The session's own context (scope session, name "session"), created on first use."""
    lookup = {"scope": Scope.SESSION, "session": session, "name": SESSION_CONTEXT_NAME}
    found = Context.objects.filter(**lookup).first()
    if found is not None:
        return found
    try:
        return context_create(scope=Scope.SESSION, name=SESSION_CONTEXT_NAME, session=session, actor="engine")
    except Conflict:
        return Context.objects.get(**lookup)


def context_share(
    *,
    source: Context,
    target_session: CodingSession,
    strategy: str,
    actor: ContextActor,
    resolutions: dict | None = None,
) -> MergeOutcome:
    """Copy or merge `source` into `target_session`'s context and record where it came from.

    `copy` replaces the target document with the source's; the merge strategies
    behave as in context_merge. The target keeps the source id, version,
    strategy and moment of the share, and each history row notes the source.
    """
    _check_strategy(strategy, SHARE_STRATEGIES)
    target = context_for_session(session=target_session)
    if target.pk == source.pk:
        raise ValidationFailed(field="target_session", rule="a context cannot be shared into itself")
    source_row = _read_row(source.pk)
    source.data, source.version = source_row["data"], source_row["version"]
    provenance = {
        "source_context": source,
        "source_version": source.version,
        "source_strategy": strategy,
        "shared_at": timezone.now(),
    }
    note = f"share from #{source.pk} v{source.version} ({strategy})"
    outcome = MergeOutcome(context=target)

    def merged(data):
        if strategy == COPY:
            return source.data, []
        target_times = _change_times(target) if strategy == documents.LAST_WRITE_WINS else None
        return _fold(base=data, base_times=target_times, sources=[source], strategy=strategy, resolutions=resolutions)

    return _merge_into(
        target=target,
        expected_version=None,
        actor=actor,
        note=note,
        outcome=outcome,
        merged=merged,
        extra_fields=provenance,
    )


def context_delete(*, context: Context, actor: ContextActor = None) -> None:
    """Delete the context and its history."""
    Context.objects.filter(pk=context.pk).delete()


def context_session_ended(*, session: CodingSession) -> int:
    """Start the 24 h retention of the session's contexts; the engine calls this when the session ends.

    Counts from `session.ended_at` (now when unset). Answers how many contexts
    got an expiry. Calling it again moves the expiry to the new end.
    """
    ended = session.ended_at or timezone.now()
    return Context.objects.filter(scope=Scope.SESSION, session=session).update(
        expires_at=ended + RETENTION[Scope.SESSION]
    )


def context_purge_expired(*, now: datetime | None = None) -> int:
    """Delete every context whose expiry has passed, with its history; answers how many."""
    now = now or timezone.now()
    deleted, per_model = Context.objects.filter(expires_at__lte=now).delete()
    return per_model.get(Context._meta.label, 0)


def context_prompt_block(
    *,
    context: Context,
    keys: list[str] | None = None,
    max_chars: int = 4000,
    max_value_chars: int = 400,
) -> str:
    """A compact text block of the context's entries for an agent's prompt; "" when empty.

    One line per leaf (`path = JSON value`, lists shown whole). `keys` keeps
    only entries at or below those paths. Long values are cut at
    `max_value_chars` and the block at `max_chars`, naming how much was left out.
    Counts as a use of the context.
    """
    entries = []
    if keys is None:
        entries = list(documents.leaves(context.data))
    else:
        for key in keys:
            try:
                value = documents.get_value(context.data, key)
            except documents.PathError:
                continue
            if value is MISSING or not key:
                continue
            pairs = list(documents.leaves(value)) or [("", value)]
            entries += [(f"{key}.{sub}" if sub else key, leaf) for sub, leaf in pairs]
    if not entries:
        return ""
    context_touch(context=context)
    header = f'Shared context "{context.name}" (version {context.version}):'
    lines = [header]
    used = len(header)
    for index, (path, value) in enumerate(entries):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if len(text) > max_value_chars:
            text = f"{text[:max_value_chars]}… (+{len(text) - max_value_chars} chars)"
        line = f"- {path} = {text}"
        if used + len(line) + 1 > max_chars:
            lines.append(f"- … {len(entries) - index} more entries left out")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


def context_record_task_output(
    *,
    session: CodingSession,
    task_key: str,
    output: Any,
    actor: ContextActor,
    status: str | None = None,
    attempts: int = WRITE_ATTEMPTS,
) -> Context:
    """Write a task's result into the session context under `tasks.<task_key>`.

    Sets `output`, `recorded_at` (ISO time) and, when given, `status`. Parallel
    tasks of one session write concurrently: each write locks the row and
    applies its paths to the current document, so writers queue rather than
    collide. The compare-and-set still guards the write; where the database
    cannot lock rows (SQLite), a lost race is retried up to `attempts` times.
    """
    if not isinstance(task_key, str) or not task_key or "." in task_key:
        raise ValidationFailed(field="task_key", rule="must be a non-empty key without dots")
    changes = {f"tasks.{task_key}.output": output, f"tasks.{task_key}.recorded_at": timezone.now().isoformat()}
    if status is not None:
        changes[f"tasks.{task_key}.status"] = status
    _check_changes(changes)
    context = context_for_session(session=session)
    last_error = None
    for _attempt in range(attempts):
        try:
            _write(
                context=context,
                expected_version=None,
                compute=lambda data: documents.apply_changes(data, changes),
                actor=actor,
            )
            return context
        except StaleVersion as exc:
            last_error = exc
    raise last_error
