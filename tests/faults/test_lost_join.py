"""A fanned-out segment whose join message is lost still completes: the record knows its chunks are done.

With ``TEST_LOSE_JOINS`` the workers never send the join after a segment's last
chunk, as when a chord's counter in the result backend misses a part
(celery/celery#3363); the sweeper in the workers finds the overdue join in the
job store and sends it.
"""

import pytest
import requests

from tests.faults.conftest import wait_for

pytestmark = pytest.mark.integration


def test_a_job_whose_join_message_is_lost_is_completed_by_the_sweeper(start_stack):
    stack = start_stack(workers=1, concurrency=2, CHUNK_ROWS="100", TEST_LOSE_JOINS="1", SWEEP_SECONDS="0.5")
    body = "id\n" + "".join(f"{i}\n" for i in range(300))
    dataset = requests.post(f"{stack.url}/datasets", data=body, headers={"Content-Type": "text/csv"}, timeout=10)
    operations = [{"name": "filter_rows", "params": {"column": "id", "operator": "lt", "value": 250}}, "deduplicate"]
    job = requests.post(f"{stack.url}/jobs", json={"dataset_id": dataset.json()["dataset_id"], "operations": operations},
                        timeout=10).json()
    done = wait_for(stack.url, job["job_id"], timeout=60)
    assert done["status"] == "completed" and done["data"]["output_items"] == 250
    assert f"job {job['job_id']}: the join of segment 0 is overdue; sending it again" in stack.logs()
