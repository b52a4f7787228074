"""The console's live pages over WebSocket (orchestrator.live_pages): what each page is pushed,
replay from `after` with no gap and no duplicate, and who may connect."""

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from orchestrator import events
from orchestrator.asgi import application
from orchestrator.testing import api_token
from orchestrator.testing import record_event as record
from orchestrator.testing import run_socket_scenario as run
from sessions import permissions, services
from sessions.tests.factories import CodingSessionFactory
from tasks.tests.factories import AgentFactory, TaskFactory

TIMEOUT = 15
pytestmark = pytest.mark.django_db(transaction=True)






def token_for(user):
    return api_token(user).key


async def drain(communicator, quiet=0.8):
    """Every message until none arrives for `quiet` seconds (pushes are gathered for 0.2 s)."""
    messages = [await communicator.receive_from(timeout=TIMEOUT)]
    while not await communicator.receive_nothing(timeout=quiet):
        messages.append(await communicator.receive_from(timeout=TIMEOUT))
    return messages


async def connected(path):
    communicator = WebsocketCommunicator(application, path)
    ok, code = await communicator.connect(timeout=TIMEOUT)
    assert ok, code
    return communicator


def test_sessions_feed_replays_the_missed_rows_once_then_continues_live(viewer_user):
    token = token_for(viewer_user)
    before = CodingSessionFactory(status="queued", title="Seen when the page was rendered")
    seen = record(before, "session.transition", **{"from": "pending", "to": "queued"})
    changed = CodingSessionFactory(status="running", title="Changed after the render")
    missed = record(changed, "session.transition", **{"from": "queued", "to": "running"})
    created = CodingSessionFactory(status="pending")
    made = record(created, "session.created", title=created.title)

    async def scenario():
        communicator = await connected(f"/ws/console/sessions?after={seen.pk}&token={token}")
        replayed = await drain(communicator)
        # The same events arriving live as well (their broadcast came after the replay read them).
        layer = get_channel_layer()
        for event in (missed, made):
            await layer.group_send(events.ALL_SESSIONS_GROUP, services.event_message(event, "IND"))
        duplicate_ignored = await communicator.receive_nothing(timeout=0.8)
        await database_sync_to_async(services.session_pause)(session=changed, reason="lunch")
        live = await drain(communicator)
        await communicator.disconnect()
        return replayed, duplicate_ignored, live

    replayed, duplicate_ignored, live = run(scenario)
    rows = [message for message in replayed if "<tr" in message]
    assert len(rows) == 1 and rows[0].lstrip().startswith(f'<tr id="session-row-{changed.pk}" hx-swap-oob="outerHTML">')
    assert "status-running" in rows[0]
    assert f"session-row-{before.pk}" not in "".join(replayed)  # before `after`: the page has it
    assert f"session-row-{created.pk}" not in "".join(replayed)  # new sessions are announced, not inserted
    assert "1 new session since this page was loaded" in replayed[-1]
    assert duplicate_ignored
    assert any(
        f'<tr id="session-row-{changed.pk}" hx-swap-oob="outerHTML">' in m and "status-paused" in m for m in live
    )
    assert "1 new session since" in live[-1]  # still one: the duplicate was not counted


def test_sessions_feed_without_after_sends_nothing_until_something_changes(viewer_user):
    token = token_for(viewer_user)
    session = CodingSessionFactory(status="queued")
    record(session, "session.transition", **{"from": "pending", "to": "queued"})

    async def scenario():
        communicator = await connected(f"/ws/console/sessions?token={token}")
        quiet = await communicator.receive_nothing(timeout=0.5)
        stray = None if quiet else await communicator.receive_output(timeout=TIMEOUT)
        await database_sync_to_async(services.session_cancel)(session=session)
        rows = await communicator.receive_from(timeout=TIMEOUT)
        counts = await communicator.receive_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return stray, rows, counts

    stray, rows, counts = run(scenario)
    assert stray is None, f"pushed before anything changed: {stray}"
    # The rows come alone: an HTML parser would drop a <tr> that follows another element.
    assert rows.lstrip().startswith(f'<tr id="session-row-{session.pk}" hx-swap-oob="outerHTML">')
    assert "status-cancelled" in rows and "<p" not in rows
    assert '<p class="muted" id="session-stats" hx-swap-oob="outerHTML">' in counts and "cancelled 1" in counts


