"""Deployment files: docker-compose.yml, the Kubernetes manifests, the Grafana dashboard, the workflow.

No container engine or cluster runs here, so these check structure: the Compose file parses and
has every service with its health check and no secret written in it; the production overlay renders
with `kubectl kustomize` and passes the Kubernetes schemas (kubernetes-validate, strict); every
dashboard query uses only series the application exports.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from orchestrator.testing import require_binary

BASE = Path(settings.BASE_DIR)



# --- docker-compose.yml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((BASE / "docker-compose.yml").read_text())


def test_compose_has_every_part_of_a_production_run(compose):
    assert set(compose["services"]) == {"postgres", "redis", "migrate", "web", "worker", "beat"}
    for name in ("postgres", "redis", "web", "worker", "beat"):
        assert compose["services"][name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in ("web", "worker", "beat"):
        service = compose["services"][name]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert service["restart"] == "unless-stopped"
    assert compose["services"]["migrate"]["restart"] == "no"
    assert "migrate" in " ".join(compose["services"]["migrate"]["command"])
    assert {"postgres-data", "redis-data", "orchestrator-data"} <= set(compose["volumes"])
    worker = " ".join(compose["services"]["worker"]["command"])
    assert "--pool threads" in worker and "sessions-critical" in worker


def test_compose_takes_every_secret_from_the_environment(compose):
    environment = compose["services"]["web"]["environment"]
    required = re.compile(r"\$\{(\w+):\?")
    for name in ("SECRET_KEY", "METRICS_TOKEN"):
        assert required.fullmatch(environment[name] + "}") or required.match(environment[name]), name
    assert "${POSTGRES_PASSWORD:?" in environment["DATABASE_URL"]
    assert "${REDIS_PASSWORD:?" in environment["REDIS_URL"]
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert environment["DEBUG"] == "false"
    # Each container counts metrics in its own tmpfs: process ids repeat across containers.
    assert environment["PROMETHEUS_MULTIPROC_DIR"] == "/run/prometheus"
    assert any(entry.startswith("/run/prometheus") for entry in compose["services"]["worker"]["tmpfs"])


# --- Kubernetes -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered():
    kubectl = require_binary("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(BASE / "deploy/k8s/overlays/production")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def by_kind(documents, kind):
    return {document["metadata"]["name"]: document for document in documents if document["kind"] == kind}


def test_the_production_overlay_renders_every_part(rendered):
    assert set(by_kind(rendered, "Deployment")) == {"orchestrator-web", "orchestrator-worker", "orchestrator-beat"}
    assert set(by_kind(rendered, "Job")) == {"orchestrator-migrate"}
    assert set(by_kind(rendered, "ConfigMap")) == {"orchestrator-config"}
    assert set(by_kind(rendered, "Secret")) == {"orchestrator-secrets"}
    assert set(by_kind(rendered, "PodDisruptionBudget")) == {"orchestrator-web", "orchestrator-worker"}
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")["orchestrator-worker"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "orchestrator-worker"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (4, 20)  # the overlay's patch
    assert all(document["metadata"].get("namespace") == "orchestrator"
               for document in rendered if document["kind"] != "Namespace")
    config = by_kind(rendered, "ConfigMap")["orchestrator-config"]["data"]
    assert config["WORKER_CONCURRENCY"] == "24" and config["LOG_FORMAT"] == "json"


def containers_of(documents):
    for document in documents:
        if document["kind"] in ("Deployment", "Job"):
            for container in document["spec"]["template"]["spec"]["containers"]:
                yield document["metadata"]["name"], container


def test_web_probes_live_and_ready_and_every_container_has_resources(rendered):
    web = by_kind(rendered, "Deployment")["orchestrator-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/live"
    assert web["readinessProbe"]["httpGet"]["path"] == "/ready"
    for name, container in containers_of(rendered):
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
        assert resources["limits"]["memory"], name
        assert container["image"].startswith("registry.example.com/industrial-orchestrator:"), name
        assert {"configMapRef": {"name": "orchestrator-config"}} in container["envFrom"], name
        assert {"secretRef": {"name": "orchestrator-secrets"}} in container["envFrom"], name


def test_worker_nodes_are_told_about_the_sysctls():
    text = (BASE / "deploy/k8s/base/worker-deployment.yaml").read_text()
    assert "fs.inotify.max_user_instances" in text and "vm.max_map_count" in text


def test_the_rendered_manifests_pass_the_kubernetes_schemas(rendered, tmp_path):
    import kubernetes_validate

    for document in rendered:
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def test_the_schema_check_catches_a_wrong_field(rendered):
    import kubernetes_validate

    broken = json.loads(json.dumps(by_kind(rendered, "Deployment")["orchestrator-web"]))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGets"] = {"path": "/live"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


# --- Grafana --------------------------------------------------------------------------------------


def exported_series(client):
    """Every sample name /metrics can answer, with the process metrics' families all declared."""
    from prometheus_client.parser import text_string_to_metric_families

    from orchestrator import metrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    families = list(text_string_to_metric_families(client.get("/metrics").content.decode()))
    for metric in (metrics.HTTP_LATENCY, metrics.JOBS, metrics.JOB_DURATION, metrics.OPENCODE_SERVERS_UP,
                   metrics.OPENCODE_DIRECTORIES_OPEN, metrics.OPENCODE_RESTARTS, metrics.EVENT_LAG):
        families += metric.describe()
    names = set()
    for family in families:
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate", "histogram_quantile",
                "le", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "topk",
                "bottomk", "delta", "deriv", "abs", "clamp_min", "clamp_max", "time", "vector", "scalar"}


