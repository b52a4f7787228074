"""Context services: create, versioned set with history, merge, share, expiry and purge."""

from datetime import timedelta

import pytest
from django.utils import timezone

from contexts import services
from contexts.documents import DEEP_MERGE, DELETE, LAST_WRITE_WINS, MANUAL, PREFER_SOURCE, PREFER_TARGET
from contexts.models import Context, ContextChange, Scope
from contexts.tests.factories import make_agent, make_session
from orchestrator.errors import Conflict, NotFound, StaleVersion, ValidationFailed

pytestmark = pytest.mark.django_db


def create(name="ctx", data=None, scope=Scope.GLOBAL, **kwargs):
    return services.context_create(scope=scope, name=name, data=data or {}, actor="test", **kwargs)


def test_create_starts_at_version_one_without_history():
    context = create(data={"a": 1})
    assert context.version == 1
    assert context.data == {"a": 1}
    assert not context.changes.exists()


@pytest.mark.parametrize(
    "scope, kwargs, field",
    [
        (Scope.SESSION, {}, "session"),
        (Scope.AGENT, {}, "agent"),
    ],
)
def test_create_refuses_a_scope_without_its_owner(scope, kwargs, field):
    with pytest.raises(ValidationFailed) as error:
        create(scope=scope, **kwargs)
    assert field in error.value.errors


def test_create_refuses_a_global_context_with_a_session():
    with pytest.raises(ValidationFailed) as error:
        create(scope=Scope.GLOBAL, session=make_session())
    assert "session" in error.value.errors


def test_create_refuses_unaddressable_keys():
    with pytest.raises(ValidationFailed) as error:
        create(data={"a.b": 1})
    assert "data" in error.value.errors


def test_duplicate_global_name_is_a_conflict():
    first = create(name="shared")
    with pytest.raises(Conflict) as error:
        create(name="shared")
    assert error.value.details["existing_id"] == first.pk


def test_same_name_is_allowed_in_different_sessions():
    create(scope=Scope.SESSION, name="notes", session=make_session())
    create(scope=Scope.SESSION, name="notes", session=make_session())
    assert Context.objects.filter(name="notes").count() == 2


def test_retention_by_scope():
    before = timezone.now()
    temporary = create(scope=Scope.TEMPORARY, name="t")
    agent = create(scope=Scope.AGENT, name="a", agent=make_agent())
    session = create(scope=Scope.SESSION, name="s", session=make_session())
    global_ = create(name="g")
    assert timedelta(minutes=59) < temporary.expires_at - before <= timedelta(hours=1, seconds=5)
    assert timedelta(days=6, hours=23) < agent.expires_at - before <= timedelta(days=7, seconds=5)
    assert session.expires_at is None
    assert global_.expires_at is None


def test_set_writes_several_paths_bumps_the_version_once_and_records_each_path():
    context = create(data={"config": {"model": "gpt"}, "old": 1})
    services.context_set(
        context=context,
        changes={"config.model": "claude", "config.top_p": None, "old": DELETE},
        expected_version=1,
        actor="agent:CODER-1",
    )
    context.refresh_from_db()
    assert context.version == 2
    assert context.data == {"config": {"model": "claude", "top_p": None}}
    rows = {row.path: row for row in context.changes.all()}
    assert set(rows) == {"config.model", "config.top_p", "old"}
    assert (rows["config.model"].action, rows["config.model"].old_value, rows["config.model"].new_value) == (
        "change",
        "gpt",
        "claude",
    )
    assert rows["config.top_p"].action == "add" and rows["config.top_p"].new_value is None
    assert rows["old"].action == "remove" and rows["old"].old_value == 1
    assert {row.version for row in rows.values()} == {2}
    assert {row.actor for row in rows.values()} == {"agent:CODER-1"}


def test_set_with_a_user_actor_records_the_user(operator_user):
    context = create()
    services.context_set(context=context, changes={"a": 1}, expected_version=1, actor=operator_user)
    change = context.changes.get()
    assert change.user == operator_user
    assert change.actor == operator_user.username


def test_stale_version_writes_nothing_and_names_the_current_version():
    context = create(data={"a": 1})
    services.context_set(context=context, changes={"a": 2}, expected_version=1, actor="x")
    stale = Context.objects.get(pk=context.pk)
    stale.version = 1
    with pytest.raises(StaleVersion) as error:
        services.context_set(context=stale, changes={"a": 3, "b": 1}, expected_version=1, actor="y")
    assert error.value.current == 2
    assert error.value.details == {"expected_version": 1, "current_version": 2}
    context.refresh_from_db()
    assert context.data == {"a": 2}
    assert context.version == 2
    assert context.changes.count() == 1