def test_overview_feed_pushes_the_overview_and_the_nav_count(viewer_user):
    token = token_for(viewer_user)
    session = CodingSessionFactory(status="queued")
    latest = record(session, "session.transition", **{"from": "pending", "to": "queued"})

    async def scenario():
        communicator = await connected(f"/ws/console/overview?after={latest.pk}&token={token}")
        quiet = await communicator.receive_nothing(timeout=0.5)  # nothing missed
        await database_sync_to_async(services.session_cancel)(session=session)
        html = await communicator.receive_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return quiet, html

    quiet, html = run(scenario)
    assert quiet
    assert '<div id="overview" class="overview" hx-swap-oob="outerHTML">' in html
    assert 'id="count-cancelled" class="badge status-cancelled" data-count="1"' in html
    assert 'id="count-queued" class="badge status-queued" data-count="0"' in html
    assert 'id="nav-approvals"' in html


def test_approvals_feed_shows_a_new_request_with_buttons_for_operators_only(operator_user, viewer_user):
    operator_token, viewer_token = token_for(operator_user), token_for(viewer_user)
    session = CodingSessionFactory(status="running")

    def asked():
        request = permissions.permission_request_record(
            session_id=session.pk, task_id=None, opencode_session_id="ses_1",
            request={"id": "per_9", "permission": "bash", "patterns": ["make deploy"]},
        )
        record(session, "permission.asked", permission="bash", patterns=["make deploy"])
        return request

    async def scenario():
        operator = await connected(f"/ws/console/approvals?token={operator_token}")
        viewer = await connected(f"/ws/console/approvals?token={viewer_token}")
        request = await database_sync_to_async(asked)()
        for_operator = await operator.receive_from(timeout=TIMEOUT)
        for_viewer = await viewer.receive_from(timeout=TIMEOUT)
        await operator.disconnect()
        await viewer.disconnect()
        return request, for_operator, for_viewer

    request, for_operator, for_viewer = run(scenario)
    for html in (for_operator, for_viewer):
        assert '<section class="card" id="inbox" aria-labelledby="inbox-title" hx-swap-oob="outerHTML">' in html
        assert f'id="approval-{request.pk}"' in html and "make deploy" in html
        assert 'id="nav-approvals" class="count pending" hx-swap-oob="outerHTML" aria-label="1 pending">1<' in html
    assert f"/approvals/{request.pk}/reply" in for_operator
    assert f"/approvals/{request.pk}/reply" not in for_viewer


def test_approvals_feed_keeps_the_pages_filters(operator_user):
    token = token_for(operator_user)
    session = CodingSessionFactory(status="running")

    def ask_both():
        for opencode_id, tool in (("per_1", "bash"), ("per_2", "edit")):
            permissions.permission_request_record(session_id=session.pk, task_id=None, opencode_session_id="s",
                                                request={"id": opencode_id, "permission": tool, "patterns": [tool]})
        record(session, "permission.asked", permission="edit")

    async def scenario():
        communicator = await connected(f"/ws/console/approvals?permission=edit&token={token}")
        await database_sync_to_async(ask_both)()
        html = await communicator.receive_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return html

    html = run(scenario)
    assert '<strong class="tool">edit</strong>' in html and '<strong class="tool">bash</strong>' not in html


def test_agents_feed_pushes_the_rows_when_a_task_moves(viewer_user):
    token = token_for(viewer_user)
    agent = AgentFactory(name="AGENT-LIVE", current_load=0, max_concurrent_tasks=2)
    session = CodingSessionFactory(status="running")

    def assign():
        TaskFactory(session=session, title="Sketch the API", assigned_agent=agent, status="in_progress")
        type(agent).objects.filter(pk=agent.pk).update(current_load=1)
        record(session, "task.routed", agent=agent.name)

    async def scenario():
        communicator = await connected(f"/ws/console/agents?token={token}")
        await database_sync_to_async(assign)()
        html = await communicator.receive_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return html

    html = run(scenario)
    assert '<tbody id="agent-rows" hx-swap-oob="outerHTML">' in html
    row = html[html.index(f'id="agent-{agent.pk}"'):]
    assert "width: 50%" in row[: row.index("</tr>")] and "Sketch the API" in row


def test_live_pages_refuse_anonymous_users_and_unknown_pages(viewer_user):
    token = token_for(viewer_user)

    def connect(path):
        async def go():
            communicator = WebsocketCommunicator(application, path)
            ok, code = await communicator.connect(timeout=TIMEOUT)
            if ok:
                await communicator.disconnect()
            return ok, code

        return run(go)

    for page in ("overview", "sessions", "approvals", "agents"):
        assert connect(f"/ws/console/{page}") == (False, 4401)
    assert connect(f"/ws/console/secrets?token={token}") == (False, 4404)
    assert connect(f"/ws/console/overview?token={token}")[0] is True
