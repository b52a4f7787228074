from django.apps import AppConfig


class SessionsConfig(AppConfig):
    # django.contrib.sessions already owns the label "sessions".
    name = "sessions"
    label = "coding_sessions"
    verbose_name = "Coding sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from sessions import worker_signals  # noqa: F401  (connects the worker-shutdown receiver)
