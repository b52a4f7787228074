"""/metrics scraped by a real Prometheus after a real session: daphne and a Celery worker (with its
OpenCode server and the scripted LLM) run as processes sharing a multi-process metrics folder, the
session is created through the API, and Prometheus (Debian's package) scrapes daphne with the bearer
token; the series are read back through Prometheus's HTTP API. `promtool check metrics` lints the
exposition.
"""

import json
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import pytest
from django.conf import settings

from orchestrator.testing import (
    free_port,
    make_git_repository,
    require_binary,
    running_worker,
    stop_process,
    subprocess_env,
    wait_for_idle_worker,
    wait_until,
)
from sessions.models import CodingSession

pytestmark = [pytest.mark.opencode, pytest.mark.worker]




def http_get(url, *, token=None, timeout=10):
    request = Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urlopen(request, timeout=timeout) as response:
        return response.status, response.read().decode()


def answers(url):
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False


@pytest.fixture
def roster(transactional_db):
    """The default agent roster (transactional tests flush the rows its data migration made)."""
    from agents.models import Agent
    from agents.roster import DEFAULT_ROSTER
    from agents.services import agent_register

    for entry in DEFAULT_ROSTER:
        if not Agent.objects.filter(name=entry["name"]).exists():
            agent_register(**entry)


