"""The session monitor on the Django test client: header, windowed events, checkpoint timeline and
restore, the patch per file, transitions, follow-up messages (console and API). Git work happens in
real repositories and worktrees made by the engine's own workspace functions."""

from types import SimpleNamespace

import pytest
from django.urls import reverse

from orchestrator.testing import make_git_repository
from sessions import checkpoints, diffs, followups, services
from sessions.execution import workspace
from sessions.models import CodingSession, SessionEvent
from sessions.tests.factories import CodingSessionFactory
from tasks.tests.factories import AgentFactory, TaskFactory

HTMX = {"HTTP_HX_REQUEST": "true"}


def record(session, type, **payload):
    return services.session_record_event(session=session, type=type, payload=payload)


def checkpoint(run, name, step):
    made = workspace.create_checkpoint(path=run.ws.path, reference=run.session.reference, name=name,
                                       previous=run.last)
    run.last = made
    services.session_add_checkpoint(
        session=run.session, git_ref=made.commit, opencode_message_id=name,
        data={"task_id": run.task.pk, "message_id": name, "task_step": step, "reason": "step"},
    )
    return made


@pytest.fixture
def worked(tmp_path):
    """A running session with a worktree of a real repository and two step checkpoints:
    step 1 adds app.py; step 2 changes app.py and README.md."""
    repository = make_git_repository(tmp_path / "repo", {"README.md": "# Demo\nold line\nend\n"})
    session = CodingSessionFactory(status="running", repository=str(repository))
    ws = workspace.prepare_workspace(repository=repository, root=tmp_path / "worktrees", reference=session.reference)
    services.session_set_runtime(session_id=session.pk, workspace_path=str(ws.path), branch_name=ws.branch)
    record(session, "workspace.ready", path=str(ws.path), branch=ws.branch, base_commit=ws.base_commit)
    task = TaskFactory(session=session, title="Write the endpoint", status="in_progress",
                       assigned_agent=AgentFactory(name="AGENT-MONITOR-1"))
    run = SimpleNamespace(session=CodingSession.objects.get(pk=session.pk), ws=ws, task=task, repository=repository,
                          last=None)
    (ws.path / "app.py").write_text("print('v1')\n")
    run.first = checkpoint(run, "msg1", 1)
    (ws.path / "app.py").write_text("print('v2')\n")
    (ws.path / "README.md").write_text("# Demo\nnew line\nend\n")
    run.second = checkpoint(run, "msg2", 2)
    return run


# --- header ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_header_shows_the_current_task_its_agent_and_a_ticking_clock(client, viewer_user, worked):
    client.force_login(viewer_user)
    body = client.get(reverse("sessions:detail", args=[worked.session.pk])).content.decode()
    header = body[body.index('id="session-header"'):body.index("</section>")]
    assert "Write the endpoint" in header and "AGENT-MONITOR-1" in header
    assert f'href="#task-{worked.task.pk}"' in header and 'data-ticking="1"' in header
    assert "/ 1h 00m" in header  # the default budget of 3,600 s


@pytest.mark.django_db
def test_header_of_a_failed_session_names_its_typed_reason_and_its_clock_is_stopped(client, viewer_user):
    session = CodingSessionFactory(status="running")
    services.session_fail(session=session, reason="every task failed",
                          error={"type": "no_task_completed", "message": "no task completed"})
    client.force_login(viewer_user)
    body = client.get(reverse("sessions:detail", args=[session.pk])).content.decode()
    header = body[body.index('id="session-header"'):body.index("</section>")]
    assert '<code class="reason-code">no_task_completed</code> no task completed' in header
    assert "data-ticking" not in header


# --- the windowed event log -----------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_holds_the_newest_events_and_older_windows_load_by_event_id(client, viewer_user):
    session = CodingSessionFactory(status="running")
    for n in range(250):
        record(session, "assistant.text", text=f"line {n}")
    ids = list(session.events.order_by("pk").values_list("pk", flat=True))
    client.force_login(viewer_user)
    body = client.get(reverse("sessions:detail", args=[session.pk])).content.decode()
    shown = [pk for pk in ids if f'id="event-{pk}"' in body]
    assert shown == ids[-100:]
    events_url = reverse("sessions:events", args=[session.pk])
    assert f'hx-get="{events_url}?before={ids[-100]}"' in body
    seen = list(shown)
    before = ids[-100]
    while before is not None:
        part = client.get(events_url, {"before": before}, **HTMX).content.decode()
        window = [pk for pk in ids if f'id="event-{pk}"' in part]
        assert window and max(window) < before
        seen = window + seen
        marker = f"{events_url}?before="
        before = int(part.split(marker, 1)[1].split('"', 1)[0]) if marker in part else None
    # Every event exactly once, in order, across the windows.
    assert seen == ids


