"""The five merge strategies on conflicting documents, each with its own answer."""

import pytest

from contexts.documents import (
    DEEP_MERGE,
    LAST_WRITE_WINS,
    MANUAL,
    PREFER_SOURCE,
    PREFER_TARGET,
    STRATEGIES,
    ChangeTimes,
    MergeError,
    merge,
)

SOURCE = {
    "model": "claude",
    "tags": ["a", "b"],
    "limits": {"tokens": 200, "time": 5},
    "only_source": 1,
    "kind": {"x": 1},
}
TARGET = {"model": "gpt", "tags": ["b", "c"], "limits": {"tokens": 100, "depth": 2}, "only_target": 2, "kind": "flat"}
CONFLICTS = {"model", "tags", "limits.tokens", "kind"}


def run(strategy, **kwargs):
    return merge(source=SOURCE, target=TARGET, strategy=strategy, **kwargs)


def test_every_strategy_keeps_what_only_one_side_has():
    times = ChangeTimes({}, 1), ChangeTimes({}, 2)
    for strategy in STRATEGIES:
        result = merge(
            source=SOURCE,
            target=TARGET,
            strategy=strategy,
            source_times=times[0],
            target_times=times[1],
            resolutions={path: "r" for path in CONFLICTS},
        )
        assert result.document["only_source"] == 1
        assert result.document["only_target"] == 2
        assert result.document["limits"]["time"] == 5
        assert result.document["limits"]["depth"] == 2
        assert {conflict.path for conflict in result.conflicts} == CONFLICTS, strategy


def test_prefer_source_takes_the_source_value_of_every_conflict():
    result = run(PREFER_SOURCE)
    doc = result.document
    assert (doc["model"], doc["tags"], doc["limits"]["tokens"], doc["kind"]) == ("claude", ["a", "b"], 200, {"x": 1})
    assert {c.winner for c in result.conflicts} == {"source"}


def test_prefer_target_takes_the_target_value_of_every_conflict():
    result = run(PREFER_TARGET)
    doc = result.document
    assert (doc["model"], doc["tags"], doc["limits"]["tokens"], doc["kind"]) == ("gpt", ["b", "c"], 100, "flat")
    assert {c.winner for c in result.conflicts} == {"target"}


def test_prefer_source_equals_prefer_target_with_the_sides_swapped():
    assert run(PREFER_SOURCE).document == merge(source=TARGET, target=SOURCE, strategy=PREFER_TARGET).document


def test_deep_merge_unions_lists_and_lets_the_source_win_scalars():
    result = run(DEEP_MERGE)
    doc = result.document
    assert doc["tags"] == ["b", "c", "a"]
    assert doc["model"] == "claude"
    assert doc["limits"] == {"tokens": 200, "depth": 2, "time": 5}
    assert doc["kind"] == {"x": 1}
    winners = {c.path: c.winner for c in result.conflicts}
    assert winners == {"model": "source", "tags": "union", "limits.tokens": "source", "kind": "source"}


def test_deep_merge_list_union_drops_duplicates_but_keeps_distinct_types():
    result = merge(source={"l": [1, {"a": 1}, 1.0, True]}, target={"l": [{"a": 1}, 1]}, strategy=DEEP_MERGE)
    assert result.document["l"] == [{"a": 1}, 1, 1.0, True]


def test_last_write_wins_picks_the_side_changed_later_per_path():
    source_times = ChangeTimes({"model": 10, "limits.tokens": 1}, default=5)
    target_times = ChangeTimes({"model": 3, "limits": 7}, default=6)
    result = run(LAST_WRITE_WINS, source_times=source_times, target_times=target_times)
    winners = {c.path: c.winner for c in result.conflicts}
    # model: source 10 > target 3; limits.tokens: target wrote its parent at 7 > 1;
    # tags and kind: no per-path time, so the documents' updated moments 5 < 6 decide.
    assert winners == {"model": "source", "limits.tokens": "target", "tags": "target", "kind": "target"}
    assert result.document["model"] == "claude"
    assert result.document["limits"]["tokens"] == 100


def test_last_write_wins_counts_a_write_below_the_conflicting_path():
    source_times = ChangeTimes({"kind.x": 9}, default=0)
    target_times = ChangeTimes({"kind": 4}, default=0)
    result = run(LAST_WRITE_WINS, source_times=source_times, target_times=target_times)
    assert result.document["kind"] == {"x": 1}


def test_last_write_wins_tie_goes_to_the_source():
    result = run(LAST_WRITE_WINS, source_times=ChangeTimes({}, 1), target_times=ChangeTimes({}, 1))
    assert {c.winner for c in result.conflicts} == {"source"}


def test_last_write_wins_without_times_is_refused():
    with pytest.raises(MergeError, match="change times"):
        run(LAST_WRITE_WINS)


def test_manual_without_resolutions_writes_nothing_and_lists_every_conflict():
    result = run(MANUAL)
    assert result.document is None
    assert {c.path for c in result.unresolved} == CONFLICTS
    listed = {c.path: (c.source, c.target) for c in result.conflicts}
    assert listed["limits.tokens"] == (200, 100)


def test_manual_with_some_resolutions_still_writes_nothing():
    result = run(MANUAL, resolutions={"model": "mistral"})
    assert result.document is None
    assert {c.path for c in result.unresolved} == CONFLICTS - {"model"}


def test_manual_with_every_resolution_writes_the_chosen_values():
    resolutions = {"model": "mistral", "tags": ["z"], "limits.tokens": None, "kind": "deep"}
    result = run(MANUAL, resolutions=resolutions)
    doc = result.document
    assert (doc["model"], doc["tags"], doc["limits"]["tokens"], doc["kind"]) == ("mistral", ["z"], None, "deep")
    assert result.used_resolutions == set(resolutions)


def test_the_strategies_give_distinct_results_on_the_same_conflict():
    times = {"source_times": ChangeTimes({}, 1), "target_times": ChangeTimes({}, 2)}
    results = {
        PREFER_SOURCE: run(PREFER_SOURCE).document,
        PREFER_TARGET: run(PREFER_TARGET).document,
        DEEP_MERGE: run(DEEP_MERGE).document,
        MANUAL: run(MANUAL, resolutions={"model": "m", "tags": [], "limits.tokens": 0, "kind": 0}).document,
    }
    assert len({repr(sorted(doc.items(), key=str)) for doc in results.values()}) == 4
    assert run(LAST_WRITE_WINS, **times).document == results[PREFER_TARGET]
    times = {"source_times": ChangeTimes({}, 2), "target_times": ChangeTimes({}, 1)}
    assert run(LAST_WRITE_WINS, **times).document == results[PREFER_SOURCE]


def test_unknown_strategy_is_refused():
    with pytest.raises(MergeError, match="unknown merge strategy"):
        run("ours")


def test_merge_leaves_its_inputs_alone():
    before = repr(SOURCE), repr(TARGET)
    run(DEEP_MERGE)
    assert (repr(SOURCE), repr(TARGET)) == before
