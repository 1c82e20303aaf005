"""Floods are absorbed: 500 submissions from 20 concurrent clients, every one accepted once and completed once.

One worker process with concurrency 2 (this machine has 2 cores) and the
gateway under gunicorn, as in production. Every job carries its own data, so
each result can be checked to be that job's own output, not a neighbour's.
"""

import statistics
import threading
import time

import pytest
import redis
import requests

import localstack
from workers.jobstore import key_for

CLIENTS = 20
JOBS_PER_CLIENT = 25
TOTAL = CLIENTS * JOBS_PER_CLIENT


def job_body(n):
    """Job ``n``: a record that says ``n``, and two cheap steps whose output depends on it."""
    return {
        "dataset": [{"n": n, "name": f"  Job-{n}  "}],
        "operations": [
            {"name": "normalize_text", "params": {"columns": ["name"], "lowercase": True}},
            {"name": "add_column", "params": {"name": "tag", "value": f"t{n}"}},
        ],
    }


def expected_output(n):
    return [{"n": n, "name": f"job-{n}", "tag": f"t{n}"}]


def percentile(values, fraction):
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack("pair")


def flood(url):
    """Submit TOTAL jobs from CLIENTS threads, each with its own session; return [(n, status, job_id, seconds)]."""
    results, lock = [], threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(index):
        with requests.Session() as session:
            start.wait(timeout=30)
            for k in range(JOBS_PER_CLIENT):
                n = index * JOBS_PER_CLIENT + k
                began = time.perf_counter()
                try:
                    response = session.post(f"{url}/jobs", json=job_body(n), timeout=30)
                    outcome = (n, response.status_code, response.json().get("job_id"), time.perf_counter() - began)
                except (requests.RequestException, ValueError) as exc:
                    outcome = (n, repr(exc), None, time.perf_counter() - began)
                with lock:
                    results.append(outcome)

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a client thread did not finish"
    return results


def wait_for_all(url, ids, timeout=180):
    """Poll every job until it ends; return {job_id: body}."""
    done, pending = {}, set(ids)
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                body = session.get(f"{url}/jobs/{job_id}", timeout=30).json()
                if body.get("status") in ("completed", "failed", "cancelled"):
                    done[job_id] = body
                    pending.discard(job_id)
            if pending:
                time.sleep(0.2)
    assert not pending, f"{len(pending)} of {len(ids)} jobs had not ended after {timeout} s"
    return done


def job_records(client):
    """The ids of every job record in the job store (not their parts: ``key_for(id, "input")``...)."""
    prefix = key_for("")
    keys = client.scan_iter(match=key_for("*"), count=1000)
    return {key[len(prefix) :] for key in keys if ":" not in key[len(prefix) :]}


def test_500_submissions_from_20_clients_are_each_accepted_once_and_completed_once(stack):
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    before = job_records(client)  # the jobs of the modules sharing the stack before this one
    results = flood(stack.url)

    latencies_ms = [seconds * 1000 for *_, seconds in results]
    p50, p99 = percentile(latencies_ms, 0.50), percentile(latencies_ms, 0.99)
    print(
        f"\nsubmit latency p50={p50:.1f} ms p99={p99:.1f} ms "
        f"(max {max(latencies_ms):.1f} ms, mean {statistics.mean(latencies_ms):.1f} ms; "
        f"{TOTAL} POST /jobs from {CLIENTS} concurrent clients)"
    )

    assert len(results) == TOTAL
    refused = [(n, status) for n, status, _, _ in results if status != 202]
    assert not refused, f"{len(refused)} submissions not accepted: {refused[:10]}"
    ids = {job_id: n for n, _, job_id, _ in results}
    assert len(ids) == TOTAL, "job ids are not distinct"

    bodies = wait_for_all(stack.url, ids)
    wrong = {
        job_id: (body["status"], body.get("error"), (body.get("data") or {}).get("data"))
        for job_id, body in bodies.items()
        if body["status"] != "completed" or body["data"]["data"] != expected_output(ids[job_id])
    }
    assert not wrong, f"{len(wrong)} jobs did not complete with their own output, e.g. {list(wrong.items())[:5]}"
    rerun = {job_id: body["attempts"] for job_id, body in bodies.items() if body["attempts"] != 1}
    assert not rerun, f"jobs started more than once (or never): {rerun}"

    # The job store holds exactly one record per accepted job: nothing lost, nothing extra.
    assert job_records(client) == before | set(ids) and not before & set(ids)
    # Nothing is left in the broker to run again (the last jobs' messages are acknowledged just after their
    # records say completed; one left unacknowledged for good would stay so for an hour).
    localstack.wait_until(lambda: client.llen("datajobs") == 0 and client.hlen("unacked") == 0, 10,
                          "the queue and the unacknowledged messages emptying")
