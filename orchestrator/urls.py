from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from orchestrator import health, metrics, views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("live", health.live, name="live"),
    path("ready", health.ready, name="ready"),
    path("health", health.health, name="health"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/v1/", include("orchestrator.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("sessions/", include("sessions.urls")),
    path("agents/", include("agents.urls")),
    path("tasks/", include("tasks.urls")),
    path("contexts/", include("contexts.urls")),
]
