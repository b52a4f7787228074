"""Logging: plain or JSON lines, with the request id, session reference and job id of each record,
secrets redacted, and the periodic jobs' heartbeat lines kept out of the INFO log.

`logging_config(...)` builds the LOGGING dict settings.py uses. Nothing here imports Django models:
settings imports this module, and the filters read settings lazily, when the first record passes.

Context travels in context variables (set by `RequestIdMiddleware` for a request and by the Celery
signals of `orchestrator.metrics_worker` for a job). The execution engine runs a session's tasks in
threads named after the session (`IND-000042-task_0`), which start with an empty context, so the
session reference is also read from the thread's name.
"""

import contextvars
import json
import logging
import re
import threading
import uuid
from datetime import UTC, datetime

from django.core.exceptions import ImproperlyConfigured

request_id_var = contextvars.ContextVar("request_id", default="")
session_var = contextvars.ContextVar("session", default="")
job_id_var = contextvars.ContextVar("job_id", default="")
task_id_var = contextvars.ContextVar("task_id", default="")

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming X-Request-ID is kept only when it is short and plain: it is echoed and logged.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
THREAD_SESSION = re.compile(r"^(IND-\d+)(?:-|$)")

# Jobs beat sends every few seconds; their "received" / "succeeded" lines and beat's
# "Sending due task" lines go to DEBUG so the INFO log shows what happened, not the clock.
QUIET_JOBS = ("sessions.dispatch", "sessions.reconcile")
QUIET_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")

REDACTED = "[redacted]"
# Settings whose values are secrets; a URL setting contributes only its password.
SECRET_SETTINGS = ("SECRET_KEY", "OPENCODE_SERVER_PASSWORD", "OPENCODE_CONFIG_CONTENT", "METRICS_TOKEN")
SECRET_URL_SETTINGS = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
# Credentials that announce themselves, whatever their value: HTTP auth headers, URL passwords.
CREDENTIAL_PATTERNS = (
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:(?:token|bearer|basic)\s+)?[^\s'\",}]+"),
    re.compile(r"(?i)\b((?:token|bearer)\s+)[A-Za-z0-9._~+/=-]{16,}"),
    re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(@)"),
)


def log_task(task_id: int) -> None:
    """Name the task the current thread works for in its log records (the engine's task threads)."""
    task_id_var.set(str(task_id))


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_session() -> str:
    return session_var.get() or _session_of_thread()


def _session_of_thread():
    match = THREAD_SESSION.match(threading.current_thread().name)
    return match.group(1) if match else ""


class ContextFilter(logging.Filter):
    """Adds request_id, session, job_id and task_id to every record (empty when unknown)."""

    def filter(self, record):
        record.request_id = request_id_var.get()
        record.session = current_session()
        record.job_id = job_id_var.get()
        record.task_id = task_id_var.get()
        return True


class QuietPeriodicJobsFilter(logging.Filter):
    """Lowers the INFO lines of beat's frequent jobs to DEBUG (dropped unless the root logs DEBUG)."""

    def filter(self, record):
        if record.levelno != logging.INFO or not record.name.startswith(QUIET_LOGGERS):
            return True
        if not any(job in record.getMessage() for job in QUIET_JOBS):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def secret_values():
    """The secret values configured in settings (at least 4 characters: shorter ones are too common
    to replace safely in text)."""
    from urllib.parse import urlparse

    from django.conf import settings

    values = set()
    for name in SECRET_SETTINGS:
        value = getattr(settings, name, "") or ""
        if isinstance(value, str) and len(value) >= 4:
            values.add(value)
    for name in SECRET_URL_SETTINGS:
        url = getattr(settings, name, "") or ""
        password = urlparse(url).password if isinstance(url, str) else None
        if password and len(password) >= 4:
            values.add(password)
    database_password = settings.DATABASES.get("default", {}).get("PASSWORD") or ""
    if len(database_password) >= 4:
        values.add(database_password)
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in CREDENTIAL_PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + REDACTED + (match.group(2) if match.re.groups > 1 else ""),
                           text)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats, then removes secrets from the whole line (message, arguments, traceback alike)."""

    _secrets = None

    def secrets(self):
        if self._secrets is None:
            try:
                self._secrets = secret_values()
            except ImproperlyConfigured:  # a record before settings load: the patterns still apply
                return []
        return self._secrets

    def format(self, record):
        return redact(super().format(record), self.secrets())


class PlainFormatter(RedactingFormatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


class JsonFormatter(RedactingFormatter):
    """One JSON object per line: time, level, logger, message, the context fields that are set,
    and the traceback as `exception`."""

    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("request_id", "session", "job_id", "task_id"):
            value = getattr(record, field, "")
            if value:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return redact(json.dumps(entry, default=str, ensure_ascii=False), self.secrets())


def logging_config(*, log_format: str, level: str) -> dict:
    """The LOGGING setting: one console handler, plain or JSON, with the context and quiet filters."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": ContextFilter},
            "quiet_periodic_jobs": {"()": QuietPeriodicJobsFilter},
        },
        "formatters": {
            "plain": {"()": PlainFormatter},
            "json": {"()": JsonFormatter},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["context", "quiet_periodic_jobs"],
            },
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            "daphne": {"level": "WARNING"},
        },
    }


class RequestIdMiddleware:
    """Gives each request an id (the client's X-Request-ID when it is plain, else a new one), logs
    under it and answers it in X-Request-ID."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else new_request_id()
        request.request_id = request_id
        # Not reset on the way out: Django logs a 4xx/5xx ("Not Found: ...") after the middleware
        # chain has returned, and that line belongs to this request. The next request on this
        # thread or task sets its own id.
        request_id_var.set(request_id)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response
