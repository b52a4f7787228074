"""The task graph page and the monitor's live parts over WebSockets (WebsocketCommunicator):
graph pushes on task events, replay with `after` without gap or duplicate, refused connections,
one render per event shared by every watcher, the checkpoint timeline and transitions pushed."""

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.urls import reverse

from orchestrator.asgi import application
from orchestrator.testing import api_token
from orchestrator.testing import record_event as record
from orchestrator.testing import run_socket_scenario as run
from sessions import panels, services
from sessions.tests.factories import CodingSessionFactory
from tasks.models import Task
from tasks.tests.factories import AgentFactory, TaskDependencyFactory, TaskFactory

HTMX = {"HTTP_HX_REQUEST": "true"}
TIMEOUT = 15






def planned_session():
    """A root task with four subtasks: design -> (api, ui) -> merge; api is the long branch."""
    session = CodingSessionFactory(status="running")
    root = TaskFactory(session=session, title="Ship the health endpoint")
    agent = AgentFactory(name="AGENT-GRAPH-IMPL")
    tasks = {
        "design": TaskFactory(session=session, parent=root, title="Design the endpoint", order=1, status="completed",
                              assigned_agent=agent),
        "api": TaskFactory(session=session, parent=root, title="Write the API", order=2, status="in_progress",
                           likely_hours=6, pessimistic_hours=9, optimistic_hours=3, assigned_agent=agent),
        "ui": TaskFactory(session=session, parent=root, title="Show it in the UI", order=3),
        "merge": TaskFactory(session=session, parent=root, title="Merge the branches", order=4),
    }
    for a, b in [("design", "api"), ("design", "ui"), ("api", "merge"), ("ui", "merge")]:
        TaskDependencyFactory(prerequisite=tasks[a], dependent=tasks[b])
    return session, tasks


@pytest.mark.django_db
def test_the_graph_page_draws_each_task_with_status_agent_estimate_and_the_critical_path(
    client, viewer_user, django_assert_max_num_queries
):
    session, tasks = planned_session()
    client.force_login(viewer_user)
    with django_assert_max_num_queries(9):
        response = client.get(reverse("sessions:graph", args=[session.pk]))
    body = response.content.decode()
    assert response.status_code == 200 and "<svg" in body
    monitor_url = reverse("sessions:detail", args=[session.pk])
    for task in tasks.values():
        assert f'href="{monitor_url}#task-{task.pk}"' in body and f'id="node-{task.pk}"' in body
    assert f'class="node node-completed critical" id="node-{tasks["design"].pk}"' in body
    assert f'class="node node-in_progress critical" id="node-{tasks["api"].pk}"' in body
    assert f'class="node node-pending" id="node-{tasks["ui"].pk}"' in body  # off the critical path
    assert "AGENT-GRAPH-IMPL" in body and "6.0 h" in body and "· merge" in body
    assert body.count('class="edge critical"') == 2 and body.count('class="edge"') == 2
    assert "Ship the health endpoint" not in body.split("<svg", 1)[1]  # the container is drawn through its tasks
    assert f'ws-connect="/ws/console/sessions/{session.pk}/graph?after=' in body
    partial = client.get(reverse("sessions:graph", args=[session.pk]), **HTMX).content.decode()
    assert partial.lstrip().startswith('<section class="card" aria-labelledby="graph-title" id="task-graph"')


@pytest.mark.django_db
def test_the_graph_of_200_tasks_renders_with_a_fixed_number_of_queries(client, viewer_user,
                                                                       django_assert_max_num_queries):
    session = CodingSessionFactory(status="running")
    root = TaskFactory(session=session, title="Root")
    previous = []
    for wave in range(20):
        current = [TaskFactory(session=session, parent=root, title=f"w{wave} t{n}", order=wave * 10 + n)
                   for n in range(10)]
        for a, b in zip(previous, current, strict=False):
            TaskDependencyFactory(prerequisite=a, dependent=b)
        previous = current
    client.force_login(viewer_user)
    with django_assert_max_num_queries(9):
        body = client.get(reverse("sessions:graph", args=[session.pk])).content.decode()
    assert body.count('class="node ') == 200 and body.count('<path class="edge') == 190


@pytest.mark.django_db
def test_a_session_without_tasks_says_so(client, viewer_user):
    session = CodingSessionFactory(status="queued")
    client.force_login(viewer_user)
    body = client.get(reverse("sessions:graph", args=[session.pk])).content.decode()
    assert "No tasks yet" in body and "<svg" not in body