def test_set_is_computed_from_the_stored_document_not_the_callers_copy():
    context = create(data={"a": 1})
    context.data = {"tampered": True}
    services.context_set(context=context, changes={"b": 2}, expected_version=1, actor="x")
    assert Context.objects.get(pk=context.pk).data == {"a": 1, "b": 2}


def test_set_that_changes_nothing_keeps_the_version():
    context = create(data={"a": 1})
    services.context_set(context=context, changes={"a": 1, "gone": DELETE}, expected_version=1, actor="x")
    context.refresh_from_db()
    assert context.version == 1
    assert not context.changes.exists()


def test_set_through_a_leaf_is_a_validation_error_and_writes_nothing():
    context = create(data={"a": 5})
    with pytest.raises(ValidationFailed) as error:
        services.context_set(context=context, changes={"b": 1, "a.x": 2}, expected_version=1, actor="x")
    assert "a.x" in error.value.errors
    context.refresh_from_db()
    assert context.data == {"a": 5} and context.version == 1


def test_set_refuses_the_root_and_bad_paths():
    context = create()
    with pytest.raises(ValidationFailed) as error:
        services.context_set(context=context, changes={"": {}, "a..b": 1}, expected_version=1, actor="x")
    assert set(error.value.errors) == {"(root)", "a..b"}


def test_get_value_tells_null_from_missing():
    context = create(data={"a": None})
    assert services.context_get_value(context=context, path="a") is None
    with pytest.raises(NotFound):
        services.context_get_value(context=context, path="b")
    assert services.context_get_value(context=context, path="b", default=7) == 7


def test_agent_context_use_moves_its_expiry():
    context = create(scope=Scope.AGENT, name="a", agent=make_agent())
    Context.objects.filter(pk=context.pk).update(expires_at=timezone.now() + timedelta(hours=1))
    context.refresh_from_db()
    services.context_get_value(context=context, path="", default=None)
    context.refresh_from_db()
    assert context.expires_at > timezone.now() + timedelta(days=6)


def test_diff_between_two_contexts():
    a = create(name="a", data={"x": 1, "y": {"z": 1}})
    b = create(name="b", data={"x": 2, "y": {}, "w": None})
    changes = services.context_diff(context=a, other=b)
    assert changes.as_dict() == {
        "added": {"w": None},
        "removed": {"y.z": 1},
        "changed": {"x": {"old": 1, "new": 2}},
    }


def test_merge_into_a_target_writes_the_merge_with_history():
    target = create(name="t", data={"model": "gpt", "tags": ["a"]})
    source = create(name="s", data={"model": "claude", "tags": ["b"], "extra": 1})
    outcome = services.context_merge(sources=[source], target=target, strategy=DEEP_MERGE, actor="x")
    target.refresh_from_db()
    assert target.data == {"model": "claude", "tags": ["a", "b"], "extra": 1}
    assert target.version == 2
    assert {c.path: c.winner for c in outcome.conflicts} == {"model": "source", "tags": "union"}
    notes = set(target.changes.values_list("note", flat=True))
    assert notes == {f"merge from #{source.pk} v1 (deep_merge)"}


def test_merge_with_a_stale_expected_version_writes_nothing():
    target = create(name="t", data={"a": 1})
    source = create(name="s", data={"a": 2})
    services.context_set(context=target, changes={"b": 1}, expected_version=1, actor="x")
    with pytest.raises(StaleVersion):
        services.context_merge(sources=[source], target=target, strategy=PREFER_SOURCE, expected_version=1, actor="x")
    assert Context.objects.get(pk=target.pk).data == {"a": 1, "b": 1}


def test_merge_without_target_creates_a_temporary_context_folding_the_sources_in_order():
    first = create(name="1", data={"k": 1, "only1": True})
    second = create(name="2", data={"k": 2})
    third = create(name="3", data={"k": 3, "only3": True})
    outcome = services.context_merge(sources=[first, second, third], strategy=PREFER_TARGET, actor="x")
    assert outcome.context.scope == Scope.TEMPORARY
    assert outcome.context.data == {"k": 1, "only1": True, "only3": True}
    assert [c.source_id for c in outcome.conflicts] == [second.pk, third.pk]


