"""The one mapping from Celery states to job statuses."""

import pytest
from celery import states

from workers.status import PROGRESS, JobStatus, from_celery_state

EXPECTED = {
    states.PENDING: JobStatus.STARTED,
    states.RECEIVED: JobStatus.STARTED,
    states.STARTED: JobStatus.PROCESSING,
    states.RETRY: JobStatus.PROCESSING,
    PROGRESS: JobStatus.PROCESSING,
    states.SUCCESS: JobStatus.COMPLETED,
    states.FAILURE: JobStatus.FAILED,
    states.REVOKED: JobStatus.FAILED,
    states.REJECTED: JobStatus.FAILED,
    states.IGNORED: JobStatus.FAILED,
}


def test_every_celery_state_is_mapped():
    assert set(states.ALL_STATES) <= set(EXPECTED)


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_state_maps_to_expected_status(state):
    assert from_celery_state(state) is EXPECTED[state]


def test_an_unknown_custom_state_counts_as_processing():
    assert from_celery_state("SOMETHING_NEW") is JobStatus.PROCESSING


def test_statuses_never_go_backwards_along_celerys_lifecycle():
    lifecycle = [states.PENDING, states.RECEIVED, states.STARTED, PROGRESS, states.RETRY, states.STARTED, PROGRESS]
    ranks = [from_celery_state(s).rank for s in lifecycle + [states.SUCCESS]]
    assert ranks == sorted(ranks)


def test_terminal_statuses():
    assert {s for s in JobStatus if s.is_terminal} == {JobStatus.COMPLETED, JobStatus.FAILED}
    assert JobStatus("completed") == "completed"  # a str enum: serialises as its value
