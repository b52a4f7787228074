"""Logs: JSON lines with their context, request ids, secrets redacted, periodic jobs kept quiet."""

import io
import json
import logging
import threading

import pytest

from orchestrator import logs


def handler_for(log_format, *, level="INFO"):
    """A handler configured exactly as LOGGING's console handler, writing to a buffer."""
    config = logs.logging_config(log_format=log_format, level=level)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        {"plain": logs.PlainFormatter, "json": logs.JsonFormatter}[config["handlers"]["console"]["formatter"]]()
    )
    for name in config["handlers"]["console"]["filters"]:
        handler.addFilter(config["filters"][name]["()"]())
    return handler, stream


@pytest.fixture
def capture():
    made = []

    def attach(logger_name, log_format="json"):
        handler, stream = handler_for(log_format)
        logger = logging.getLogger(logger_name)
        logger.addHandler(handler)
        made.append((logger, handler))
        return stream

    yield attach
    for logger, handler in made:
        logger.removeHandler(handler)


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_request_id_session_and_job(capture):
    stream = capture("orchestrator.test.json")
    tokens = [logs.request_id_var.set("req-1"), logs.session_var.set("IND-000042"), logs.job_id_var.set("job-9"),
              logs.task_id_var.set("7")]
    try:
        logging.getLogger("orchestrator.test.json").warning("checkpoint %s written", 3)
    finally:
        for variable, token in zip(
            [logs.request_id_var, logs.session_var, logs.job_id_var, logs.task_id_var], tokens, strict=False
        ):
            variable.reset(token)
    [entry] = lines(stream)
    assert entry["message"] == "checkpoint 3 written"
    assert entry["level"] == "WARNING" and entry["logger"] == "orchestrator.test.json"
    assert (entry["request_id"], entry["session"], entry["job_id"], entry["task_id"]) == (
        "req-1",
        "IND-000042",
        "job-9",
        "7",
    )
    assert entry["time"].endswith("+00:00")


def test_a_session_task_thread_logs_under_its_session(capture):
    stream = capture("orchestrator.test.thread")
    worker = threading.Thread(target=lambda: logging.getLogger("orchestrator.test.thread").info("prompted"),
                              name="IND-000123-task_0")
    worker.start()
    worker.join()
    [entry] = lines(stream)
    assert entry["session"] == "IND-000123"


def test_exceptions_are_one_json_line_with_the_traceback(capture):
    stream = capture("orchestrator.test.exc")
    try:
        raise ValueError("broken step")
    except ValueError:
        logging.getLogger("orchestrator.test.exc").exception("step failed")
    [entry] = lines(stream)
    assert "ValueError: broken step" in entry["exception"]


def test_secret_settings_and_credentials_are_redacted(capture, settings):
    settings.SECRET_KEY = "django-secret-key-value-1234567890"
    settings.OPENCODE_SERVER_PASSWORD = "opencode-pass-value"
    settings.REDIS_URL = "redis://:redis-pass-value@redis:6379/0"
    settings.METRICS_TOKEN = "metrics-token-value"
    for log_format in ("json", "plain"):
        stream = capture(f"orchestrator.test.secrets.{log_format}", log_format)
        logger = logging.getLogger(f"orchestrator.test.secrets.{log_format}")
        logger.error("settings: %s %s", settings.SECRET_KEY, settings.REDIS_URL)
        logger.error("headers: %r", {"Authorization": "Token 0123456789abcdef0123456789abcdef01234567"})
        logger.error("calling with bearer abcdefghijklmnopqrstuvwxyz123456 and %s", "opencode-pass-value")
        logger.error(
            "url postgresql://orchestrator:db-pass-value@postgres:5432/orchestrator; token metrics-token-value"
        )
        try:
            raise ConnectionError(f"cannot reach {settings.REDIS_URL}")
        except ConnectionError:
            logger.exception("broker down")
        text = stream.getvalue()
        for secret in ("django-secret-key-value", "redis-pass-value", "0123456789abcdef0123456789abcdef01234567",
                       "abcdefghijklmnopqrstuvwxyz123456", "opencode-pass-value", "db-pass-value",
                       "metrics-token-value"):
            assert secret not in text, f"{secret} leaked in {log_format}: {text}"
        assert text.count(logs.REDACTED) >= 7
        assert "redis:6379/0" in text  # the rest of the line stays readable


def test_beat_heartbeat_lines_leave_the_info_log(capture):
    stream = capture("celery", "plain")
    logging.getLogger("celery.beat").info(
        "Scheduler: Sending due task %s (%s)", "sessions-dispatch", "sessions.dispatch"
    )
    logging.getLogger("celery.worker.strategy").info("Task sessions.reconcile[1f0c] received")
    logging.getLogger("celery.app.trace").info("Task sessions.dispatch[2a7e] succeeded in 0.01s: 0")
    logging.getLogger("celery.beat").info(
        "Scheduler: Sending due task %s (%s)", "cleanup", "sessions.cleanup_workspaces"
    )
    logging.getLogger("celery.app.trace").info("Task sessions.execute_session[3b9d] succeeded in 4.2s: None")
    logging.getLogger("celery.app.trace").error("Task sessions.dispatch[4c1a] raised unexpected: OperationalError()")
    text = stream.getvalue()
    assert "sessions-dispatch" not in text and "sessions.reconcile" not in text
    assert "sessions.dispatch[2a7e]" not in text
    assert "sessions.cleanup_workspaces" in text
    assert "sessions.execute_session[3b9d] succeeded" in text
    assert "sessions.dispatch[4c1a] raised unexpected" in text  # errors are never quieted


def test_beat_heartbeat_lines_return_at_debug(capture):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.DEBUG)
    try:
        stream = capture("celery", "plain")
        logging.getLogger("celery.beat").info("Scheduler: Sending due task sessions-dispatch (sessions.dispatch)")
    finally:
        root.setLevel(previous)
    assert "DEBUG celery.beat: Scheduler: Sending due task sessions-dispatch" in stream.getvalue()


def test_request_id_is_answered_and_logged(client, db, capture):
    response = client.get("/live")
    generated = response["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/live", HTTP_X_REQUEST_ID="edge-abc.123")["X-Request-ID"] == "edge-abc.123"
    # An id that is not plain text is replaced rather than echoed into headers and logs.
    replaced = client.get("/live", HTTP_X_REQUEST_ID="bad id\twith spaces")["X-Request-ID"]
    assert replaced != "bad id\twith spaces" and len(replaced) == 32

    stream = capture("django.request")
    client.get("/no/such/page", HTTP_X_REQUEST_ID="trace-404")
    [entry] = lines(stream)
    assert entry["request_id"] == "trace-404" and entry["level"] == "WARNING"


def test_log_format_setting_is_checked(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from orchestrator.env import env_choice

    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ImproperlyConfigured, match="LOG_FORMAT must be one of plain, json"):
        env_choice("LOG_FORMAT", "plain", ["plain", "json"])
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    assert env_choice("LOG_FORMAT", "plain", ["plain", "json"]) == "json"
