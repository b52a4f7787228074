"""The /api/v1/contexts endpoints."""

import pytest
from django.urls import reverse

from contexts import services
from contexts.models import Context, Scope
from contexts.tests.factories import make_session

pytestmark = pytest.mark.django_db


def create(name="ctx", data=None):
    return services.context_create(scope=Scope.GLOBAL, name=name, data=data or {}, actor="test")


def url(name, *args):
    return reverse(f"api:context-{name}", args=args)


def test_create_and_read(api_client):
    response = api_client.post(
        url("list"), {"scope": "global", "name": "conventions", "data": {"a": None}}, format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["version"], body["data"], body["created_by"]) == (1, {"a": None}, api_client.user.username)
    detail = api_client.get(url("detail", body["id"])).json()
    assert detail["data"] == {"a": None}
    assert detail["size"] == len('{"a":null}')


def test_create_a_session_context_by_session_id(api_client):
    session = make_session()
    response = api_client.post(url("list"), {"scope": "session", "name": "n", "session": session.pk}, format="json")
    assert response.status_code == 201
    assert response.json()["session"] == session.pk


def test_create_with_a_missing_owner_is_400(api_client):
    response = api_client.post(url("list"), {"scope": "agent", "name": "n"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"agent": ["an agent context needs an agent"]}


def test_viewer_may_read_but_not_write(viewer_client):
    context = create()
    assert viewer_client.get(url("detail", context.pk)).status_code == 200
    response = viewer_client.patch(
        url("detail", context.pk), {"changes": {"a": 1}, "expected_version": 1}, format="json"
    )
    assert response.status_code == 403
    assert Context.objects.get(pk=context.pk).version == 1


def test_anonymous_is_refused(anonymous_client):
    assert anonymous_client.get(url("list")).status_code in (401, 403)


def test_value_answers_null_for_a_stored_null_and_404_for_missing(api_client):
    context = create(data={"config": {"model": None}})
    response = api_client.get(url("value", context.pk), {"path": "config.model"})
    assert response.status_code == 200
    assert response.json() == {"path": "config.model", "value": None, "version": 1}
    response = api_client.get(url("value", context.pk), {"path": "config.other"})
    assert response.status_code == 404
    assert response.json()["error"]["details"] == {"path": "config.other"}
    assert api_client.get(url("value", context.pk), {"path": "config.model.x"}).status_code == 400


def test_patch_sets_and_deletes_and_answers_the_new_version(api_client):
    context = create(data={"a": 1, "b": 2})
    response = api_client.patch(
        url("detail", context.pk), {"changes": {"c.d": [1]}, "delete": ["b"], "expected_version": 1}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["version"] == 2
    assert response.json()["data"] == {"a": 1, "c": {"d": [1]}}


def test_patch_with_a_stale_version_is_409_with_the_current_version(api_client):
    context = create(data={"a": 1})
    api_client.patch(url("detail", context.pk), {"changes": {"a": 2}, "expected_version": 1}, format="json")
    response = api_client.patch(url("detail", context.pk), {"changes": {"a": 3}, "expected_version": 1}, format="json")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "stale_version"
    assert error["details"] == {"expected_version": 1, "current_version": 2}
    assert Context.objects.get(pk=context.pk).data == {"a": 2}


def test_patch_without_changes_is_400(api_client):
    context = create()
    response = api_client.patch(url("detail", context.pk), {"expected_version": 1}, format="json")
    assert response.status_code == 400


def test_history_lists_newest_first_and_hides_absent_values(api_client):
    context = create()
    services.context_set(context=context, changes={"a": 1}, expected_version=1, actor="x")
    services.context_set(context=context, changes={"a": None}, expected_version=2, actor="y")
    response = api_client.get(url("history", context.pk))
    rows = response.json()["results"]
    assert [(row["version"], row["action"]) for row in rows] == [(3, "change"), (2, "add")]
    assert rows[0]["old_value"] == 1 and rows[0]["new_value"] is None
    assert "old_value" not in rows[1]


def test_diff_against_another_context(api_client):
    a = create(name="a", data={"x": 1})
    b = create(name="b", data={"x": 2, "y": 0})
    body = api_client.get(url("diff", a.pk), {"other": b.pk}).json()
    assert body["added"] == {"y": 0}
    assert body["changed"] == {"x": {"old": 1, "new": 2}}
    assert api_client.get(url("diff", a.pk)).status_code == 400


def test_merge_into_a_target(api_client):
    target = create(name="t", data={"a": 1})
    source = create(name="s", data={"a": 2, "b": 3})
    response = api_client.post(
        url("merge"), {"sources": [source.pk], "target": target.pk, "strategy": "prefer_target"}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["context"]["data"] == {"a": 1, "b": 3}
    assert body["conflicts"] == [
        {"path": "a", "source": 2, "target": 1, "winner": "target", "value": 1, "source_id": source.pk}
    ]
    assert body["changes"]["added"] == {"b": 3}


def test_manual_merge_is_409_with_conflicts_then_succeeds_with_resolutions(api_client):
    target = create(name="t", data={"a": 1})
    source = create(name="s", data={"a": 2})
    payload = {"sources": [source.pk], "target": target.pk, "strategy": "manual"}
    response = api_client.post(url("merge"), payload, format="json")
    assert response.status_code == 409
    conflicts = response.json()["error"]["details"]["conflicts"]
    assert conflicts == [{"path": "a", "source": 2, "target": 1, "winner": None, "source_id": source.pk}]
    assert Context.objects.get(pk=target.pk).version == 1
    response = api_client.post(url("merge"), {**payload, "resolutions": {"a": "both"}}, format="json")
    assert response.status_code == 200
    assert response.json()["context"]["data"] == {"a": "both"}


def test_merge_without_target_creates_a_context(api_client):
    a = create(name="a", data={"x": [1]})
    b = create(name="b", data={"x": [2]})
    response = api_client.post(url("merge"), {"sources": [a.pk, b.pk], "strategy": "deep_merge"}, format="json")
    assert response.status_code == 201
    assert response.json()["context"]["data"] == {"x": [1, 2]}
    assert response.json()["context"]["scope"] == "temporary"


def test_merge_with_an_unknown_source_is_404(api_client):
    response = api_client.post(url("merge"), {"sources": [999999], "strategy": "deep_merge"}, format="json")
    assert response.status_code == 404


def test_share_into_a_session(api_client):
    session = make_session()
    source = create(name="g", data={"k": 1})
    response = api_client.post(
        url("share", source.pk), {"session": session.pk, "strategy": "prefer_source"}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()["context"]
    assert body["session"] == session.pk
    assert body["data"] == {"k": 1}
    assert body["source"]["context"] == source.pk and body["source"]["version"] == 1


def test_delete(api_client):
    context = create()
    assert api_client.delete(url("detail", context.pk)).status_code == 204
    assert not Context.objects.filter(pk=context.pk).exists()
    assert api_client.get(url("detail", context.pk)).status_code == 404


def test_list_filters_by_scope_with_a_fixed_number_of_queries(api_client, django_assert_max_num_queries):
    for index in range(15):
        create(name=f"c{index}")
    services.context_create(scope=Scope.TEMPORARY, name="tmp", actor="x")
    with django_assert_max_num_queries(6):
        response = api_client.get(url("list"), {"scope": "global"})
    assert response.status_code == 200
    assert response.json()["count"] == 15