def test_manual_merge_without_resolutions_raises_the_conflicts_and_writes_nothing():
    target = create(name="t", data={"a": 1, "b": 1, "same": 0})
    source = create(name="s", data={"a": 2, "b": 2, "same": 0, "new": 1})
    with pytest.raises(Conflict) as error:
        services.context_merge(sources=[source], target=target, strategy=MANUAL, actor="x")
    conflicts = error.value.details["conflicts"]
    assert {c["path"]: (c["source"], c["target"]) for c in conflicts} == {"a": (2, 1), "b": (2, 1)}
    target.refresh_from_db()
    assert target.version == 1 and target.data == {"a": 1, "b": 1, "same": 0}


def test_manual_merge_second_call_with_resolutions_writes():
    target = create(name="t", data={"a": 1, "b": 1})
    source = create(name="s", data={"a": 2, "b": 2, "new": 1})
    services.context_merge(
        sources=[source], target=target, strategy=MANUAL, resolutions={"a": 10, "b": None}, actor="x"
    )
    target.refresh_from_db()
    assert target.data == {"a": 10, "b": None, "new": 1}


def test_manual_merge_refuses_a_resolution_for_a_path_not_in_conflict():
    target = create(name="t", data={"a": 1})
    source = create(name="s", data={"a": 2})
    with pytest.raises(ValidationFailed) as error:
        services.context_merge(
            sources=[source], target=target, strategy=MANUAL, resolutions={"a": 3, "typo": 1}, actor="x"
        )
    assert error.value.errors == {"resolutions": ["typo is not in conflict"]}


def test_last_write_wins_uses_the_history_per_path():
    now = timezone.now()
    target = create(name="t", data={"a": 0, "b": 0})
    source = create(name="s", data={"a": 0, "b": 0})
    services.context_set(context=target, changes={"a": "target", "b": "target"}, expected_version=1, actor="x")
    services.context_set(context=source, changes={"a": "source", "b": "source"}, expected_version=1, actor="x")
    # Source changed a later, target changed b later.
    ContextChange.objects.filter(context=target, path="a").update(created_at=now - timedelta(hours=2))
    ContextChange.objects.filter(context=source, path="a").update(created_at=now - timedelta(hours=1))
    ContextChange.objects.filter(context=target, path="b").update(created_at=now - timedelta(minutes=5))
    ContextChange.objects.filter(context=source, path="b").update(created_at=now - timedelta(minutes=30))
    outcome = services.context_merge(sources=[source], target=target, strategy=LAST_WRITE_WINS, actor="x")
    assert outcome.context.data == {"a": "source", "b": "target"}


def test_last_write_wins_without_history_counts_from_creation_not_from_other_writes():
    now = timezone.now()
    target = create(name="t", data={"a": "target"})
    source = create(name="s", data={"a": "source"})
    Context.objects.filter(pk=target.pk).update(created_at=now - timedelta(hours=2))
    Context.objects.filter(pk=source.pk).update(created_at=now - timedelta(hours=1))
    target.refresh_from_db()
    source.refresh_from_db()
    # A recent write elsewhere in the target moves its updated_at but not the age of "a".
    services.context_set(context=target, changes={"other": 1}, expected_version=1, actor="x")
    outcome = services.context_merge(sources=[source], target=target, strategy=LAST_WRITE_WINS, actor="x")
    assert outcome.context.data == {"a": "source", "other": 1}


def test_merge_refuses_unknown_strategy_and_self_merge():
    target = create(name="t")
    with pytest.raises(ValidationFailed):
        services.context_merge(sources=[target], target=None, strategy="ours", actor="x")
    with pytest.raises(ValidationFailed):
        services.context_merge(sources=[target], target=target, strategy=PREFER_SOURCE, actor="x")


def test_share_merges_into_the_sessions_context_and_records_provenance():
    session = make_session()
    source = create(name="g", data={"conventions": {"style": "black"}, "shared": [1]})
    services.context_set(
        context=services.context_for_session(session=session),
        changes={"shared": [2], "own": True},
        expected_version=1,
        actor="x",
    )
    outcome = services.context_share(source=source, target_session=session, strategy=DEEP_MERGE, actor="op")
    target = Context.objects.get(pk=outcome.context.pk)
    assert target.scope == Scope.SESSION and target.session == session
    assert target.data == {"shared": [2, 1], "own": True, "conventions": {"style": "black"}}
    assert (target.source_context, target.source_version, target.source_strategy) == (source, 1, DEEP_MERGE)
    assert target.shared_at is not None
    assert set(target.changes.filter(version=3).values_list("note", flat=True)) == {
        f"share from #{source.pk} v1 (deep_merge)"
    }