@pytest.mark.django_db
def test_older_events_without_javascript_are_a_page_and_a_bad_cursor_is_a_400(client, viewer_user):
    session = CodingSessionFactory(status="running")
    rows = [record(session, "assistant.text", text=f"line {n}") for n in range(3)]
    client.force_login(viewer_user)
    url = reverse("sessions:events", args=[session.pk])
    page = client.get(url, {"before": rows[-1].pk})
    assert page.status_code == 200 and "<html" in page.content.decode()
    assert "line 0" in page.content.decode() and "line 2" not in page.content.decode()
    assert client.get(url, {"before": "abc"}, **HTMX).status_code == 400
    assert client.get(url, **HTMX).status_code == 400


# --- checkpoint timeline and restore --------------------------------------------------------------


@pytest.mark.django_db
def test_the_timeline_groups_steps_by_task_with_the_files_each_changed(worked):
    (group,) = checkpoints.checkpoint_timeline(session=worked.session)
    assert group.task_title == "Write the endpoint"
    first, second = group.entries
    assert (first.sequence, first.task_step, second.sequence, second.task_step) == (1, 1, 2, 2)
    assert first.files == [{"file": "app.py", "status": "added", "additions": 1, "deletions": 0}]
    assert second.files == [
        {"file": "README.md", "status": "modified", "additions": 1, "deletions": 1},
        {"file": "app.py", "status": "modified", "additions": 1, "deletions": 1},
    ]


@pytest.mark.django_db
def test_restore_resets_the_worktree_to_the_checkpoint_and_sets_the_resume_point(worked):
    stopped = services.session_stop(session=worked.session)
    (worked.ws.path / "app.py").write_text("print('broken')\n")
    (worked.ws.path / "scratch.txt").write_text("left over\n")
    restored = checkpoints.checkpoint_restore(session=stopped, sequence=1)
    assert (worked.ws.path / "app.py").read_text() == "print('v1')\n"
    assert (worked.ws.path / "README.md").read_text() == "# Demo\nold line\nend\n"
    assert not (worked.ws.path / "scratch.txt").exists()
    assert restored.resume_checkpoint.sequence == 1
    assert list(SessionEvent.objects.filter(session=stopped, type__in=[
        "session.checkpoint_restored", "workspace.restored"]).values_list("type", "payload__sequence")) == [
        ("session.checkpoint_restored", 1), ("workspace.restored", 1)]


@pytest.mark.django_db
def test_restore_through_the_api_is_refused_with_409_while_running_and_resets_once_stopped(api_client, worked):
    url = reverse("api:session-restore-checkpoint", args=[worked.session.pk, 1])
    (worked.ws.path / "app.py").write_text("print('in progress')\n")
    refused = api_client.post(url)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["details"]["current"] == "running" and "running" in error["message"]
    assert (worked.ws.path / "app.py").read_text() == "print('in progress')\n"
    services.session_stop(session=worked.session)
    response = api_client.post(url)
    assert response.status_code == 200 and response.json()["resume_checkpoint"] == 1
    assert (worked.ws.path / "app.py").read_text() == "print('v1')\n"
    assert api_client.post(reverse("api:session-restore-checkpoint", args=[worked.session.pk, 9])).status_code == 404


@pytest.mark.django_db
def test_operators_restore_from_the_timeline_and_viewers_get_no_button(client, operator_user, viewer_user, worked):
    services.session_stop(session=worked.session)
    restore_url = reverse("sessions:restore", args=[worked.session.pk, 2])
    client.force_login(viewer_user)
    page = client.get(reverse("sessions:detail", args=[worked.session.pk])).content.decode()
    assert 'id="checkpoint-2"' in page and "app.py" in page and restore_url not in page
    assert client.post(restore_url, **HTMX).status_code == 403
    client.force_login(operator_user)
    page = client.get(reverse("sessions:detail", args=[worked.session.pk])).content.decode()
    assert f'action="{restore_url}"' in page
    (worked.ws.path / "app.py").write_text("print('broken')\n")
    body = client.post(restore_url, **HTMX).content.decode()
    assert "Checkpoint 2 restored" in body and 'id="checkpoint-timeline"' in body
    assert (worked.ws.path / "app.py").read_text() == "print('v2')\n"


