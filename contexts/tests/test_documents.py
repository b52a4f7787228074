"""Dot paths, null versus missing, diff and apply_diff on hand-picked edge cases."""

import pytest

from contexts.documents import (
    DELETE,
    MISSING,
    PathError,
    apply_changes,
    apply_diff,
    delete_value,
    diff,
    diff_as_changes,
    get_value,
    has_value,
    leaves,
    parse_path,
    same,
    set_value,
    validate_document,
)

DOC = {"config": {"model": "gpt", "temperature": None}, "steps": [{"name": "plan"}, {"name": "build"}], "n": 3}


def test_get_reads_nested_keys_and_list_indexes():
    assert get_value(DOC, "config.model") == "gpt"
    assert get_value(DOC, "steps.1.name") == "build"
    assert get_value(DOC, "") is DOC


def test_stored_null_is_a_value_and_missing_is_not():
    assert get_value(DOC, "config.temperature") is None
    assert has_value(DOC, "config.temperature")
    assert get_value(DOC, "config.top_p") is MISSING
    assert not has_value(DOC, "config.top_p")
    assert get_value(DOC, "config.top_p", default="fallback") == "fallback"


def test_get_past_the_end_of_a_list_is_missing():
    assert get_value(DOC, "steps.2") is MISSING
    assert get_value(DOC, "steps.2.name") is MISSING


def test_get_through_a_leaf_is_refused_with_the_leaf_named():
    with pytest.raises(PathError, match="config.model is a str"):
        get_value(DOC, "config.model.name")


def test_get_through_a_stored_null_is_refused():
    with pytest.raises(PathError, match="is null"):
        get_value(DOC, "config.temperature.max")


@pytest.mark.parametrize("segment", ["x", "-1", "01", "1e2"])
def test_non_numeric_list_index_is_refused(segment):
    with pytest.raises(PathError, match="not a list index"):
        get_value(DOC, f"steps.{segment}")


@pytest.mark.parametrize("path", [".a", "a.", "a..b"])
def test_empty_segments_are_refused(path):
    with pytest.raises(PathError, match="empty segment"):
        parse_path(path)


def test_set_creates_missing_objects_and_leaves_the_input_alone():
    updated = set_value(DOC, "config.limits.tokens", 100)
    assert updated["config"]["limits"] == {"tokens": 100}
    assert "limits" not in DOC["config"]
    assert updated["steps"] is DOC["steps"]


def test_set_null_stores_null():
    updated = set_value({}, "a", None)
    assert updated == {"a": None}
    assert has_value(updated, "a")


def test_set_replaces_a_list_item_and_appends_at_the_end():
    updated = set_value(DOC, "steps.0.name", "design")
    updated = set_value(updated, "steps.2", {"name": "ship"})
    assert [step["name"] for step in updated["steps"]] == ["design", "build", "ship"]
    assert DOC["steps"][0]["name"] == "plan"


def test_set_past_the_end_of_a_list_is_refused():
    with pytest.raises(PathError, match="past the end of steps"):
        set_value(DOC, "steps.5", {})


def test_set_through_a_leaf_is_refused():
    with pytest.raises(PathError, match="n is a int"):
        set_value(DOC, "n.value", 1)


def test_set_at_the_root_is_refused():
    with pytest.raises(PathError, match="root"):
        set_value(DOC, "", {})


def test_delete_removes_a_key_and_shifts_list_items():
    assert "model" not in delete_value(DOC, "config.model")["config"]
    assert delete_value(DOC, "steps.0")["steps"] == [{"name": "build"}]
    assert len(DOC["steps"]) == 2


def test_delete_of_a_missing_path_is_refused_unless_missing_ok():
    with pytest.raises(PathError, match="nothing is stored"):
        delete_value(DOC, "config.top_p")
    assert delete_value(DOC, "config.top_p", missing_ok=True) is DOC


def test_apply_changes_sets_and_deletes_in_order():
    result = apply_changes(DOC, {"config.model": "claude", "n": DELETE, "new.key": [1]})
    assert result["config"]["model"] == "claude"
    assert "n" not in result
    assert result["new"] == {"key": [1]}


def test_diff_reports_the_changed_leaf_and_not_its_parents():
    b = set_value(DOC, "config.model", "claude")
    d = diff(DOC, b)
    assert d.changed == {"config.model": ("gpt", "claude")}
    assert not d.added and not d.removed


def test_diff_reports_added_and_removed_keys_with_their_values():
    b = delete_value(set_value(DOC, "config.top_p", 0.9), "n")
    d = diff(DOC, b)
    assert d.added == {"config.top_p": 0.9}
    assert d.removed == {"n": 3}
    assert d.changed == {}


def test_diff_reports_a_type_change_between_object_and_scalar_once():
    d = diff({"a": {"b": 1, "c": 2}}, {"a": 5})
    assert d.changed == {"a": ({"b": 1, "c": 2}, 5)}
    assert not d.added and not d.removed
    d = diff({"a": 5}, {"a": {"b": 1}})
    assert d.changed == {"a": (5, {"b": 1})}


def test_diff_tells_null_from_missing_and_bool_from_int():
    assert diff({"a": None}, {}).removed == {"a": None}
    assert diff({}, {"a": None}).added == {"a": None}
    assert diff({"a": 1}, {"a": True}).changed == {"a": (1, True)}
    assert diff({"a": 1}, {"a": 1.0}).changed == {"a": (1, 1.0)}


def test_diff_of_lists_goes_item_by_item():
    d = diff({"l": [1, 2, 3]}, {"l": [1, 9]})
    assert d.changed == {"l.1": (2, 9)}
    assert d.removed == {"l.2": 3}
    d = diff({"l": [1]}, {"l": [1, 2, 3]})
    assert d.added == {"l.1": 2, "l.2": 3}


def test_apply_diff_rebuilds_the_target_including_list_shrink_and_growth():
    a = {"l": [1, 2, 3, 4], "m": [0], "x": {"y": None}}
    b = {"l": [1], "m": [0, {"k": 1}, 2], "x": {"y": 0}, "z": {}}
    assert same(apply_diff(a, diff(a, b)), b)
    assert same(apply_changes(a, diff_as_changes(a, b)), b)


def test_identical_documents_have_an_empty_diff():
    assert not diff(DOC, {**DOC})


def test_validate_refuses_unaddressable_keys_and_non_json_values():
    assert validate_document({"a.b": 1}) == ["(root): key 'a.b' cannot be addressed by a dot path"]
    assert validate_document({"": 1})
    assert validate_document({"a": [float("nan")]}) == ["a.0: nan is not a JSON number"]
    assert validate_document([1]) == ["(root): a document is an object, not a list"]
    assert validate_document({"a": {"b": [1, None, "x", 2.5, True]}}) == []


def test_leaves_flattens_objects_and_keeps_lists_whole():
    assert list(leaves({"a": {"b": 1, "c": []}, "d": {}})) == [("a.b", 1), ("a.c", []), ("d", {})]
