"""The state machine allows exactly DESIGN section 3's transitions."""

from __future__ import annotations

import itertools

import pytest

from coordinator.domain import states
from coordinator.domain.model import Constraints, Job, JobState, PayloadKind

LEGAL = {
    (JobState.QUEUED, JobState.ASSIGNED),
    (JobState.QUEUED, JobState.EXPIRED),
    (JobState.QUEUED, JobState.CANCELED),
    (JobState.ASSIGNED, JobState.RUNNING),
    (JobState.ASSIGNED, JobState.QUEUED),
    (JobState.ASSIGNED, JobState.FAILED),
    (JobState.ASSIGNED, JobState.CANCELED),
    (JobState.ASSIGNED, JobState.COMPLETED),  # a result implying the accept
    (JobState.RUNNING, JobState.COMPLETED),
    (JobState.RUNNING, JobState.QUEUED),
    (JobState.RUNNING, JobState.FAILED),
    (JobState.RUNNING, JobState.CANCELED),
}


def make_job(state: JobState) -> Job:
    return Job(
        job_id="j1", client_id="c", state=state, payload=b"", payload_kind=PayloadKind.BYTES, input_sha256=b"",
        constraints=Constraints(), priority=0, ttl_us=1, max_attempts=3, execution_timeout_us=1,
        idempotency_key="", request_fingerprint=b"", created_us=0, updated_us=0,
    )  # fmt: skip


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(JobState, JobState)))
def test_every_pair(src: JobState, dst: JobState) -> None:
    job = make_job(src)
    if (src, dst) in LEGAL:
        event = states.transition(job, dst, "TEST", 5)
        assert job.state is dst and event.from_state is src and event.to_state is dst
        assert event.sequence == 1 and job.updated_us == 5
    else:
        with pytest.raises(states.IllegalTransition) as info:
            states.transition(job, dst, "TEST", 5)
        assert job.state is src, "a refused transition changes nothing"
        assert info.value.reason == ("JOB_TERMINAL" if src.terminal else "ILLEGAL_TRANSITION")


def test_assignment_counts_attempts_and_terminal_records_reason() -> None:
    job = make_job(JobState.QUEUED)
    states.transition(job, JobState.ASSIGNED, "ASSIGNED", 1, miner_id="m")
    assert (job.attempt, job.miner_id) == (1, "m")
    states.transition(job, JobState.QUEUED, "LEASE_EXPIRED", 2)
    states.transition(job, JobState.ASSIGNED, "ASSIGNED", 3, miner_id="m2")
    assert job.attempt == 2
    states.transition(job, JobState.FAILED, "ATTEMPTS_EXHAUSTED", 4, message="spent")
    assert (job.terminal_reason, job.terminal_message, job.finished_us, job.event_seq) == (
        "ATTEMPTS_EXHAUSTED",
        "spent",
        4,
        4,
    )
