"""The job state machine: every transition of DESIGN section 3 and nothing else.

QUEUED -> ASSIGNED -> RUNNING -> COMPLETED; ASSIGNED/RUNNING -> QUEUED (lease lost, retryable failure,
reject); ASSIGNED/RUNNING -> FAILED; QUEUED -> EXPIRED; any non-terminal -> CANCELED.
"""

from __future__ import annotations

from .errors import CoordinatorError, Kind
from .model import Event, Job, JobState

Q, A, R = JobState.QUEUED, JobState.ASSIGNED, JobState.RUNNING
ALLOWED: dict[JobState, frozenset[JobState]] = {
    Q: frozenset({A, JobState.EXPIRED, JobState.CANCELED}),
    A: frozenset({R, Q, JobState.FAILED, JobState.CANCELED, JobState.COMPLETED}),
    R: frozenset({JobState.COMPLETED, Q, JobState.FAILED, JobState.CANCELED}),
}
# ASSIGNED -> COMPLETED is a result that implies the accept (a miner may skip the Accept message);
# it is recorded as two events, ASSIGNED -> RUNNING -> COMPLETED, by the scheduler.


class IllegalTransition(CoordinatorError):
    pass


def check(job: Job, to_state: JobState) -> None:
    """Raise IllegalTransition unless job may move to to_state."""
    if to_state not in ALLOWED.get(job.state, frozenset()):
        raise IllegalTransition(
            Kind.FAILED_PRECONDITION,
            "JOB_TERMINAL" if job.state.terminal else "ILLEGAL_TRANSITION",
            f"job {job.job_id} cannot go from {job.state.name} to {to_state.name}",
            metadata={"job_id": job.job_id, "state": job.state.name},
        )


def transition(
    job: Job, to_state: JobState, reason: str, now_us: int, *, message: str = "", miner_id: str | None = None
) -> Event:
    """Apply one legal transition to job (in memory) and return the event to append with it."""
    check(job, to_state)
    from_state = job.state
    job.state = to_state
    job.updated_us = now_us
    if miner_id is not None:
        job.miner_id = miner_id
    if to_state is JobState.ASSIGNED:
        job.attempt += 1
    elif to_state is JobState.RUNNING:
        job.started_us = now_us
    elif to_state is JobState.QUEUED:
        job.queued_us = now_us
    if to_state.terminal:
        job.finished_us = now_us
        if to_state is not JobState.COMPLETED:
            job.terminal_reason = reason
            job.terminal_message = message
    job.event_seq += 1
    return Event(
        job.job_id, job.event_seq, from_state, to_state, job.attempt, job.miner_id, reason, message, now_us
    )


def after_failure(
    attempt: int, retryable: bool, code: str, message: str, last: bool
) -> tuple[JobState, str, str]:
    """What a failure of attempt (the last one the job may have, if last) makes of its job: the state it goes
    to, and the reason and message of its event. Requeued with the failure's own code and message if it is
    retryable and attempts are left; FAILED otherwise."""
    if not retryable:
        return JobState.FAILED, code, message
    if last:
        return (
            JobState.FAILED,
            "ATTEMPTS_EXHAUSTED",
            f"{attempt} attempts spent; last: {code} {message}".strip(),
        )
    return Q, code, message


def records_failure(
    events: list[Event], miner_id: str, attempt: int, retryable: bool, code: str, message: str
) -> bool:
    """Whether events (a job's log) hold a miner's failure report as it was recorded: its attempt ended on
    that miner with what after_failure makes of this very report (a report sent again, its ack lost)."""
    outcomes = {after_failure(attempt, retryable, code, message, last) for last in (False, True)}
    return any(
        e.from_state in (A, R)
        and (e.attempt, e.miner_id) == (attempt, miner_id)
        and (e.to_state, e.reason, e.message) in outcomes
        for e in events
    )


def submitted_event(job: Job) -> Event:
    job.event_seq = 1
    return Event(job.job_id, 1, None, JobState.QUEUED, 0, "", "SUBMITTED", "", job.created_us)
