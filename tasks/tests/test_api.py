import pytest
from django.urls import reverse

from tasks import services
from tasks.models import Task, TaskDependency


def url(name, *args):
    return reverse(f"api:task-{name}", args=args)


@pytest.mark.django_db
def test_create_list_retrieve_and_patch(api_client, session):
    created = api_client.post(
        url("list"),
        {"session": session.pk, "title": "Build the invoice CRUD", "optimistic_hours": 1, "likely_hours": 2,
         "pessimistic_hours": 9, "required_capabilities": ["code_generation"], "priority": "high"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["expected_hours"] == pytest.approx(3.0) and body["complexity"] == "moderate"
    assert body["status"] == "pending" and body["priority"] == "high"
    listed = api_client.get(url("list"), {"session": session.pk}).json()
    assert [t["id"] for t in listed["results"]] == [body["id"]]
    assert api_client.get(url("detail", body["id"])).json()["title"] == "Build the invoice CRUD"
    patched = api_client.patch(url("detail", body["id"]), {"likely_hours": 8, "pessimistic_hours": 20}, format="json")
    assert patched.status_code == 200
    assert patched.json()["complexity"] == "expert"


@pytest.mark.django_db
def test_create_refuses_bad_estimates_and_unknown_sessions(api_client, session):
    bad = api_client.post(
        url("list"), {"session": session.pk, "title": "x", "optimistic_hours": 5, "likely_hours": 1,
                      "pessimistic_hours": 9}, format="json"
    )
    assert bad.status_code == 400
    assert "optimistic_hours" in bad.json()["error"]["details"]
    missing = api_client.post(url("list"), {"session": 999999, "title": "x"}, format="json")
    assert missing.status_code == 404


@pytest.mark.django_db
def test_status_is_not_writable(api_client, make_task):
    task = make_task("A")
    response = api_client.patch(url("detail", task.pk), {"status": "completed"}, format="json")
    assert response.status_code == 400
    assert Task.objects.get(pk=task.pk).status == "pending"


@pytest.mark.django_db
def test_adding_a_dependency_that_closes_a_cycle_is_a_400_naming_it(api_client, make_task):
    a, b, c = make_task("A"), make_task("B"), make_task("C")
    for prerequisite, dependent in ((a, b), (b, c)):
        response = api_client.post(
            url("dependencies", dependent.pk), {"prerequisite": prerequisite.pk}, format="json"
        )
        assert response.status_code == 201
    response = api_client.post(url("dependencies", a.pk), {"prerequisite": c.pk}, format="json")
    assert response.status_code == 400
    assert "A → B → C → A" in response.json()["error"]["message"]
    assert TaskDependency.objects.count() == 2


@pytest.mark.django_db
def test_dependency_graph_endpoint_reports_the_schedule(api_client, session, make_task, django_assert_max_num_queries):
    # A (2 h) → B (4 h) → D (1 h) and A → C (1 h) → D: critical A, B, D = 7 h; C has 3 h slack.
    a = make_task("A", hours=(2, 2, 2))
    b = make_task("B", hours=(4, 4, 4))
    c = make_task("C", hours=(1, 1, 1))
    d = make_task("D", hours=(1, 1, 1))
    for prerequisite, dependent in ((a, b), (a, c), (b, d), (c, d)):
        services.task_add_dependency(prerequisite=prerequisite, dependent=dependent)
    with django_assert_max_num_queries(8):
        response = api_client.get(url("dependencies", make_task.root.pk))
    assert response.status_code == 200
    graph = response.json()
    assert graph["critical_path"] == [a.pk, b.pk, d.pk]
    assert graph["total_expected_hours"] == 7
    assert graph["waves"] == [[a.pk], [b.pk, c.pk], [d.pk]]
    slack = {node["id"]: node["slack"] for node in graph["nodes"]}
    assert slack == {a.pk: 0, b.pk: 0, c.pk: 3, d.pk: 0}
    assert {(e["prerequisite"], e["dependent"], e["type"]) for e in graph["edges"]} == {
        (a.pk, b.pk, "finish_to_start"), (a.pk, c.pk, "finish_to_start"), (b.pk, d.pk, "finish_to_start"),
        (c.pk, d.pk, "finish_to_start"),
    }
    node_a = next(n for n in graph["nodes"] if n["id"] == a.pk)
    assert node_a["status"] == "pending" and node_a["estimate"]["expected_hours"] == 2


@pytest.mark.django_db
def test_graph_queries_do_not_grow_with_the_graph(api_client, session, make_task, django_assert_max_num_queries):
    previous = None
    for index in range(40):
        task = make_task(f"T{index}")
        if previous is not None:
            services.task_add_dependency(prerequisite=previous, dependent=task)
        previous = task
    with django_assert_max_num_queries(8):
        assert api_client.get(url("dependencies", make_task.root.pk)).status_code == 200


@pytest.mark.django_db
def test_delete_a_dependency(api_client, make_task):
    a, b = make_task("A"), make_task("B")
    link = services.task_add_dependency(prerequisite=a, dependent=b)
    assert api_client.delete(url("remove-dependency", b.pk, link.pk)).status_code == 204
    assert not TaskDependency.objects.exists()
    assert api_client.delete(url("remove-dependency", b.pk, link.pk)).status_code == 404


@pytest.mark.django_db
def test_decompose_then_again_is_a_409_and_replace_works(api_client, make_task):
    task = make_task("Add a date picker component")
    first = api_client.post(url("decompose", task.pk), {"max_depth": 1}, format="json")
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["template"] == "ui_component" and body["created"] == 6
    assert body["graph"]["nodes"][0]["title"] == "Design the states and props of date picker component"
    again = api_client.post(url("decompose", task.pk), {}, format="json")
    assert again.status_code == 409
    replaced = api_client.post(url("decompose", task.pk), {"template": "bugfix", "replace": True}, format="json")
    assert replaced.status_code == 201 and replaced.json()["template"] == "bugfix"
    bad_depth = api_client.post(url("decompose", task.pk), {"max_depth": 6, "replace": True}, format="json")
    assert bad_depth.status_code == 400


@pytest.mark.django_db
def test_transition_commands_and_409_when_refused(api_client, make_task, agent):
    task = make_task("A")
    refused = api_client.post(url("start", task.pk))
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "transition_refused" and error["details"]["current"] == "pending"
    assert api_client.post(url("assign", task.pk), {"agent": agent.pk}, format="json").json()["status"] == "assigned"
    assert api_client.post(url("start", task.pk)).json()["status"] == "in_progress"
    assert api_client.post(url("pause", task.pk)).json()["status"] == "paused"
    assert api_client.post(url("resume", task.pk)).json()["status"] == "in_progress"
    done = api_client.post(url("complete", task.pk), {"result": {"ok": True}, "output": "fine"}, format="json")
    assert done.json()["status"] == "completed" and done.json()["output"] == "fine"
    assert api_client.post(url("cancel", task.pk)).status_code == 409


@pytest.mark.django_db
def test_fail_and_skip_propagation_over_the_api(api_client, session, make_task, agent):
    a, b = make_task("A"), make_task("B")
    services.task_add_dependency(prerequisite=a, dependent=b)
    api_client.post(url("assign", a.pk), {"agent": agent.pk}, format="json")
    api_client.post(url("start", a.pk))
    failed = api_client.post(url("fail", a.pk), {"error": {"type": "llm", "message": "HTTP 400"}}, format="json")
    assert failed.json()["status"] == "failed"
    assert api_client.get(url("detail", b.pk)).json()["status"] == "skipped"


@pytest.mark.django_db
def test_viewers_read_but_cannot_write(viewer_client, make_task):
    task = make_task("A")
    assert viewer_client.get(url("detail", task.pk)).status_code == 200
    assert viewer_client.post(url("cancel", task.pk)).status_code == 403


@pytest.mark.django_db
def test_list_query_count_is_flat(api_client, session, make_task, django_assert_max_num_queries):
    for index in range(30):
        make_task(f"T{index}")
    with django_assert_max_num_queries(4):
        response = api_client.get(url("list"), {"session": session.pk})
    assert response.json()["count"] == 31


@pytest.mark.django_db
def test_console_list_page(client, operator_user, make_task):
    make_task("Visible task")
    client.force_login(operator_user)
    response = client.get(reverse("tasks:list"), {"session": make_task.root.session_id})
    assert response.status_code == 200
    assert b"Visible task" in response.content
