"""The one mapping from Celery states to job statuses, by its properties rather than a copy of its table."""

import pytest
from celery import states
from hypothesis import given
from hypothesis import strategies as st

from workers.status import PROGRESS, TERMINAL, JobStatus, from_celery_state, job_status

#: Celery's states a task may be in before it ends, and those it ends in (``states.READY_STATES``).
WAITING = [states.PENDING, states.RECEIVED]
RUNNING = [states.STARTED, PROGRESS, states.RETRY]
READY = sorted(states.READY_STATES)
#: Every state a job's task may report: Celery's, ours, and the two a task's Reject or Ignore leaves.
KNOWN = sorted(states.ALL_STATES | {PROGRESS, states.REJECTED, states.IGNORED})
#: Any other name: a custom state of some other task, say.
unknown_states = st.text(min_size=1).filter(lambda name: name not in KNOWN)


@st.composite
def lifecycles(draw):
    """The states a task goes through, as Celery reports them: waiting, then running (``RETRY`` sends it back
    to ``STARTED``, a ``PROGRESS`` report may come any time it runs), then, or not yet, one ready state."""
    lifecycle = draw(st.lists(st.sampled_from(WAITING), min_size=1, max_size=3).map(sorted))  # PENDING first
    lifecycle += draw(st.lists(st.sampled_from(RUNNING), max_size=10))
    if draw(st.booleans()):
        lifecycle.append(draw(st.sampled_from(READY)))
    return lifecycle


@pytest.mark.parametrize("state", KNOWN)
def test_every_celery_state_maps_to_a_status(state):
    assert isinstance(from_celery_state(state), JobStatus)


@given(lifecycles())
def test_a_status_never_goes_backwards_along_celerys_lifecycle(lifecycle):
    ranks = [from_celery_state(state).rank for state in lifecycle]
    assert ranks == sorted(ranks)


@given(lifecycles())
def test_a_job_has_ended_exactly_when_celery_says_its_task_is_ready(lifecycle):
    for state in lifecycle:
        assert from_celery_state(state).is_terminal is (state in states.READY_STATES)


@pytest.mark.parametrize("state", READY)
def test_a_ready_state_is_an_end_at_the_top_rank(state):
    status = from_celery_state(state)
    assert status.is_terminal and status.rank == max(s.rank for s in JobStatus)


def test_waiting_states_are_started_and_running_ones_processing():
    assert {from_celery_state(state) for state in WAITING} == {JobStatus.STARTED}
    assert {from_celery_state(state) for state in RUNNING} == {JobStatus.PROCESSING}


@given(unknown_states)
def test_an_unknown_state_counts_as_processing(state):
    assert from_celery_state(state) is JobStatus.PROCESSING


@given(st.sampled_from(sorted(TERMINAL)), st.one_of(st.sampled_from(KNOWN), unknown_states, st.none()))
def test_a_recorded_outcome_wins_over_any_celery_state(outcome, state):
    # A job cancelled while running, or finished by a first delivery and then
    # redelivered, keeps the outcome written first whatever Celery says later.
    assert job_status({"outcome": outcome.value}, state) is outcome


@given(st.one_of(st.sampled_from(KNOWN), unknown_states))
def test_without_an_outcome_celerys_state_decides(state):
    assert job_status({}, state) is from_celery_state(state)


def test_terminal_statuses():
    assert {s for s in JobStatus if s.is_terminal} == {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    assert JobStatus("completed") == "completed"  # a str enum: serialises as its value