def test_every_dashboard_query_uses_exported_series(client, db):
    dashboard = json.loads((BASE / "deploy/grafana/orchestrator.json").read_text())
    exported = exported_series(client)
    assert "orchestrator_sessions" in exported and "orchestrator_celery_jobs_total" in exported
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 10
    for expr in queries:
        without_labels = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", "", expr)
        without_groupings = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", without_labels)
        names = {word for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_groupings)
                 if word not in PROMQL_WORDS}
        assert names, expr
        assert names <= exported, f"{expr}: {sorted(names - exported)} not exported"
    used = {name for expr in queries for name in re.findall(r"orchestrator_\w+", expr)}
    # Every series the issue asks for is on the dashboard.
    for series in ("orchestrator_sessions", "orchestrator_session_transitions_total",
                   "orchestrator_session_queue_depth", "orchestrator_sessions_running", "orchestrator_tokens_total",
                   "orchestrator_cost_total", "orchestrator_approvals_pending", "orchestrator_event_lag_seconds_bucket",
                   "orchestrator_http_request_duration_seconds_bucket", "orchestrator_celery_jobs_total",
                   "orchestrator_opencode_servers_up", "orchestrator_opencode_server_restarts_total",
                   "orchestrator_opencode_directories_open"):
        assert series in used, f"{series} is on no panel"


# --- GitHub Actions -------------------------------------------------------------------------------


def test_the_workflow_runs_the_suite_with_postgresql_and_redis_services():
    workflow = yaml.safe_load((BASE / ".github/workflows/ci.yml").read_text())
    services_job = workflow["jobs"]["services"]
    assert {"postgres", "redis"} <= set(services_job["services"])
    runs = " ".join(step.get("run", "") for step in services_job["steps"])
    assert "bin/test" in runs
    environment = next(step["env"] for step in services_job["steps"] if "bin/test" in step.get("run", ""))
    assert environment["ORCHESTRATOR_REQUIRE_SERVICES"] == "1"
    assert environment["DATABASE_URL"].startswith("postgresql://") and environment["REDIS_URL"].startswith("redis://")


def test_actionlint_accepts_the_workflow():
    actionlint = shutil.which("actionlint") or str(Path(os.sys.executable).parent / "actionlint")
    if not Path(actionlint).exists():
        require_binary("actionlint")
    result = subprocess.run([actionlint, str(BASE / ".github/workflows/ci.yml")], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """promtool parses each query as the expression of a recording rule."""
    promtool = require_binary("promtool")
    dashboard = json.loads((BASE / "deploy/grafana/orchestrator.json").read_text())
    rules = [{"record": f"dashboard:query_{index}", "expr": target["expr"]}
             for index, target in enumerate(target for panel in dashboard["panels"] for target in panel["targets"])]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
