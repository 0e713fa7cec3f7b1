"""A miner stopped on purpose (`Miner.stop()`, Ctrl-C) gives back the jobs it will not finish before it closes its
side of the stream: `Capacity(0)` (nothing new assigned), then a `Reject` per job held, its attempt unspent. The
coordinator queues each at once for another miner. It used to leave them to the reconnect grace (30 s by default):
a fleet restarted without draining delayed every running job by that long, for nothing. Results awaiting their
acks are not given back (the coordinator may have them). The poll transport does the same with unary calls
(Drain, then RejectJob: test_miner_sdk_poll_stop_gives_jobs_back.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aitbc.miner import (
    LEAVE_GRACE_S,
    Miner,
    Outcome,
    echo_runner,
    job_input,
    probe_capabilities,
    python_runner,
    subprocess_runner,
)
from coord_support import (
    COMPLETED,
    QUEUED,
    Harness,
    eventually,
    gated_sdk_miner,
    gone,
    miner_key,
    sdk_miner,
)
from muting_relay import relayed
from test_miner_sdk_stop_while_leaving import HeldByNumber
from test_shutdown_disconnect_reason import disconnect_reasons

from tests.tcp_relay import DOWN, Relay

GUARD_S = 30.0  # a guard against a hang, not a speed
# with this grace, a job left to it waits a minute: given back, it is queued within a second or two
LONG_GRACE = {"reconnect_grace_seconds": 60.0, "heartbeat_timeout_seconds": 30.0, "lease_seconds": 30.0}
REQUEUED_WITHIN_S = 3.0
POLL = {"transport": "poll", "poll_wait_s": 1.0}  # a poll miner's settings (a short poll: a prompt leave)


def other_miner(address: str, name: str = "miner-01", runner: Any = echo_runner) -> Miner:
    """A miner of another identity (the stopped one is not offered a job it rejected for a moment)."""
    return Miner(address, miner_key(name), runner=runner, capabilities=probe_capabilities(slots=1),
                 own_connection=True, backoff_base_s=0.2)  # fmt: skip


def given_back(coord: Harness, job_id: str) -> list[dict[str, Any]]:
    """The job's transitions back to the queue as a rejection."""
    return [e for e in coord.db.events(job_id) if e["to_state"] == QUEUED and e["reason"] == "REJECTED"]


async def stopped_within_the_leave_grace(miner: Any, task: asyncio.Task) -> None:
    started = time.monotonic()
    miner.stop()
    await asyncio.wait_for(task, GUARD_S)
    assert time.monotonic() - started < LEAVE_GRACE_S + 1.0, "stop() outlasted its leave grace"


@pytest.mark.coordinator(**LONG_GRACE)
async def test_a_stopped_miner_gives_its_running_job_back_at_once_with_its_attempt_unspent(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address)
    task = asyncio.create_task(miner.run())
    job = await alice.submit({"n": 1})
    await eventually(lambda: runner.runs == [1], what="the job running")

    with caplog.at_level(logging.INFO, logger="coordinator.scheduler"):
        started = time.monotonic()
        miner.stop()
        await asyncio.wait_for(task, GUARD_S)
        assert time.monotonic() - started < LEAVE_GRACE_S + 1.0, "stop() outlasted its leave grace"
        await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, within=REQUEUED_WITHIN_S,
                         what="the job queued again (not left to the 60 s grace)")  # fmt: skip
        await eventually(lambda: disconnect_reasons(caplog), what="the disconnect line")
    assert disconnect_reasons(caplog) == ["STREAM_CLOSED"]  # (still the miner's own end, not a dropped link)
    [back] = given_back(coord, job.job_id)
    assert back["message"] == "miner stopping"

    coord.run_miner(other_miner(coord.address))
    done = await coord.finished(alice, job.job_id, within=REQUEUED_WITHIN_S)
    assert (done.state, done.attempt, done.miner_id) == (COMPLETED, 1, "miner-01")  # its attempt unspent
    assert coord.db.count("receipts", job.job_id) == 1


@pytest.mark.coordinator(**LONG_GRACE)
async def test_a_stopped_miner_gives_back_an_assignment_it_had_not_started(coord: Harness) -> None:
    """One slot, held by a canceled job's python callable (a thread cannot be stopped): the coordinator, counting
    the slot free, assigns the next job, which waits for the slot (STUCK_AFTER_S) without starting. Stopped then,
    the miner gives it back too."""
    alice = coord.client("alice")
    release = threading.Event()
    started: list[str] = []

    def blocking(job: Any) -> dict[str, Any]:
        started.append(job["name"])
        release.wait(GUARD_S)
        return job

    miner = sdk_miner(coord.address, python_runner(blocking))
    task = asyncio.create_task(miner.run())
    try:
        stuck = await alice.submit({"name": "stuck"})
        await eventually(lambda: started == ["stuck"], what="the first job's callable running")
        await alice.cancel(stuck.job_id)
        waiting = await alice.submit({"name": "waiting"})
        await eventually(lambda: waiting.job_id in miner.running, what="the next job waiting for the slot")
        assert started == ["stuck"], "the next job started: it should wait for the slot"

        miner.stop()
        await asyncio.wait_for(task, GUARD_S)
        await eventually(lambda: coord.db.job_state(waiting.job_id) == QUEUED, within=REQUEUED_WITHIN_S,
                         what="the waiting job queued again (not left to the 60 s grace)")  # fmt: skip
        assert [e["message"] for e in given_back(coord, waiting.job_id)] == ["miner stopping"]
        assert started == ["stuck"]

        coord.run_miner(other_miner(coord.address))
        done = await coord.finished(alice, waiting.job_id, within=REQUEUED_WITHIN_S)
        assert (done.state, done.attempt, done.miner_id) == (COMPLETED, 1, "miner-01")
    finally:
        release.set()  # (the stuck callable's thread ends)