@pytest.mark.django_db
def test_the_timeline_offers_no_restore_while_running_and_a_forged_post_shows_the_refusal(
    client, operator_user, worked
):
    client.force_login(operator_user)
    restore_url = reverse("sessions:restore", args=[worked.session.pk, 1])
    assert restore_url not in client.get(reverse("sessions:detail", args=[worked.session.pk])).content.decode()
    body = client.post(restore_url, **HTMX).content.decode()
    assert "not running" in body and "is running" in body


# --- the patch ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_patch_per_file_comes_from_the_newest_checkpoint_then_from_the_committed_branch(
    client, viewer_user, worked
):
    running = diffs.session_diff(session=worked.session)
    assert running.source == "checkpoint 2" and running.base == worked.ws.base_commit
    assert [(f.path, f.status, f.additions, f.deletions) for f in running.files] == [
        ("README.md", "modified", 1, 1), ("app.py", "added", 1, 0)]
    readme = running.files[0]
    assert [(line.kind, line.text) for line in readme.lines if line.kind in ("add", "del")] == [
        ("del", "-old line"), ("add", "+new line")]
    # The run ends: its work is committed on the branch, which is now the newer source.
    (worked.ws.path / "big.txt").write_text("".join(f"row {n}\n" for n in range(300)))
    workspace.commit_workspace(path=worked.ws.path, message="done")
    ended = diffs.session_diff(session=worked.session)
    assert ended.source == "branch" and [f.path for f in ended.files] == ["README.md", "app.py", "big.txt"]
    client.force_login(viewer_user)
    body = client.get(reverse("sessions:diff", args=[worked.session.pk]), **HTMX).content.decode()
    assert '<span class="pl pl-add">+new line</span>' in body and '<span class="pl pl-del">-old line</span>' in body
    # The large file is collapsed (<details> without open), the small ones open.
    assert body.count('<details class="file-patch" open>') == 2
    assert body.count('<details class="file-patch">') == 1 and "large change, collapsed" in body
    page = client.get(reverse("sessions:diff", args=[worked.session.pk]))
    assert "<html" in page.content.decode() and "big.txt" in page.content.decode()


@pytest.mark.django_db
def test_a_session_that_never_ran_has_no_diff(client, viewer_user):
    session = CodingSessionFactory(status="pending")
    assert diffs.session_diff(session=session) is None
    client.force_login(viewer_user)
    assert "No diff yet" in client.get(reverse("sessions:diff", args=[session.pk]), **HTMX).content.decode()


# --- transitions ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_transitions_history_lists_each_with_actor_and_reason(client, viewer_user, operator_user):
    session = services.session_create(title="Add a health endpoint", initial_prompt="do it", repository="/srv/r")
    services.session_start(session=session, actor=services.Actor.of_user(operator_user))
    services.session_cancel(session=session, actor=services.Actor.of_user(operator_user), reason="wrong repository")
    client.force_login(viewer_user)
    body = client.get(reverse("sessions:detail", args=[session.pk])).content.decode()
    part = body[body.index('id="session-transitions"'):]
    part = part[:part.index("</section>")]
    assert part.count("<tr><td>") == 2 and "wrong repository" in part and operator_user.get_username() in part
    assert part.index("pending</span> → ") < part.index("queued</span> → ")