# --- live -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_graph_socket_pushes_the_redrawn_graph_on_task_events_only(viewer_user):
    token = api_token(viewer_user)
    session, tasks = planned_session()
    seen = record(session, "assistant.text", text="before the page")

    async def scenario():
        communicator = WebsocketCommunicator(
            application, f"/ws/console/sessions/{session.pk}/graph?after={seen.pk}&token={token.key}")
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        nothing_at_first = await communicator.receive_nothing(timeout=0.2)
        await database_sync_to_async(record)(session, "assistant.text", text="not a task event")
        nothing_for_text = await communicator.receive_nothing(timeout=0.3)
        await database_sync_to_async(Task.objects.filter(pk=tasks["ui"].pk).update)(status="in_progress")
        await database_sync_to_async(record)(session, "task.started", task_id=tasks["ui"].pk)
        html = await communicator.receive_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return nothing_at_first, nothing_for_text, html

    nothing_at_first, nothing_for_text, html = run(scenario)
    assert nothing_at_first and nothing_for_text
    assert html.startswith(
        '\n<section class="card" aria-labelledby="graph-title" id="task-graph" hx-swap-oob="outerHTML"'
    )
    assert f'class="node node-in_progress" id="node-{tasks["ui"].pk}"' in html


@pytest.mark.django_db(transaction=True)
def test_the_graph_socket_replays_a_missed_task_event_once(viewer_user):
    token = api_token(viewer_user)
    session, tasks = planned_session()
    seen = record(session, "assistant.text", text="rendered with the page")
    Task.objects.filter(pk=tasks["api"].pk).update(status="completed")
    record(session, "task.completed", task_id=tasks["api"].pk)

    async def scenario():
        communicator = WebsocketCommunicator(
            application, f"/ws/console/sessions/{session.pk}/graph?after={seen.pk}&token={token.key}")
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        html = await communicator.receive_from(timeout=TIMEOUT)
        nothing_more = await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()
        return html, nothing_more

    html, nothing_more = run(scenario)
    assert f'class="node node-completed critical" id="node-{tasks["api"].pk}"' in html
    assert nothing_more


@pytest.mark.django_db(transaction=True)
def test_the_graph_socket_refuses_anonymous_users_and_unknown_sessions(viewer_user):
    token = api_token(viewer_user)
    session = CodingSessionFactory()

    def connect(path):
        async def go():
            communicator = WebsocketCommunicator(application, path)
            connected, code = await communicator.connect(timeout=TIMEOUT)
            if connected:
                await communicator.disconnect()
            return connected, code

        return run(go)

    assert connect(f"/ws/console/sessions/{session.pk}/graph") == (False, 4401)
    assert connect(f"/ws/console/sessions/{session.pk + 1000}/graph?token={token.key}") == (False, 4404)


@pytest.mark.django_db(transaction=True)
def test_watchers_of_a_session_share_one_render_per_event(operator_user, monkeypatch):
    token = api_token(operator_user)
    session = CodingSessionFactory(status="running")
    rendered = []
    real = panels.live_fragment

    def counting(**kwargs):
        rendered.append(kwargs["event"]["id"])
        return real(**kwargs)

    monkeypatch.setattr(panels, "live_fragment", counting)  # what the console consumer calls

    async def scenario():
        watchers = [WebsocketCommunicator(application, f"/ws/console/sessions/{session.pk}?token={token.key}")
                    for _ in range(3)]
        for watcher in watchers:
            assert (await watcher.connect(timeout=TIMEOUT))[0]
        event = await database_sync_to_async(record)(session, "assistant.text", text="for everyone")
        received = [await watcher.receive_from(timeout=TIMEOUT) for watcher in watchers]
        for watcher in watchers:
            await watcher.disconnect()
        return event, received

    event, received = run(scenario)
    assert len(set(received)) == 1 and f'id="event-{event.pk}"' in received[0]
    assert rendered == [event.pk]


