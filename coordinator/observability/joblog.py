"""One log line per job state transition, with the ids an operator searches by.

Thousands of transitions a second each made a LogRecord, ran the filters and wrote and flushed one line:
about 35 us a line, a tenth of the coordinator's time per job. Lines are now gathered during one turn of
the event loop and written together at its end, in one write, through the handler `configure_logging`
installed; under any other logging set-up (a test's capture, an embedding application's handlers) each
line is still an ordinary log record.
"""

from __future__ import annotations

import asyncio
import logging

from ..domain.model import Event, Job, JobState
from ..logs import line_handler, request_id

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

_buffer: list[tuple[str, dict[str, object]]] = []


def transition(job: Job, event: Event, trace_id: str | None = None) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    from_state = event.from_state
    extra: dict[str, object] = {
        "event": "job.transition",
        "job_id": job.job_id,
        "client_id": job.client_id,
        "miner_id": event.miner_id or None,
        "from_state": from_state.name if from_state is not None else None,
        "to_state": event.to_state.name,
        "attempt": event.attempt,
        "reason": event.reason,
    }
    if from_state is None:
        extra["priority"] = job.priority
    if event.message:
        extra["detail"] = event.message[:MAX_DETAIL]
    if trace_id:
        extra["trace_id"] = trace_id
    extra["request_id"] = request_id.get()  # the call (or miner stream) that caused it, as other lines have
    message = "job submitted" if from_state is None else MESSAGES[event.to_state]
    if not _buffer:
        try:
            asyncio.get_running_loop().call_soon(flush)
        except RuntimeError:  # no loop (a synchronous caller): nothing will come back for the line
            _buffer.append((message, extra))
            flush()
            return
    _buffer.append((message, extra))


def flush() -> None:
    """Write the gathered lines (also called at shutdown, so none is lost)."""
    if not _buffer:
        return
    lines = _buffer[:]
    _buffer.clear()
    handler = line_handler()
    if handler is not None and not log.handlers and not log.filters and log.propagate:
        handler.write_lines("INFO", log.name, lines)
        return
    for message, extra in lines:
        # makeRecord + handle: log.info without its caller lookup (a stack walk per line; nothing prints it)
        log.handle(
            log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None, "transition", extra)
        )
