import json
import subprocess
import sys

from django.conf import settings

from orchestrator.testing import free_port, subprocess_env


def test_live_answers_without_touching_anything(client):
    response = client.get("/live")
    assert response.status_code == 200
    assert response.json() == {"status": "live"}


def test_ready_is_200_when_database_broker_and_channel_layer_answer(db, client):
    response = client.get("/ready")
    body = response.json()
    assert response.status_code == 200, body
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True, "broker": True, "channel_layer": True,
    }


def test_ready_is_503_naming_redis_when_redis_is_unreachable(db):
    closed_port = free_port()  # bound then released: nothing listens there
    script = (
        "import django, json; django.setup();"
        "from django.test import Client;"
        "r = Client().get('/ready');"
        "print(json.dumps({'status': r.status_code, 'body': r.json()}))"
    )
    environment = subprocess_env(REDIS_URL=f"redis://127.0.0.1:{closed_port}/0")
    environment.pop("CELERY_BROKER_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=settings.BASE_DIR, env=environment,
        capture_output=True, text=True, timeout=60,
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["status"] == 503
    body = answer["body"]
    assert set(body["failed"]) == {"broker", "channel_layer"}
    assert body["checks"]["broker"]["backend"] == "redis"
    assert body["checks"]["channel_layer"]["backend"] == "redis"
    assert body["message"].startswith("not ready: broker [redis]")
    assert "channel_layer [redis]" in body["message"]
    assert body["checks"]["database"]["ok"] is True


def test_api_schema_and_docs_are_served_by_the_project(client, operator_user):
    client.force_login(operator_user)
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/sessions" in schema.content
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html
