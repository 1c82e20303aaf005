"""``MAX_ACTIVE_JOBS_PER_TOKEN`` against real workers: a token at its quota gets 429, and the harvester waits."""

import json
import os
import subprocess

import pytest
import requests

import localstack
from tests.faults.conftest import harvest_command, sleep_step, submit, wait_for

TOKEN = "quota-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("pair", API_TOKENS=f"{TOKEN},other-token", MAX_ACTIVE_JOBS_PER_TOKEN="1")


def test_a_token_at_its_quota_gets_429_and_the_harvester_submits_once_a_job_has_ended(stack, tmp_path):
    running = submit(stack.url, [sleep_step(2)], headers=AUTH).json()["job_id"]
    refused = submit(stack.url, ["drop_nulls"], headers=AUTH)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_jobs"
    assert int(refused.headers["Retry-After"]) > 0
    other = submit(stack.url, ["drop_nulls"], headers={"Authorization": "Bearer other-token"})
    assert other.status_code == 202  # a quota per token

    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text("id,name\n1,Ada\n")
    env = {**os.environ, "GATEWAY_TOKEN": TOKEN}
    harvest = subprocess.run(
        harvest_command(stack.url, source, output, "--op", "drop_nulls", "--json"),
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert harvest.returncode == 0, harvest.stderr
    # It met the quota, waited the Retry-After, and submitted again (urllib3's Retry, then its own loop).
    assert "answered 429, retrying in 5.0 s" in harvest.stderr, harvest.stderr
    assert wait_for(stack.url, running, headers=AUTH)["status"] == "completed"
    summary = json.loads(harvest.stdout)
    job = requests.get(f"{stack.url}/jobs/{summary['job_id']}", headers=AUTH, timeout=10).json()
    assert job["status"] == "completed" and job["finished_at"] > wait_for(stack.url, running, headers=AUTH)["finished_at"]
    localstack.wait_until(lambda: submit(stack.url, ["drop_nulls"], headers=AUTH).status_code == 202, 10,
                          "the quota free again")
