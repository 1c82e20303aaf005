"""The one mapping from Celery states to job statuses."""

import pytest
from celery import states

from workers.status import PROGRESS, JobStatus, from_celery_state, job_status

EXPECTED = {
    states.PENDING: JobStatus.STARTED,
    states.RECEIVED: JobStatus.STARTED,
    states.STARTED: JobStatus.PROCESSING,
    states.RETRY: JobStatus.PROCESSING,
    PROGRESS: JobStatus.PROCESSING,
    states.SUCCESS: JobStatus.COMPLETED,
    states.FAILURE: JobStatus.FAILED,
    states.REVOKED: JobStatus.CANCELLED,
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
    assert {s for s in JobStatus if s.is_terminal} == {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    assert JobStatus("completed") == "completed"  # a str enum: serialises as its value


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled"])
@pytest.mark.parametrize("state", [states.PENDING, states.STARTED, PROGRESS, states.SUCCESS, states.FAILURE])
def test_a_recorded_outcome_wins_over_any_celery_state(outcome, state):
    # A job cancelled while running, or finished by a first delivery and then
    # redelivered, keeps the outcome written first whatever Celery says later.
    assert job_status({"outcome": outcome}, state) is JobStatus(outcome)


def test_without_an_outcome_celerys_state_decides():
    assert job_status({}, states.PENDING) is JobStatus.STARTED
    assert job_status({}, PROGRESS) is JobStatus.PROCESSING
