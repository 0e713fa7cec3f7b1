"""Review of "a stopped miner gives its jobs back" (Miner.stop(): Capacity 0, a Reject per job held, then its side of
the stream closed; see test_miner_sdk_stop_gives_jobs_back.py): what it meets around it. Many jobs at once, a stop
during a drain, a sender stuck behind flow control, results still waiting to be written, an assignment already on
its way as the miner leaves, and the miner's identity restarted at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.miner import LEAVE_GRACE_S, Outcome, job_input
from coord_support import (
    ASSIGNED,
    QUEUED,
    GatedRunner,
    Harness,
    eventually,
    gated_sdk_miner,
    sdk_miner,
)
from test_miner_sdk_stop_gives_jobs_back import (
    LONG_GRACE,
    REQUEUED_WITHIN_S,
    given_back,
    stopped_within_the_leave_grace,
)

from tests.tcp_relay import UP, Relay

GUARD_S = 30.0  # a guard against a hang, not a speed
# under the coordinator's 1 MiB result limit; a dozen fill the connection's buffers
BIG_RESULT_BYTES = 900_000
BIG_RESULTS = 12  # behind a stalled connection, their writes block: the later results wait in the outbox


class HeldByNumber:
    """A runner holding each job (input {"n": N}) until release(N); N < 100 returns BIG_RESULT_BYTES of bytes."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}

    def release(self, *numbers: int) -> None:
        for n in numbers:
            self.gates.setdefault(n, asyncio.Event()).set()

    async def __call__(self, job: Any) -> Outcome:
        n = int(job_input(job)["n"])
        await self.gates.setdefault(n, asyncio.Event()).wait()
        return Outcome(b"x" * (BIG_RESULT_BYTES if n < 100 else 10), units="1", unit_type="jobs")


def left_to_the_grace(coord: Harness, job_ids: list[str]) -> list[str]:
    """The jobs still assigned to a miner that is gone: neither completed nor queued again."""
    return [j for j in job_ids if coord.db.job_state(j) == ASSIGNED]


async def results_behind_a_stalled_write(
    coord: Harness, relay: Relay, numbers: list[int], released: list[int]
) -> tuple[Any, asyncio.Task, list[Any]]:
    """A miner running a job per number, its connection to the coordinator stalled (nothing read there), then the
    `released` jobs' results reported: the large ones' writes block on HTTP/2 flow control and the later ones wait
    in the outbox. Returns the miner, its run() task and the jobs."""
    alice = coord.client("alice")
    runner = HeldByNumber()
    miner = sdk_miner(f"127.0.0.1:{relay.port}", runner, slots=len(numbers))
    task = asyncio.create_task(miner.run())
    jobs = [await alice.submit({"n": n}) for n in numbers]
    await eventually(lambda: len(miner.running) == len(jobs), what="every job running")
    relay.stall(UP)
    runner.release(*released)
    await eventually(lambda: len(miner.unacked) == len(released), what="the results reported")
    await eventually(lambda: miner._outbox is not None and miner._outbox.qsize() > 0,
                     what="results waiting behind a blocked write")  # fmt: skip
    return miner, task, jobs


@pytest.mark.coordinator(**LONG_GRACE)
async def test_a_stopped_miner_with_sixteen_jobs_gives_each_back_within_its_leave_grace(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    runner = GatedRunner()
    miner = sdk_miner(coord.address, runner, slots=16)
    task = asyncio.create_task(miner.run())
    jobs = [await alice.submit({"n": n}) for n in range(16)]
    await eventually(lambda: len(runner.runs) == 16, what="sixteen jobs running")

    started = time.monotonic()
    miner.stop()
    await asyncio.wait_for(task, GUARD_S)
    assert time.monotonic() - started < LEAVE_GRACE_S + 1.0, "stop() outlasted its leave grace"
    ids = [j.job_id for j in jobs]
    await eventually(lambda: all(coord.db.job_state(j) == QUEUED for j in ids), within=REQUEUED_WITHIN_S,
                     what="all sixteen queued again (not left to the 60 s grace)")  # fmt: skip
    assert all(len(given_back(coord, j)) == 1 for j in ids)
    assert [(await alice.get(j)).attempt for j in ids] == [0] * 16  # attempts unspent


@pytest.mark.coordinator(**LONG_GRACE)
async def test_a_miner_stopped_while_draining_gives_back_the_jobs_its_drain_waited_for(
    coord: Harness,
) -> None:
    """drain() (SIGTERM), then stop() (Ctrl-C: the operator will not wait): the jobs the drain would have finished
    are given back at once all the same."""
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address)
    task = asyncio.create_task(miner.run())
    job = await alice.submit({"n": 1})
    await eventually(lambda: runner.runs == [1], what="the job running")
    miner.drain()

    async def draining() -> bool:
        return (await coord.admin().miners())["miner-00"].status == apb.MINER_STATUS_DRAINING

    await eventually(draining, what="the drain read by the coordinator")

    miner.stop()
    await asyncio.wait_for(task, GUARD_S)
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, within=REQUEUED_WITHIN_S,
                     what="the job queued again (not left to the 60 s grace)")  # fmt: skip
    assert [e["message"] for e in given_back(coord, job.job_id)] == ["miner stopping"]


