"""Promise 8: with API_TOKENS set, a token is needed, and a job is visible only with its creator's token."""

import json
import os
import subprocess

import pytest
import requests

from tests.faults.conftest import harvest_command, sleep_step, submit, wait_for

ALICE, BOB = "alice-7f3c9d2e", "bob-0a1b2c3d"


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("serial", API_TOKENS=f"{ALICE},{BOB}")  # only the gateway checks tokens: one of its own


def auth(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("headers", [{}, auth("nope"), {"Authorization": ALICE}], ids=["none", "unknown", "no-scheme"])
@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/operations"),
        ("POST", "/jobs"),
        ("GET", "/datasets/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b"),
        ("GET", "/jobs/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b"),
        ("DELETE", "/jobs/6f0c1a8e-2d5b-4b3e-9a51-0c1d2e3f4a5b"),
    ],
)
def test_every_endpoint_but_health_needs_a_valid_token(stack, method, path, headers):
    response = requests.request(
        method, f"{stack.url}{path}", json={"dataset": [{"a": 1}], "operations": []}, headers=headers, timeout=10
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert ALICE not in response.text and "nope" not in response.text


def test_health_answers_without_a_token(stack):
    assert requests.get(f"{stack.url}/health", timeout=10).json()["status"] == "ok"


def test_the_api_docs_answer_without_a_token(stack):
    # They hold no data, and the docs page must read the document before its Authorize button takes a token.
    assert requests.get(f"{stack.url}/openapi.json", timeout=10).json()["paths"]
    page = requests.get(f"{stack.url}/docs", timeout=10)
    assert page.status_code == 200 and "/openapi.json" in page.text


def test_a_job_belongs_to_the_token_that_created_it(stack):
    job_id = submit(stack.url, ["drop_nulls"], headers=auth(ALICE)).json()["job_id"]
    assert wait_for(stack.url, job_id, headers=auth(ALICE))["status"] == "completed"
    for method in ("GET", "DELETE"):
        response = requests.request(method, f"{stack.url}/jobs/{job_id}", headers=auth(BOB), timeout=10)
        assert response.status_code == 404  # not even whether it exists
        assert response.json()["error"]["code"] == "job_not_found"
    queued = submit(stack.url, [sleep_step(1)], headers=auth(ALICE)).json()["job_id"]
    assert requests.delete(f"{stack.url}/jobs/{queued}", headers=auth(BOB), timeout=10).status_code == 404
    assert requests.delete(f"{stack.url}/jobs/{queued}", headers=auth(ALICE), timeout=10).status_code == 200


def test_the_harvester_sends_its_token_from_the_environment(stack, tmp_path):
    source, output = tmp_path / "in.csv", tmp_path / "out.jsonl"
    source.write_text("id,name\n1, Ada \n2,\n")
    args = harvest_command(stack.url, source, output, "--op", "drop_nulls")
    refused = subprocess.run(
        args, capture_output=True, text=True, timeout=90, env={**os.environ, "GATEWAY_TOKEN": "wrong-token"}
    )
    assert refused.returncode == 2
    assert "wrong-token" not in refused.stdout + refused.stderr
    assert not output.exists()

    done = subprocess.run(args, capture_output=True, text=True, timeout=90, env={**os.environ, "GATEWAY_TOKEN": ALICE})
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in output.read_text().splitlines()] == [{"id": 1, "name": " Ada "}]
    assert ALICE not in done.stdout + done.stderr + output.with_name("out.jsonl.manifest.json").read_text()
