"""One log line per job state transition, with the ids an operator searches by."""

from __future__ import annotations

import logging

from ..domain.model import Event, Job, JobState

log = logging.getLogger("coordinator.jobs")

MESSAGES = {
    JobState.ASSIGNED: "job assigned",
    JobState.RUNNING: "job running",
    JobState.COMPLETED: "job completed",
    JobState.FAILED: "job failed",
    JobState.CANCELED: "job canceled",
    JobState.EXPIRED: "job expired",
    JobState.QUEUED: "job requeued",
}
MAX_DETAIL = 300


def transition(job: Job, event: Event, trace_id: str | None = None) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    extra: dict[str, object] = {
        "event": "job.transition",
        "job_id": job.job_id,
        "client_id": job.client_id,
        "miner_id": event.miner_id or None,
        "from_state": event.from_state.name if event.from_state is not None else None,
        "to_state": event.to_state.name,
        "attempt": event.attempt,
        "reason": event.reason,
    }
    if event.from_state is None:
        extra["priority"] = job.priority
    if event.message:
        extra["detail"] = event.message[:MAX_DETAIL]
    if trace_id:
        extra["trace_id"] = trace_id
    message = "job submitted" if event.from_state is None else MESSAGES[event.to_state]
    # makeRecord + handle: log.info without its caller lookup (a stack walk per line; nothing prints it)
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None, "transition", extra))
