"""Property-based checks of diff and merge over generated JSON documents."""

from hypothesis import given, settings
from hypothesis import strategies as st

from contexts.documents import (
    DEEP_MERGE,
    LAST_WRITE_WINS,
    MANUAL,
    PREFER_SOURCE,
    PREFER_TARGET,
    STRATEGIES,
    ChangeTimes,
    apply_changes,
    apply_diff,
    diff,
    diff_as_changes,
    merge,
    same,
)

# A small key alphabet makes the two generated documents overlap often, which
# is where diffs and conflicts happen; digit keys exercise dicts whose keys look
# like list indexes.
keys = st.sampled_from(["a", "b", "c", "0", "1", "x_y"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=3)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=5)

SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(documents, documents)
def test_applying_the_diff_of_a_to_b_onto_a_gives_b(a, b):
    assert same(apply_diff(a, diff(a, b)), b)
    assert same(apply_changes(a, diff_as_changes(a, b)), b)


@SETTINGS
@given(documents)
def test_a_document_has_no_diff_with_itself(a):
    assert not diff(a, a)


@SETTINGS
@given(documents, documents)
def test_diff_paths_never_nest(a, b):
    paths = diff(a, b).paths
    for path in paths:
        assert not any(other.startswith(path + ".") for other in paths)


def _merge(strategy, source, target):
    return merge(
        source=source,
        target=target,
        strategy=strategy,
        source_times=ChangeTimes({}, 1),
        target_times=ChangeTimes({}, 2),
    )


@SETTINGS
@given(documents)
def test_merging_with_an_empty_document_changes_nothing(a):
    for strategy in STRATEGIES:
        into_empty = _merge(strategy, a, {})
        from_empty = _merge(strategy, {}, a)
        assert same(into_empty.document, a), strategy
        assert same(from_empty.document, a), strategy
        assert into_empty.conflicts == [] and from_empty.conflicts == []


@SETTINGS
@given(documents, documents)
def test_prefer_source_a_b_equals_prefer_target_b_a(a, b):
    assert same(_merge(PREFER_SOURCE, a, b).document, _merge(PREFER_TARGET, b, a).document)


@SETTINGS
@given(documents, documents)
def test_merge_never_drops_a_key_of_either_side(a, b):
    for strategy in (PREFER_SOURCE, PREFER_TARGET, LAST_WRITE_WINS, DEEP_MERGE):
        merged = _merge(strategy, a, b).document
        assert set(merged) == set(a) | set(b), strategy


@SETTINGS
@given(documents, documents)
def test_manual_writes_nothing_exactly_when_there_are_conflicts(a, b):
    result = _merge(MANUAL, a, b)
    assert (result.document is None) == bool(result.conflicts)
    assert {c.path for c in result.conflicts} == {c.path for c in _merge(PREFER_SOURCE, a, b).conflicts}


@SETTINGS
@given(documents, documents)
def test_prefer_source_result_holds_every_source_leaf(a, b):
    merged = _merge(PREFER_SOURCE, a, b).document
    changes = diff(a, merged)
    assert not changes.removed and not changes.changed