@pytest.mark.django_db(transaction=True)
def test_the_console_socket_replays_without_gap_or_duplicate_and_pushes_timeline_and_transitions(viewer_user):
    token = api_token(viewer_user)
    session = CodingSessionFactory(status="running")
    seen = record(session, "assistant.text", text="rendered with the page")
    missed = [record(session, "assistant.text", text=f"missed {n}") for n in range(3)]

    async def scenario():
        communicator = WebsocketCommunicator(
            application, f"/ws/console/sessions/{session.pk}?after={seen.pk}&token={token.key}")
        assert (await communicator.connect(timeout=TIMEOUT))[0]
        replayed = [await communicator.receive_from(timeout=TIMEOUT) for _ in missed]
        await database_sync_to_async(services.session_add_checkpoint)(session=session, git_ref="abc123",
                                                                      data={"task_step": 1, "reason": "step"})
        checkpoint_html = await communicator.receive_from(timeout=TIMEOUT)
        await database_sync_to_async(services.session_pause)(session=session, reason="lunch")
        pause_html = await communicator.receive_from(timeout=TIMEOUT)
        nothing_more = await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()
        return replayed, checkpoint_html, pause_html, nothing_more

    replayed, checkpoint_html, pause_html, nothing_more = run(scenario)
    assert [f'id="event-{event.pk}"' in html for event, html in zip(missed, replayed, strict=False)] == [True] * 3
    assert 'id="checkpoint-timeline" hx-swap-oob="outerHTML"' in checkpoint_html
    assert 'id="checkpoint-1"' in checkpoint_html and "Restore" not in checkpoint_html  # a viewer
    assert 'id="session-transitions" hx-swap-oob="outerHTML"' in pause_html and "lunch" in pause_html
    assert nothing_more


@pytest.mark.django_db(transaction=True)
def test_broadcasts_sent_together_reach_a_watcher_as_one_frame_in_order(viewer_user):
    from orchestrator import broadcaster, events
    from sessions.models import SessionEvent

    token = api_token(viewer_user)
    session = CodingSessionFactory(status="running")
    # Rows written without their own broadcasts; the test sends them as one batch, as
    # orchestrator.events does with whatever waits for a group when its turn comes.
    rows = SessionEvent.objects.bulk_create(
        [SessionEvent(session=session, type="assistant.text", payload={"text": f"part {n}"}) for n in range(3)])
    batch = {"type": broadcaster.BATCH_TYPE,
             "messages": [services.event_message(row, session.reference) for row in rows]}

    async def scenario():
        communicator = WebsocketCommunicator(application, f"/ws/console/sessions/{session.pk}?token={token.key}")
        assert (await communicator.connect(timeout=TIMEOUT))[0]
        await get_channel_layer().group_send(events.session_group(session.pk), batch)
        frame = await communicator.receive_from(timeout=TIMEOUT)
        nothing_more = await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()
        return frame, nothing_more

    frame, nothing_more = run(scenario)
    positions = [frame.index(f'id="event-{row.pk}"') for row in rows]
    assert positions == sorted(positions) and frame.count('hx-swap-oob="beforeend:#event-log"') == 3
    assert nothing_more


@pytest.mark.django_db(transaction=True)
def test_a_watcher_leaving_keeps_the_others_fed_and_the_last_one_ends_the_subscription(operator_user):
    from sessions import consumers

    token = api_token(operator_user)
    session = CodingSessionFactory(status="running")

    async def scenario():
        first, second = (WebsocketCommunicator(application, f"/ws/console/sessions/{session.pk}?token={token.key}")
                         for _ in range(2))
        assert (await first.connect(timeout=TIMEOUT))[0] and (await second.connect(timeout=TIMEOUT))[0]
        watching = consumers.fanout_watchers(session.pk)
        await first.disconnect()
        event = await database_sync_to_async(record)(session, "assistant.text", text="still watched")
        html = await second.receive_from(timeout=TIMEOUT)
        await second.disconnect()
        return watching, event, html, consumers.fanout_watchers(session.pk)

    watching, event, html, left = run(scenario)
    assert watching == 2  # two watchers fed by one subscription
    assert f'id="event-{event.pk}"' in html and left == 0


@pytest.mark.django_db
def test_task_titles_are_escaped_in_the_drawing(client, viewer_user):
    session = CodingSessionFactory(status="running")
    root = TaskFactory(session=session, title="Root")
    TaskFactory(session=session, parent=root, title='<script>alert("x")</script> & "quotes"')
    TaskFactory(session=session, parent=root, title="Second")
    client.force_login(viewer_user)
    body = client.get(reverse("sessions:graph", args=[session.pk])).content.decode()
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in body
