"""Submits under keys never used are not looked up in the store (a filter of every stored key says they are new);
the keys of finished jobs, known only to the store, still are, across a restart. Seen as an operator sees it: the
aitbc_idempotency_store_lookups_total counter of a real coordinator's /metrics, over a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from aitbc.client import Client
from ops_support import CANCELED, eventually, free_port, running


async def lookups(ops) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    s = await ops.scrape()
    return (s.value("aitbc_idempotency_store_lookups_total", outcome="read"),
            s.value("aitbc_idempotency_store_lookups_total", outcome="skipped"))  # fmt: skip


async def test_new_keys_skip_the_store_and_old_keys_still_answer_after_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as ops:
        client = ops.client()
        first = [await client.submit({"n": i}, idempotency_key=f"order-{i}") for i in range(3)]
        for job in first:
            await client.cancel(job.job_id)  # finished: its key leaves memory, the store holds it

    async with running(tmp_path, metrics_port=free_port()) as ops:
        stored_keys = ops.coordinator.scheduler.stored_keys
        await eventually(lambda: stored_keys.complete, what="the stored keys read in")
        assert await lookups(ops) == (0, 0)
        client = ops.client()
        again = await client.jobs.SubmitJob(Client.request({"n": 1}, idempotency_key="order-1"),
                                            metadata=client.metadata)  # fmt: skip
        assert not again.created and again.job.job_id == first[1].job_id and again.job.state == CANCELED
        assert await lookups(ops) == (1, 0)  # an old key: read from the store

        new = await client.jobs.SubmitJob(Client.request({"n": 9}, idempotency_key="order-9"),
                                          metadata=client.metadata)  # fmt: skip
        generated = await client.submit({"n": 10})  # the SDK's own key (auto-...)
        assert new.created and generated.idempotency_key.startswith("auto-")
        assert await lookups(ops) == (1, 2)  # new keys: no read

        repeat = await client.jobs.SubmitJob(Client.request({"n": 9}, idempotency_key="order-9"),
                                             metadata=client.metadata)  # fmt: skip
        assert not repeat.created and repeat.job.job_id == new.job.job_id  # a live job's key: from memory
        assert await lookups(ops) == (1, 2)
