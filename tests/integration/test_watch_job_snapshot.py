"""WatchJob: each update's job is the job as it is after that update's event (the proto's promise), not as
the job stands in memory when the event's commit lands: a result that implies the accept is two events in
one commit (ASSIGNED -> RUNNING, RUNNING -> COMPLETED), and the first must come with a RUNNING job."""

from __future__ import annotations

import asyncio

from coord_support import ASSIGNED, COMPLETED, RUNNING, Harness


async def test_each_watch_update_carries_the_job_as_of_its_event(coord: Harness) -> None:
    client = coord.client()
    miner = await coord.stream_miner("miner-00")
    job = await client.submit({"x": 1})
    a = await miner.next("assignment")
    updates = []
    first = asyncio.Event()

    async def watch() -> None:
        async for update in client.watch(job.job_id):
            updates.append(update)
            first.set()

    watching = asyncio.create_task(watch())
    await asyncio.wait_for(first.wait(), 5)
    assert updates[0].job.state == ASSIGNED
    miner.result(a.job.job_id, a.attempt)  # no Accept first: the result implies it
    await asyncio.wait_for(watching, 5)
    seen = [(u.event.to_state, u.job.state, u.event.sequence, u.job.attempt) for u in updates[1:]]
    assert seen == [(RUNNING, RUNNING, 3, 1), (COMPLETED, COMPLETED, 4, 1)], seen
    running = updates[1].job
    assert not running.HasField("finished_at") and running.started_at.ToMicroseconds() > 0
