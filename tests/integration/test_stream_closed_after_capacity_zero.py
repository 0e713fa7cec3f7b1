"""The contract's "leaving on purpose" (miner_service.proto, `Capacity`), over raw stubs as a miner in another
language writes it: a stream that offered Capacity 0 and then closed its side has what it still holds queued again
at once (`MINER_GONE`); a stream closed without offering 0 first keeps its jobs for the reconnect grace, as a
dropped connection's (a miner back within it, listing the job, resumes it)."""

from __future__ import annotations

import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import QUEUED, RUNNING, Harness, StreamMiner, eventually
from test_miner_sdk_stop_gives_jobs_back import LONG_GRACE, REQUEUED_WITHIN_S

GUARD_S = 10.0  # a guard against a hang, not a speed


async def running_job(coord: Harness, miner: StreamMiner) -> tuple[str, int]:
    """A job submitted, assigned to miner and accepted: RUNNING there."""
    job = await coord.client("alice").submit({"n": 1})
    [a] = await miner.assignments(1)
    miner.accept(a)
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, what="the job RUNNING")
    return job.job_id, a.attempt


async def offers_none(coord: Harness, miner_id: str) -> bool:
    return (await coord.admin().miners())[miner_id].offered_slots == 0


async def disconnected(coord: Harness, miner_id: str) -> bool:
    return (await coord.admin().miners())[miner_id].status == apb.MINER_STATUS_DISCONNECTED


@pytest.mark.coordinator(**LONG_GRACE)
async def test_a_stream_closed_after_offering_no_slot_has_what_it_held_queued_again_at_once(
    coord: Harness,
) -> None:
    miner = await coord.stream_miner("miner-00", heartbeat=False)
    job_id, attempt = await running_job(coord, miner)

    miner.send(capacity=mpb.Capacity(slots=0))
    await eventually(lambda: offers_none(coord, "miner-00"), what="Capacity 0 read")
    await miner.call.done_writing()  # its side closed, the job neither rejected nor finished

    await eventually(lambda: coord.db.job_state(job_id) == QUEUED, within=REQUEUED_WITHIN_S,
                     what="the job queued again at once (not after the 60 s grace)")  # fmt: skip
    assert [e["reason"] for e in coord.db.events(job_id)] == [
        "SUBMITTED",
        "ASSIGNED",
        "ACCEPTED",
        "MINER_GONE",
    ]
    assert (
        await coord.client("alice").get(job_id)
    ).attempt == attempt  # (spent: the next assignment is attempt+1)


@pytest.mark.coordinator(**LONG_GRACE)
async def test_a_stream_closed_without_offering_no_slot_keeps_its_job_for_the_grace(coord: Harness) -> None:
    miner = await coord.stream_miner("miner-00", heartbeat=False)
    job_id, attempt = await running_job(coord, miner)

    await miner.call.done_writing()
    await eventually(lambda: disconnected(coord, "miner-00"), what="the disconnect")
    assert coord.db.job_state(job_id) == RUNNING  # kept for the miner's return
    await miner.kill()
    welcome = await miner.connect(running_jobs=((job_id, attempt),))
    assert [(r.job_id, r.attempt) for r in welcome.resumed_jobs] == [(job_id, attempt)]
