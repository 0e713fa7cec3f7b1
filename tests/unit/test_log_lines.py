"""Lines by the thousand (job transitions, miner connects): gathered per event-loop turn and written at once,
or ordinary records under any other logging set-up."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from coordinator.domain import states
from coordinator.domain.model import Constraints, Job, JobState, PayloadKind
from coordinator.logs import configure_logging, flush_later, info_later, request_id
from coordinator.observability import joblog


def make_job(n: int) -> Job:
    return Job(job_id=f"job-{n}", client_id="client-a", state=JobState.QUEUED, payload=b"{}",
               payload_kind=PayloadKind.STRUCT, input_sha256=b"\0" * 32, constraints=Constraints(), priority=0,
               ttl_us=10**9, max_attempts=3, execution_timeout_us=10**8, idempotency_key="",
               request_fingerprint=b"", created_us=1, updated_us=1)  # fmt: skip


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_one_turns_lines_leave_in_one_write(restore_root: None, fmt: str) -> None:
    stream = CountingStream()
    configure_logging("INFO", fmt, stream)
    token = request_id.set("req-42")
    try:
        jobs = [make_job(n) for n in range(50)]
        for job in jobs:
            joblog.transition(job, states.submitted_event(job))
            joblog.transition(job, states.transition(job, JobState.ASSIGNED, "ASSIGNED", 2, miner_id="m 1"))
    finally:
        request_id.reset(token)
    assert stream.getvalue() == ""  # nothing yet: the lines wait for the end of the loop's turn
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert stream.writes == 1 and len(lines) == 100
    if fmt == "json":
        first, second = json.loads(lines[0]), json.loads(lines[1])
        assert first["msg"] == "job submitted" and first["job_id"] == "job-0" and "from_state" not in first
        assert first["request_id"] == "req-42" and first["logger"] == "coordinator.jobs"
        assert second["to_state"] == "ASSIGNED" and second["miner_id"] == "m 1"
    else:
        assert lines[1].startswith("ts=") and "level=INFO logger=coordinator.jobs job assigned " in lines[1]
        assert 'miner_id="m 1"' in lines[1] and lines[1].endswith("request_id=req-42")


async def test_other_handlers_get_records(restore_root: None) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    root.handlers[:] = [Collect()]
    root.setLevel("INFO")
    job = make_job(1)
    joblog.transition(job, states.submitted_event(job))
    flush_later()  # what shutdown does: nothing waits for the next turn
    assert [r.getMessage() for r in records] == ["job submitted"]
    assert records[0].job_id == "job-1" and records[0].to_state == "QUEUED"  # type: ignore[attr-defined]


def test_without_a_loop_a_line_is_written_at_once(restore_root: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream)
    job = make_job(2)
    joblog.transition(job, states.submitted_event(job))
    assert "job submitted" in stream.getvalue() and "job_id=job-2" in stream.getvalue()


async def test_lines_of_several_loggers_keep_their_order_in_one_write(restore_root: None) -> None:
    stream = CountingStream()
    configure_logging("INFO", "json", stream)
    sessions = logging.getLogger("coordinator.scheduler")
    job = make_job(3)
    info_later(sessions, "miner connected", {"event": "miner.connect", "miner_id": "m1"})
    joblog.transition(job, states.submitted_event(job))
    info_later(sessions, "miner disconnected", {"event": "miner.disconnect", "miner_id": "m1"})
    await asyncio.sleep(0)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert stream.writes == 1
    assert [(x["logger"], x["msg"]) for x in lines] == [
        ("coordinator.scheduler", "miner connected"), ("coordinator.jobs", "job submitted"),
        ("coordinator.scheduler", "miner disconnected"),
    ]  # fmt: skip


async def test_a_logger_with_a_handler_of_its_own_gets_records(restore_root: None) -> None:
    stream = CountingStream()
    configure_logging("INFO", "text", stream)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    sessions = logging.getLogger("coordinator.scheduler")
    own = Collect()
    sessions.addHandler(own)
    try:
        info_later(sessions, "miner connected", {"event": "miner.connect", "miner_id": "m2"})
        await asyncio.sleep(0)
    finally:
        sessions.removeHandler(own)
    assert [r.getMessage() for r in records] == ["miner connected"]
    assert "miner connected" in stream.getvalue() and "miner_id=m2" in stream.getvalue()  # root's handler too


async def test_a_record_logged_later_in_the_turn_comes_after_the_gathered_lines(restore_root: None) -> None:
    stream = CountingStream()
    configure_logging("INFO", "text", stream)
    job = make_job(4)
    joblog.transition(job, states.submitted_event(job))
    logging.getLogger("coordinator.rpc").error("unexpected error after the submit")
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert ["job submitted" in lines[0], "unexpected error" in lines[1]] == [True, True], lines


@pytest.mark.parametrize("change", ["formatter", "level", "filter"])
async def test_a_handler_configured_otherwise_gets_records(restore_root: None, change: str) -> None:
    stream = CountingStream()
    configure_logging("INFO", "text", stream)
    handler = logging.getLogger().handlers[0]
    if change == "formatter":
        handler.setFormatter(logging.Formatter("plain %(message)s"))
    elif change == "level":
        handler.setLevel(logging.WARNING)
    else:
        handler.addFilter(lambda record: "submitted" not in record.getMessage())
    job = make_job(5)
    joblog.transition(job, states.submitted_event(job))
    await asyncio.sleep(0)
    written = stream.getvalue()
    assert written == ("plain job submitted\n" if change == "formatter" else ""), written
