"""A Celery worker shutting down stops what the sessions app started in it."""

import os
import subprocess
import sys

from django.conf import settings


def test_setting_django_up_connects_the_worker_shutdown_receiver_of_the_sessions_app():
    # A fresh interpreter that only sets Django up, as a worker does: SessionsConfig.ready() connects it.
    code = (
        "import django; django.setup(); from celery.signals import worker_shutdown; "
        "live = worker_shutdown._live_receivers(sender=None); "
        "live = [r for group in live for r in group] if live and isinstance(live[0], list) else live; "
        "print(sorted(f'{r.__module__}.{r.__name__}' for r in live))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "orchestrator.settings"}
    result = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sessions.worker_signals.stop_opencode_servers" in result.stdout
