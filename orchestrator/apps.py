from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Orchestrator"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Celery signals for job metrics and log context (they fire only in worker processes).
        from orchestrator import metrics_worker  # noqa: F401
