"""Everything under /api/v1/, namespaced "api"; each app's api.py lists its own routes."""

from django.urls import path, re_path

from agents.api import urlpatterns as agent_urls
from contexts.api import urlpatterns as context_urls
from orchestrator.api import api_not_found, api_root
from sessions.api import urlpatterns as session_urls
from sessions.planning.api import urlpatterns as plan_urls
from tasks.api import urlpatterns as task_urls

app_name = "api"

urlpatterns = [
    path("", api_root, name="root"),
    *session_urls,
    *plan_urls,
    *agent_urls,
    *task_urls,
    *context_urls,
    # Last: any other path under /api/v1/ answers a JSON 404, not Django's HTML page.
    re_path(r"^.*$", api_not_found),
]