@pytest.mark.coordinator(**LONG_GRACE)
async def test_stop_with_its_sender_blocked_by_flow_control_still_returns_within_the_leave_grace(
    coord: Harness,
) -> None:
    """The coordinator reads nothing more (its side stalled): the results' writes block on HTTP/2 flow control, the
    sender with them, and the rejects queue behind. stop() waits LEAVE_GRACE_S for them, then ends the call."""
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    try:
        numbers = list(range(BIG_RESULTS + 1))  # (the last one still running: a reject queues behind)
        miner, task, _ = await results_behind_a_stalled_write(coord, relay, numbers, numbers[:-1])
        await stopped_within_the_leave_grace(miner, task)
    finally:
        await relay.close()


@pytest.mark.coordinator(**LONG_GRACE)
async def test_results_still_waiting_to_be_written_when_the_miner_stops_are_not_left_to_the_grace(
    coord: Harness,
) -> None:
    """A slow connection (a tenth of a second stalled): results finished before stop() wait in the outbox behind
    a large one being written. They are done work the coordinator has not got; dropped, their jobs are in no one's
    hands for the whole grace (60 s here, 30 s by default)."""
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    try:
        numbers = [*range(BIG_RESULTS), 100]  # (100: a small result, last in the outbox)
        miner, task, jobs = await results_behind_a_stalled_write(coord, relay, numbers, numbers)
        miner.stop()
        await asyncio.sleep(0.1)
        relay.heal()
        await asyncio.wait_for(task, GUARD_S)
        ids = [j.job_id for j in jobs]
        await eventually(lambda: not left_to_the_grace(coord, ids), within=REQUEUED_WITHIN_S,
                         what="every job completed or queued again")  # fmt: skip
    finally:
        await relay.close()


@pytest.mark.coordinator(**LONG_GRACE)
async def test_an_assignment_on_its_way_as_the_miner_leaves_is_not_left_to_the_grace(coord: Harness) -> None:
    """The coordinator assigns a job to the free slot before it reads the leaving miner's Capacity 0 (its writes
    held up a moment on the way). The assignment may arrive after the miner has closed its side, where its reject
    cannot be written: the coordinator, seeing a stream closed after Capacity 0, queues what it still holds at
    once, rather than leaving it to the grace."""
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    try:
        alice = coord.client("alice")
        runner = GatedRunner()
        miner = sdk_miner(f"127.0.0.1:{relay.port}", runner, slots=2)
        task = asyncio.create_task(miner.run())
        first = await alice.submit({"n": 1})
        await eventually(lambda: runner.runs == [1], what="the first job running")
        relay.stall(UP)  # the leave's Capacity 0, reject and close wait on the way
        miner.stop()
        late = await alice.submit({"n": 2})
        await eventually(lambda: late.job_id in miner._rejects, what="the late assignment read and rejected")
        relay.heal()
        await asyncio.wait_for(task, GUARD_S)

        await eventually(lambda: coord.db.job_state(first.job_id) == QUEUED, within=REQUEUED_WITHIN_S,
                         what="the running job given back")  # fmt: skip
        await eventually(lambda: coord.db.job_state(late.job_id) == QUEUED, within=REQUEUED_WITHIN_S,
                         what="the late job queued again (not left to the 60 s grace)")  # fmt: skip
    finally:
        await relay.close()


@pytest.mark.coordinator(**LONG_GRACE, retry_backoff_base_seconds=10.0, retry_backoff_max_seconds=60.0)
async def test_a_miner_restarted_at_once_gets_the_job_it_gave_back_without_a_refusal_pause(
    coord: Harness,
) -> None:
    """One miner, restarted (a deploy, a config change): the job it gave back waits for no one else, so it should
    start again on the restarted miner at once, not after the retry backoff a refusal earns."""
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address)
    task = asyncio.create_task(miner.run())
    job = await alice.submit({"n": 1})
    await eventually(lambda: runner.runs == [1], what="the job running")
    miner.stop()
    await asyncio.wait_for(task, GUARD_S)

    restarted, again = gated_sdk_miner(coord.address)
    coord.run_miner(restarted)
    await eventually(lambda: again.runs == [1], within=REQUEUED_WITHIN_S,
                     what="the job running again on the restarted miner")  # fmt: skip
    assert (await alice.get(job.job_id)).miner_id == "miner-00"
