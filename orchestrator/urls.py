from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from orchestrator import api, auth, health, metrics, views
from sessions.urls import approval_urlpatterns

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("live", health.live, name="live"),
    path("ready", health.ready, name="ready"),
    path("health", health.health, name="health"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/v1/", include("orchestrator.api_urls")),
    # Without its slash the root answers too: APPEND_SLASH cannot redirect a POST, and with DEBUG
    # on that was a 500 debug page listing the settings.
    re_path(r"^api/v1$", api.api_root),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # Anything else under /api/: a JSON 404, never Django's HTML page.
    re_path(r"^api(/.*)?$", api.api_not_found),
    path("sessions/", include("sessions.urls")),
    path("approvals/", include((approval_urlpatterns, "approvals"))),
    path("agents/", include("agents.urls")),
    path("tasks/", include("tasks.urls")),
    path("contexts/", include("contexts.urls")),
]

# Errors raised outside a DRF view (the URL resolver, Django's request parsing): JSON under /api/,
# Django's plain pages elsewhere.
handler400 = "orchestrator.api.bad_request"
handler404 = "orchestrator.api.page_not_found"
handler500 = "orchestrator.api.server_error"
