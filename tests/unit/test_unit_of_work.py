"""A unit of work writes one jobs row per job: the job's last state, whatever steps the decision took."""

from __future__ import annotations

import dataclasses

from coordinator.domain import states
from coordinator.domain.model import Constraints, Job, JobState, PayloadKind
from coordinator.store.base import UnitOfWork, job_row, job_update_row, refreshed_job_row


def make_job(job_id: str = "j1") -> Job:
    return Job(
        job_id=job_id, client_id="c", state=JobState.QUEUED, payload=b"p", payload_kind=PayloadKind.BYTES,
        input_sha256=b"", constraints=Constraints(gpu="a100", labels=(("k", "v"),)), priority=3, ttl_us=10,
        max_attempts=3, execution_timeout_us=7, idempotency_key="key", request_fingerprint=b"f", created_us=1,
        updated_us=1, metadata=(("m", "1"),), queued_us=1,
    )  # fmt: skip


def test_refreshed_row_equals_a_fresh_row_after_every_kind_of_change() -> None:
    job = make_job()
    row = job_row(job)
    changed = dataclasses.replace(job, state=JobState.FAILED, updated_us=9, attempt=2, miner_id="m1", started_us=5,
                                  finished_us=9, terminal_reason="R", terminal_message="msg", reassignments=1,
                                  event_seq=4, not_before_us=8, queued_us=6)  # fmt: skip
    assert refreshed_job_row(row, changed) == job_row(changed)


def test_insert_then_updates_is_one_insert_of_the_last_state() -> None:
    job = make_job()
    unit = UnitOfWork()
    unit.add_new_job(job)
    unit.add_event(states.submitted_event(job))
    for to, reason in ((JobState.ASSIGNED, "ASSIGNED"), (JobState.RUNNING, "ACCEPTED")):
        event = states.transition(
            job, to, reason, 5, **({"miner_id": "m1"} if to is JobState.ASSIGNED else {})
        )
        unit.add_update(job, event.from_state)
        unit.add_event(event)
    assert unit.new_jobs == [job_row(job)] and unit.job_updates == []
    assert [e[3] for e in unit.events] == [JobState.QUEUED, JobState.ASSIGNED, JobState.RUNNING]


def test_updates_of_one_job_are_one_update_and_other_jobs_keep_theirs() -> None:
    a, b = make_job("a"), make_job("b")
    unit = UnitOfWork()
    unit.add_update(a, JobState.QUEUED)
    unit.add_update(b, JobState.QUEUED)
    a.state, a.updated_us = JobState.RUNNING, 3
    unit.add_update(a, JobState.QUEUED)
    assert unit.job_updates == [job_update_row(a), job_update_row(b)]