@pytest.fixture(scope="module")
def scripted_llm():
    from sessions.opencode.scripted_llm import ScriptedLLM

    llm = ScriptedLLM()
    llm.start()
    yield llm
    llm.stop()


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, scripted_llm, tmp_path_factory):
    """daphne + a worker sharing a fresh multi-process folder; metrics readable with a token only.
    The worker logs JSON lines (LOG_FORMAT=json)."""
    folder = tmp_path_factory.mktemp("metrics-stack")
    token = secrets.token_hex(16)
    env = {
        "PROMETHEUS_MULTIPROC_DIR": folder / "multiproc",
        "METRICS_TOKEN": token,
        "METRICS_ALLOWED_NETWORKS": "",
        "OPENCODE_SCRIPTED_LLM_URL": scripted_llm.base_url,
        "LOG_FORMAT": "json",
        "WORKER_METRICS_PORT": free_port(),
    }
    (folder / "multiproc").mkdir()
    port = free_port()
    web_log = open(folder / "daphne.log", "wb")  # noqa: SIM115 - daphne writes to it until the fixture ends
    web = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "orchestrator.asgi:application"],
        cwd=settings.BASE_DIR, env=subprocess_env(**env), stdout=web_log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with running_worker(concurrency=4, env=env) as worker:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: answers(f"{base}/live") or web.poll() is not None, timeout=60,
                       message="daphne to answer /live")
            assert web.poll() is None, (folder / "daphne.log").read_text(errors="replace")[-3000:]
            yield {"base": base, "port": port, "token": token, "worker": worker,
                   "worker_metrics": f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"}
    finally:
        stop_process(web)
        web_log.close()


@pytest.fixture(autouse=True)
def idle_worker_before_flush(request):
    """The test database is flushed after each test: wait until the worker's jobs have ended first
    (a job writing during PostgreSQL's TRUNCATE deadlocks it). Set up before the test's own
    fixtures, so the flush (their teardown) comes after this wait."""
    stack = None
    if "stack" in request.fixturenames:
        request.getfixturevalue("transactional_db")
        stack = request.getfixturevalue("stack")
    yield
    if stack is not None:
        wait_for_idle_worker(stack["worker"])


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus on a loopback port with a generated configuration; stop it by PID."""
    binary = require_binary("prometheus", "apt-get install prometheus")
    processes = []

    def start(*, target_port, token):
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "orchestrator",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials": token},
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }],
        }))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - Prometheus writes to it until stopped
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        processes.append((process, log))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/-/ready") or process.poll() is not None, timeout=60,
                   message="Prometheus to be ready")
        assert process.poll() is None, (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]
        return url

    yield start
    for process, log in processes:
        stop_process(process)
        log.close()


def query(prometheus_url, promql):
    """The instant vector of a PromQL query: [(labels, value)]."""
    _, body = http_get(f"{prometheus_url}/api/v1/query?{urlencode({'query': promql})}")
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return [(item["metric"], float(item["value"][1])) for item in answer["data"]["result"]]


def create_session(stack, repository):
    from orchestrator.testing import api_token
    from orchestrator.tests.factories import UserFactory

    user = UserFactory(role="operators")
    key = api_token(user).key
    body = json.dumps({
        "title": "Write the metrics note", "repository": str(repository), "start": True,
        "initial_prompt": "@@write notes/metrics.txt scraped\\n\n@@final Wrote notes/metrics.txt.",
    }).encode()
    request = Request(f"{stack['base']}/api/v1/sessions/", data=body, method="POST", headers={
        "Authorization": f"Token {key}", "Content-Type": "application/json"})
    with urlopen(request, timeout=30) as response:
        assert response.status == 201
        created = json.loads(response.read())
    # A read by id, so a route with a path parameter is counted too.
    with urlopen(Request(f"{stack['base']}/api/v1/sessions/{created['id']}/",
                         headers={"Authorization": f"Token {key}"}), timeout=30) as response:
        assert response.status == 200
    return CodingSession.objects.get(pk=created["id"])


def assert_worker_logged_json_with_context(log_path, session):
    """The worker ran with LOG_FORMAT=json: its records are JSON lines, and those of the session's
    job carry the session reference and the job id, and those of its task's thread the task's id."""
    def lines():
        return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.startswith("{")]

    def job_finished():
        return [entry for entry in lines() if entry["logger"] == "celery.app.trace"
                and "sessions.execute_session" in entry["message"]]

    [finished] = wait_until(job_finished, timeout=30, message="the worker to log the job's end")
    assert finished["session"] == session.reference and finished["job_id"] in finished["message"]
    assert any(entry.get("session") == session.reference and entry["logger"] == "httpx" for entry in lines())
    task_ids = {str(pk) for pk in session.tasks.values_list("pk", flat=True)}
    assert any(entry.get("session") == session.reference and entry.get("task_id") in task_ids for entry in lines())


def test_a_real_prometheus_scrapes_the_series_of_a_session_that_ran(stack, roster, prometheus):
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"metrics-{uuid.uuid4().hex[:8]}")
    session = create_session(stack, repository)

    def ended():
        session.refresh_from_db()
        return session.status in {"completed", "failed", "partially_completed", "timeout", "stopped"}

    wait_until(ended, timeout=120, interval=0.2, message=f"{session.reference} to finish")
    assert session.status == "completed", session.error
    assert_worker_logged_json_with_context(stack["worker"].log_path, session)

    url = prometheus(target_port=stack["port"], token=stack["token"])

    def scraped():
        # The worker matches stored steps with OpenCode's completion times every few seconds.
        lag = query(url, "orchestrator_event_lag_seconds_count")
        return query(url, 'orchestrator_celery_jobs_total{name="sessions.execute_session"}') and lag and lag[0][1] >= 2

    wait_until(scraped, timeout=60, interval=0.5, message="Prometheus to scrape the jobs and the event lag")

    def one(promql):
        result = query(url, promql)
        assert len(result) == 1, f"{promql}: {result}"
        return result[0][1]

    assert one('up{job="orchestrator"}') == 1  # scraped with the bearer token: no address is allowed
    assert one('orchestrator_sessions{status="completed"}') == 1
    assert one('orchestrator_sessions{status="running"}') == 0
    assert one('orchestrator_session_transitions_total{from_status="queued",to_status="running"}') == 1
    assert one('orchestrator_session_transitions_total{from_status="running",to_status="completed"}') == 1
    assert one('orchestrator_session_queue_depth{priority="medium"}') == 0
    assert query(url, "orchestrator_sessions_running") == []  # nothing runs any more
    assert one("orchestrator_approvals_pending") == 0
    # Two assistant steps of the scripted model, 100 input + 20 output tokens each.
    assert one("sum(orchestrator_tokens_total)") == 240
    assert one("count(orchestrator_cost_total)") >= 1
    assert one('orchestrator_celery_jobs_total{name="sessions.execute_session",outcome="success"}') == 1
    assert one('orchestrator_celery_job_duration_seconds_count{name="sessions.execute_session"}') == 1
    # Both steps' events were stored after OpenCode completed them, within a few seconds.
    assert one("orchestrator_event_lag_seconds_count") == 2
    assert 0 < one("orchestrator_event_lag_seconds_sum") < 10
    assert one('orchestrator_event_lag_seconds_bucket{le="+Inf"}') == 2
    assert one("orchestrator_opencode_servers_up") == 1  # the worker's server still runs
    assert one("orchestrator_opencode_server_restarts_total") == 0
    assert one("orchestrator_opencode_directories_open") == 0  # the run disposed of its worktree
    assert one('sum(orchestrator_http_request_duration_seconds_count{route="/api/v1/sessions/",method="POST",'
               'status="201"})') == 1
    assert one('sum(orchestrator_http_request_duration_seconds_count{route="/api/v1/sessions/<pk>/",'
               'method="GET",status="200"})') == 1


def test_promtool_accepts_the_exposition_of_web_and_worker(stack):
    promtool = require_binary("promtool", "apt-get install prometheus")
    status, text = http_get(f"{stack['base']}/metrics", token=stack["token"])
    assert status == 200 and "orchestrator_sessions{" in text
    # WORKER_METRICS_PORT: the worker serves its host's process metrics itself (no database series).
    worker_status, worker_text = http_get(stack["worker_metrics"])
    assert worker_status == 200 and "orchestrator_opencode_servers_up" in worker_text
    assert "orchestrator_sessions{" not in worker_text
    for exposition in (text, worker_text):
        checked = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True,
                                 timeout=60, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
