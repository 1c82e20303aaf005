"""Promise 12: operations from other modules (OPERATION_MODULES), registered like the built-ins."""

import requests

import localstack
from tests.faults.conftest import sleep_step, submit, wait_for

TEST_ONLY = {"sleep", "crash", "hang"}


def catalogue(url):
    return {op["name"]: op for op in requests.get(f"{url}/operations", timeout=10).json()["operations"]}


def test_listed_modules_add_operations_that_validate_and_run_like_built_ins(shared_stack):
    stack = shared_stack("serial")
    ops = catalogue(stack.url)
    assert TEST_ONLY <= set(ops) and "drop_nulls" in ops
    assert ops["sleep"]["parameters"]["required"] == ["seconds"]
    # Validated by the same schema machinery...
    bad = submit(stack.url, [{"name": "sleep", "params": {"seconds": -1}}])
    assert bad.status_code == 400
    assert bad.json()["error"]["details"] == {"step": 0, "operation": "sleep", "parameter": "seconds"}
    # ...and run by the worker like any other step.
    body = wait_for(stack.url, submit(stack.url, [sleep_step(0), "drop_nulls"]).json()["job_id"])
    assert body["status"] == "completed"
    assert [step["name"] for step in body["data"]["operations"]] == ["sleep", "drop_nulls"]


def test_the_default_catalogue_has_no_test_operations(shared_stack, tmp_path):
    port = localstack.free_port()
    gateway = localstack.start_gateway(shared_stack("serial").redis_url, port, tmp_path / "gateway.log", {"OPERATION_MODULES": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        localstack.wait_until(lambda: localstack.live_workers(url) >= 0, 30, "the gateway answering")
        ops = catalogue(url)
        assert "drop_nulls" in ops and not TEST_ONLY & set(ops)
        refused = submit(url, ["sleep"])
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "unknown_operation"
    finally:
        localstack.stop_quickly(gateway, [])
