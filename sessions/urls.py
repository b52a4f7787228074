from django.urls import path

from sessions import fleet_views, monitor, plan_review, views

app_name = "sessions"

urlpatterns = [
    path("", fleet_views.session_list, name="list"),
    path("new", fleet_views.session_create, name="create"),
    path("<int:session_id>/", views.session_detail, name="detail"),
    path("<int:session_id>/actions/<slug:action>", views.session_action, name="action"),
    path("<int:session_id>/permissions", views.session_permissions, name="permissions"),
    path("<int:session_id>/events", monitor.session_events, name="events"),
    path("<int:session_id>/diff", monitor.session_diff, name="diff"),
    path("<int:session_id>/graph", monitor.session_graph, name="graph"),
    path("<int:session_id>/messages", monitor.session_message, name="message"),
    path("<int:session_id>/plan", plan_review.session_plan, name="plan"),
    path("<int:session_id>/plan/edit", plan_review.session_plan_edit, name="plan-edit"),
    path("<int:session_id>/plan/approve", plan_review.session_plan_approve, name="plan-approve"),
    path("<int:session_id>/plan/revise", plan_review.session_plan_revise, name="plan-revise"),
    path("<int:session_id>/checkpoints/<int:sequence>/restore", monitor.session_restore, name="restore"),
    path(
        "<int:session_id>/permissions/<int:request_id>/reply",
        views.session_permission_reply,
        name="permission-reply",
    ),
]

# Mounted at /approvals/ (namespace "approvals") by orchestrator/urls.py.
approval_urlpatterns = [
    path("", fleet_views.approvals_inbox, name="inbox"),
    path("<int:request_id>/reply", fleet_views.approval_reply, name="reply"),
]