def test_share_by_copy_replaces_the_target_document():
    session = make_session()
    target = services.context_for_session(session=session)
    services.context_set(context=target, changes={"own": 1}, expected_version=1, actor="x")
    source = create(name="g", data={"theirs": 2})
    services.context_share(source=source, target_session=session, strategy="copy", actor="x")
    target.refresh_from_db()
    assert target.data == {"theirs": 2}
    assert {(c.action, c.path) for c in target.changes.filter(version=3)} == {("remove", "own"), ("add", "theirs")}


def test_context_for_session_is_created_once():
    session = make_session()
    first = services.context_for_session(session=session)
    second = services.context_for_session(session=session)
    assert first.pk == second.pk
    assert (first.scope, first.name) == (Scope.SESSION, "session")


def test_session_end_starts_the_24_hour_retention():
    ended = timezone.now() - timedelta(hours=1)
    session = make_session()
    context = services.context_for_session(session=session)
    assert context.expires_at is None
    session.ended_at = ended
    assert services.context_session_ended(session=session) == 1
    context.refresh_from_db()
    assert context.expires_at == ended + timedelta(hours=24)


def test_purge_deletes_only_expired_contexts_and_their_history():
    now = timezone.now()
    expired = create(scope=Scope.TEMPORARY, name="old")
    services.context_set(context=expired, changes={"a": 1}, expected_version=1, actor="x")
    kept = create(scope=Scope.TEMPORARY, name="new")
    forever = create(name="global")
    Context.objects.filter(pk=expired.pk).update(expires_at=now - timedelta(seconds=1))
    assert services.context_purge_expired(now=now) == 1
    assert set(Context.objects.values_list("pk", flat=True)) == {kept.pk, forever.pk}
    assert not ContextChange.objects.filter(context_id=expired.pk).exists()


def test_purge_job_runs_the_purge():
    from contexts.jobs import purge_expired

    expired = create(scope=Scope.TEMPORARY, name="old")
    Context.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert purge_expired.name == "contexts.purge_expired"
    assert purge_expired.apply().get() == 1
    assert not Context.objects.filter(pk=expired.pk).exists()


def test_prompt_block_lists_leaves_compactly():
    context = create(name="session", data={"config": {"model": "claude", "top_p": None}, "steps": ["a", "b"]})
    block = services.context_prompt_block(context=context)
    assert block.splitlines() == [
        'Shared context "session" (version 1):',
        '- config.model = "claude"',
        "- config.top_p = null",
        '- steps = ["a","b"]',
    ]


def test_prompt_block_keeps_only_the_requested_keys_and_cuts_long_values():
    context = create(data={"config": {"model": "claude"}, "notes": "x" * 1000, "other": 1})
    block = services.context_prompt_block(context=context, keys=["config", "notes", "missing"], max_value_chars=20)
    lines = block.splitlines()[1:]
    assert lines[0] == '- config.model = "claude"'
    assert lines[1].startswith('- notes = "xxxxxxxxxxxxxxxxxxx… (+982 chars)')
    assert len(lines) == 2


def test_prompt_block_caps_its_length():
    context = create(data={f"k{i}": i for i in range(100)})
    block = services.context_prompt_block(context=context, max_chars=200)
    assert len(block) <= 260
    assert block.endswith("more entries left out")


def test_prompt_block_of_an_empty_context_is_empty():
    assert services.context_prompt_block(context=create()) == ""


def test_record_task_output_writes_under_tasks_next_to_other_tasks():
    session = make_session()
    context = services.context_for_session(session=session)
    services.context_set(context=context, changes={"tasks.plan.output": "p"}, expected_version=1, actor="x")
    result = services.context_record_task_output(
        session=session, task_key="build", output={"files": 3}, status="completed", actor="engine"
    )
    assert result.version == 3
    assert result.data["tasks"]["plan"] == {"output": "p"}
    assert result.data["tasks"]["build"]["output"] == {"files": 3}
    assert result.data["tasks"]["build"]["status"] == "completed"
    assert "recorded_at" in result.data["tasks"]["build"]


def test_record_task_output_refuses_a_dotted_key():
    with pytest.raises(ValidationFailed):
        services.context_record_task_output(session=make_session(), task_key="a.b", output=1, actor="engine")
