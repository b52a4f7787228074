"""Issue 24, finding 5, through the real ASGI server (daphne): a malformed multipart body and an
oversized JSON body reach Django and are answered with the JSON error body."""

import json
import subprocess
import sys

import httpx
import pytest

from orchestrator.testing import BASE_DIR, free_port, stop_process, subprocess_env, wait_until


@pytest.fixture
def daphne():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "orchestrator.asgi:application"],
        cwd=BASE_DIR, env=subprocess_env(DATA_UPLOAD_MAX_MEMORY_SIZE=100_000), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answering():
        try:
            return httpx.get(f"{url}/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answering, timeout=60, message="daphne to answer /live")
        yield url
    finally:
        stop_process(process)


def _error(response):
    body = response.json()
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]


@pytest.mark.django_db(transaction=True)
def test_malformed_multipart_and_oversized_bodies_get_json_errors(daphne, operator_user):
    from orchestrator.testing import api_token

    headers = {"Authorization": f"Token {api_token(operator_user).key}"}
    multipart = httpx.post(f"{daphne}/api/v1/sessions", content=b"--nope",
                           headers={**headers, "Content-Type": "multipart/form-data; boundary=X"}, timeout=30)
    assert multipart.status_code == 415 and _error(multipart)["code"] == "unsupported_media_type"
    big = httpx.post(f"{daphne}/api/v1/sessions", content=json.dumps({"initial_prompt": "p" * 200_000}),
                     headers={**headers, "Content-Type": "application/json"}, timeout=30)
    assert big.status_code == 413 and _error(big)["code"] == "payload_too_large"
