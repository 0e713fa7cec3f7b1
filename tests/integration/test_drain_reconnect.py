"""An operator's drain (AdminService.DrainMiner) must survive the miner's connection dropping: a miner back
within the grace period, listing the jobs it runs, keeps them, and is still draining (it takes no new job).
Before, the new session started afresh: the drain was forgotten at the first network blip (unless the
miner itself remembered the Drain message and sent MinerDrain again, as the Python SDK does)."""

from __future__ import annotations

import asyncio

from aitbc.coordinator.v1 import admin_service_pb2 as apb
from coord_support import Harness


async def test_a_drain_outlives_a_dropped_connection(coord: Harness) -> None:
    client = coord.client()
    miner = await coord.stream_miner("miner-00", slots=2)
    first = await client.submit({"n": 1})
    a = await miner.next("assignment")
    miner.accept(a)
    await coord.admin().drain("miner-00")
    await miner.next("drain")

    await miner.kill()  # the connection drops; the miner comes back at once, running the job
    welcome = await miner.connect(running_jobs=((a.job.job_id, a.attempt),))
    assert [(j.job_id, j.attempt) for j in welcome.resumed_jobs] == [(first.job_id, a.attempt)]

    await client.submit({"n": 2})
    await asyncio.sleep(0.5)
    assert miner.pending("assignment") == 0, "a draining miner got a new job"
    info = (await coord.admin().miners())["miner-00"]
    assert info.status == apb.MINER_STATUS_DRAINING, apb.MinerStatus.Name(info.status)
    # it finishes what it runs; then its session ends (drained)
    miner.result(a.job.job_id, a.attempt)
    go_away = await miner.next("go_away")
    assert go_away.reason == "DRAINED"


async def test_a_drain_the_miner_asked_for_is_not_inherited_by_a_process_started_in_its_place(
    coord: Harness,
) -> None:
    """A rolling restart: the old process drains (SIGTERM: MinerDrain), and a new one with the same key connects
    before it is done. The new session takes over its job, and takes new work: the drain was the old process's
    (the SDK asks again itself after a reconnect). Inheriting it, the new process was told DRAINED and stopped."""
    from aitbc.coordinator.v1 import miner_service_pb2 as mpb

    client = coord.client()
    old = await coord.stream_miner("miner-00", slots=2)
    first = await client.submit({"n": 1})
    a = await old.next("assignment")
    old.accept(a)
    old.send(drain=mpb.MinerDrain(reason="SIGTERM"))
    await asyncio.sleep(0.3)
    assert (await coord.admin().miners())["miner-00"].status == apb.MINER_STATUS_DRAINING

    new = await coord.stream_miner("miner-00", slots=2, running_jobs=((first.job_id, a.attempt),))
    second = await client.submit({"n": 2})
    b = await new.next("assignment")
    assert b.job.job_id == second.job_id
    assert (await coord.admin().miners())["miner-00"].status != apb.MINER_STATUS_DRAINING
    assert new.pending("go_away") == 0