@pytest.mark.parametrize("transport", [{}, POLL], ids=["stream", "poll"])
@pytest.mark.coordinator(**LONG_GRACE)
async def test_a_stopped_miner_gives_back_its_running_job_but_not_a_result_awaiting_its_ack(
    coord: Harness, transport: dict[str, Any]
) -> None:
    """The coordinator's answers are held back (the result's ack, then the leave's own): what the miner sends still
    lands, and stop() waits for no answer past its grace."""
    alice = coord.client("alice")
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    runner = HeldByNumber()
    try:
        miner = sdk_miner(f"127.0.0.1:{relay.port}", runner, slots=2, **transport)
        task = asyncio.create_task(miner.run())
        running, finished = await alice.submit({"n": 1}), await alice.submit({"n": 2})
        await eventually(lambda: len(miner.running) == 2, what="both jobs running")
        relay.stall(DOWN)  # the ack of the result below is held back, and the coordinator's end of the stream
        runner.release(2)
        await eventually(lambda: coord.db.job_state(finished.job_id) == COMPLETED, what="the result landed")
        assert finished.job_id in miner.unacked

        await stopped_within_the_leave_grace(miner, task)
        await eventually(lambda: coord.db.job_state(running.job_id) == QUEUED, within=REQUEUED_WITHIN_S,
                         what="the running job queued again (not left to the timeouts and the 60 s grace)")  # fmt: skip
        relay.heal()

        runner.release(1)
        coord.run_miner(other_miner(coord.address))
        done = await coord.finished(alice, running.job_id, within=REQUEUED_WITHIN_S)
        assert (done.state, done.attempt) == (COMPLETED, 1)
        assert given_back(coord, finished.job_id) == []
        assert (await alice.get(finished.job_id)).attempt == 1
        assert runner.runs == {1: [1], 2: [1]}
        assert [coord.db.count("receipts", j.job_id) for j in (finished, running)] == [1, 1]
        assert coord.db.not_terminal() == []
    finally:
        await relay.close()


@pytest.mark.coordinator(**LONG_GRACE)
async def test_stop_with_a_running_job_on_a_stale_stream_still_returns_within_the_leave_grace(
    coord: Harness,
) -> None:
    """Nothing of the leave gets through a muted connection (nor the coordinator's end): the rejects are written
    into the void, and stop() still returns within LEAVE_GRACE_S (the job is then the grace's, as before)."""
    relay, channel = await relayed(coord.coordinator.port)
    try:
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", channel=channel)
        task = asyncio.create_task(miner.run())
        alice = coord.client("alice")
        await alice.submit({"n": 1})
        await eventually(lambda: runner.runs == [1], what="the job running")
        assert relay.mute() == 1
        started = time.monotonic()
        miner.stop()
        await asyncio.wait_for(task, GUARD_S)
        assert time.monotonic() - started < LEAVE_GRACE_S + 1.0, "stop() outlasted its leave grace"
    finally:
        await relay.close()
        await channel.close()


@pytest.mark.parametrize("transport", [{}, POLL], ids=["stream", "poll"])
@pytest.mark.coordinator(**LONG_GRACE)
async def test_a_stopped_miners_command_is_killed_before_its_job_is_given_back(
    coord: Harness, tmp_path: Path, transport: dict[str, Any]
) -> None:
    """The job given back may start on another miner at once: the stopped miner's command must be gone by then,
    or the job would run twice at the same time (a GPU held twice, outputs written twice). The coordinator's answers
    are held back, so that the leave lasts its whole grace."""
    alice = coord.client("alice")
    pids = tmp_path / "pids"
    pids.mkdir()
    command = ["sh", "-c", f'echo $$ > "{pids}/$AITBC_JOB_ID"; exec sleep 60']
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    try:
        miner = sdk_miner(f"127.0.0.1:{relay.port}", subprocess_runner(command), **transport)
        task = asyncio.create_task(miner.run())
        job = await alice.submit({"n": 1})
        pid_file = pids / job.job_id
        await eventually(
            lambda: pid_file.exists() and pid_file.read_text().strip(), what="the command running"
        )
        pid = int(pid_file.read_text())

        gone_when_run_again: list[bool] = []

        async def checking(job: Any) -> Outcome:
            gone_when_run_again.append(gone(pid))
            return Outcome(job_input(job), units="1", unit_type="jobs")

        other = other_miner(coord.address, runner=checking)
        coord.run_miner(other)
        await eventually(lambda: other.connects == 1, what="the other miner connected, idle")

        relay.stall(DOWN)
        await stopped_within_the_leave_grace(miner, task)
        done = await coord.finished(alice, job.job_id, within=REQUEUED_WITHIN_S)
        assert (done.state, done.attempt, done.miner_id) == (COMPLETED, 1, "miner-01")
        assert gone_when_run_again == [True], "the job ran again while the stopped miner's command ran on"
    finally:
        await relay.close()