# --- follow-up messages ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_message_to_a_finished_session_starts_a_follow_up_on_a_branch_continuing_its_own(
    api_client, worked, broker_queues, django_capture_on_commit_callbacks, tmp_path
):
    services.session_stop(session=worked.session)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(reverse("api:session-messages", args=[worked.session.pk]),
                                   {"text": "Also log each call to /health."}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["delivery"] == "follow_up_session" and body["task_id"] is None
    child = CodingSession.objects.get(pk=body["follow_up_session"]["id"])
    assert (child.parent_id, child.status, child.initial_prompt) == (
        worked.session.pk, "queued", "Also log each call to /health.")
    assert child.repository == worked.session.repository and child.metadata["follow_up"]["checkpoint"] == 2
    # Its branch starts at the parent's last checkpoint, which continues the parent's branch.
    branch = workspace.branch_name(child.reference)
    tip = workspace.git("rev-parse", branch, cwd=worked.repository).strip()
    assert tip == worked.second.commit
    assert workspace.git("merge-base", "--is-ancestor", worked.session.branch_name, branch,
                         cwd=worked.repository, status=True, check=False)
    # The engine's workspace step opens that branch: the child starts with the parent's files.
    child_ws = workspace.prepare_workspace(repository=worked.repository, root=tmp_path / "child",
                                           reference=child.reference)
    assert (child_ws.path / "app.py").read_text() == "print('v2')\n"
    jobs = broker_queues.drain()
    assert [job["kwargs"] for job in jobs] == [{"session_id": child.pk}]
    event = SessionEvent.objects.get(session=worked.session, type="session.follow_up")
    assert event.payload["child_reference"] == child.reference and event.pk == body["event_id"]


@pytest.mark.django_db
def test_a_message_to_a_running_task_is_kept_durably_for_its_next_turn(api_client, worked):
    response = api_client.post(reverse("api:session-messages", args=[worked.session.pk]),
                               {"text": "Use port 8080, not 8000."}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert (body["delivery"], body["task_id"], body["follow_up_session"]) == ("next_turn", worked.task.pk, None)
    (pending,) = followups.pending_operator_messages(session_id=worked.session.pk, task_id=worked.task.pk)
    assert pending.pk == body["event_id"] and pending.type == "operator.message"
    assert pending.payload["text"] == "Use port 8080, not 8000." and pending.payload["delivery"] == "pending"
    assert pending.payload["agent"] == "AGENT-MONITOR-1"
    # Once the engine records the delivery, the message is no longer pending.
    record(worked.session, "operator.message.delivered", message_event_id=pending.pk)
    assert followups.pending_operator_messages(session_id=worked.session.pk, task_id=worked.task.pk) == []


@pytest.mark.django_db
def test_a_message_is_refused_with_409_naming_the_state_when_the_session_can_take_none(api_client):
    pending = CodingSessionFactory(status="pending")
    url = reverse("api:session-messages", args=[pending.pk])
    refused = api_client.post(url, {"text": "hello"}, format="json")
    assert refused.status_code == 409
    assert (
        refused.json()["error"]["details"]["current"] == "pending"
        and "is pending" in refused.json()["error"]["message"]
    )
    running_without_task = CodingSessionFactory(status="running")
    refused = api_client.post(reverse("api:session-messages", args=[running_without_task.pk]), {"text": "hi"},
                              format="json")
    assert refused.status_code == 409 and "no task is in progress" in refused.json()["error"]["message"]
    cancelled = CodingSessionFactory(status="cancelled")
    assert api_client.post(reverse("api:session-messages", args=[cancelled.pk]), {"text": "hi"},
                           format="json").status_code == 409
    assert not SessionEvent.objects.filter(type__in=["operator.message", "session.follow_up"]).exists()
    assert CodingSession.objects.count() == 3


@pytest.mark.django_db
def test_a_message_must_have_bounded_text_and_viewers_cannot_send_one(api_client, viewer_client):
    session = CodingSessionFactory(status="completed")
    url = reverse("api:session-messages", args=[session.pk])
    empty = api_client.post(url, {"text": ""}, format="json")
    assert empty.status_code == 400 and "text" in empty.json()["error"]["details"]
    long = api_client.post(url, {"text": "x" * (followups.MESSAGE_MAX + 1)}, format="json")
    assert long.status_code == 400 and "text" in long.json()["error"]["details"]
    assert viewer_client.post(url, {"text": "hi"}, format="json").status_code == 403
    assert CodingSession.objects.count() == 1


@pytest.mark.django_db
def test_the_console_form_sends_a_message_and_viewers_have_no_form(client, operator_user, viewer_user, worked):
    url = reverse("sessions:message", args=[worked.session.pk])
    client.force_login(viewer_user)
    assert f'action="{url}"' not in client.get(reverse("sessions:detail", args=[worked.session.pk])).content.decode()
    assert client.post(url, {"text": "forged"}, **HTMX).status_code == 403
    client.force_login(operator_user)
    assert f'action="{url}"' in client.get(reverse("sessions:detail", args=[worked.session.pk])).content.decode()
    body = client.post(url, {"text": "Use port 8080."}, **HTMX).content.decode()
    assert "Message kept for task" in body and 'id="session-followup"' in body
    assert SessionEvent.objects.filter(session=worked.session, type="operator.message").count() == 1
    refused = client.post(url, {"text": ""}, **HTMX).content.decode()
    assert "text: is required" in refused
