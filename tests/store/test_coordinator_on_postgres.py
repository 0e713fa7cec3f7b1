"""The whole coordinator on PostgreSQL: DATABASE_URL=postgresql://...?schema=NAME, a real Miner and Client,
a job completed with a verifiable receipt, then a restart on the same schema that keeps everything."""

from __future__ import annotations

import asyncio

import pytest
from aitbc.client import Client, struct_to_dict
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import Miner
from aitbc.receipts import KeySet, Policy, Signer, verify_bundle

from coordinator.config import ApiKeyEntry, Settings, validate
from coordinator.server import Coordinator, start
from coordinator.store.postgres import PostgresStore

from .store_support import pg_admin, pg_url

CLIENT, MINER, ADMIN = "client-key-0001", "miner-key-0001", "admin-key-0001"


def settings(database_url: str) -> Settings:
    s = Settings(
        app_port=0, database_url=database_url,
        client_api_keys=(ApiKeyEntry("alice", "client", CLIENT),),
        miner_api_keys=(ApiKeyEntry("m1", "miner", MINER),),
        admin_api_keys=(ApiKeyEntry("ops", "admin", ADMIN),),
        heartbeat_interval_seconds=0.5, heartbeat_timeout_seconds=5, lease_seconds=5,
        reconnect_grace_seconds=1,
    )  # fmt: skip
    validate(s)  # DATABASE_URL=postgresql://... passes the settings' validation
    return s


async def run_one_job(coordinator: Coordinator, signer: Signer, payload: dict) -> tuple[job_pb2.Job, Client]:
    address = f"127.0.0.1:{coordinator.port}"
    client = Client(address, CLIENT)
    miner = Miner(address, MINER, signer=signer, backoff_base_s=0.05)
    running = asyncio.create_task(miner.run())
    try:
        job = await client.submit(payload)
        done = await asyncio.wait_for(client.wait(job.job_id), 30)
        assert done.state == job_pb2.JOB_STATE_COMPLETED, done
        for _ in range(100):  # the ack (receipt stored) may trail the job's completion by a moment
            if miner.acked:
                break
            await asyncio.sleep(0.02)
        return done, client
    finally:
        miner.stop()
        await asyncio.wait_for(running, 10)


async def test_coordinator_runs_on_postgres_and_keeps_jobs_across_restart(schema: str) -> None:
    url = pg_url(schema)
    signer = Signer.generate()
    coordinator = await start(settings(url))
    try:
        assert isinstance(coordinator.scheduler.store, PostgresStore)
        job, client = await run_one_job(coordinator, signer, {"prompt": "hello", "n": 1})
        result = await client.result(job.job_id)
        assert struct_to_dict(result.result.result) == {"prompt": "hello", "n": 1}
        receipt = await client.receipt(job.job_id)
        assert receipt.receipt.receipt_id == result.result.receipt_id != ""
        assert receipt.receipt.leaf_index == 0
        keys = KeySet.load(await client.signing_keys())
        verified = verify_bundle(
            await client.bundle(job.job_id), keys, Policy(frozenset({"coordinator", "miner"}))
        )
        assert verified.receipt_id == receipt.receipt.receipt_id
        assert verified.payload["client"] == "alice" and verified.payload["provider"] == "m1"
        await client.close()
    finally:
        await coordinator.stop(grace=0.5)

    # the rows are in PostgreSQL, in the schema named by the URL
    conn = await pg_admin()
    try:
        counts = await conn.fetchrow(
            f'SELECT (SELECT count(*) FROM "{schema}".jobs), (SELECT count(*) FROM "{schema}".receipts), '
            f'(SELECT count(*) FROM "{schema}".ledger_entries), (SELECT count(*) FROM "{schema}".signing_keys)'
        )
        # one job; one receipt, booked for client and miner; keys: coordinator, log, the miner's
        assert tuple(counts) == (1, 1, 2, 3)
        key_ids = {r[0] for r in await conn.fetch(f'SELECT key_id FROM "{schema}".signing_keys')}
    finally:
        await conn.close()

    restarted = await start(settings(url))
    try:
        address = f"127.0.0.1:{restarted.port}"
        client = Client(address, CLIENT)
        kept = await client.get(job.job_id)
        assert kept.state == job_pb2.JOB_STATE_COMPLETED and kept.job_id == job.job_id
        assert struct_to_dict((await client.result(job.job_id)).result.result) == {"prompt": "hello", "n": 1}
        assert [j.job_id for j in (await client.list()).jobs] == [job.job_id]
        keys = KeySet.load(await client.signing_keys())  # the keys generated at first start were kept
        assert {k.key_id for k in keys.keys} >= key_ids - {signer.key_id}
        assert verify_bundle(await client.bundle(job.job_id), keys).receipt_id == verified.receipt_id
        await client.close()

        second, client = await run_one_job(restarted, signer, {"n": 2})
        receipt = await client.receipt(second.job_id)
        assert receipt.receipt.leaf_index == 1  # the receipt log continues where it was
        listed = [j.job_id for j in (await client.list()).jobs]
        assert listed == [second.job_id, job.job_id]  # newest first
        await client.close()
    finally:
        await restarted.stop(grace=0.5)

    conn = await pg_admin()
    try:  # no key was generated again at the restart, and the second job is stored beside the first
        assert {r[0] for r in await conn.fetch(f'SELECT key_id FROM "{schema}".signing_keys')} == key_ids
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".jobs WHERE state = 4') == 2
    finally:
        await conn.close()


async def test_text_with_a_nul_character_is_invalid_argument_not_a_failed_commit(schema: str) -> None:
    """PostgreSQL's text cannot hold U+0000: an idempotency key or a cancel reason with one made the commit
    fail, and the caller got INTERNAL. Refused before the store (review round 10, helper-32)."""
    import grpc

    coordinator = await start(settings(pg_url(schema)))
    client = Client(f"127.0.0.1:{coordinator.port}", CLIENT)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.submit({"n": 1}, idempotency_key="order\x0042")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        job = await client.submit({"n": 1}, idempotency_key="order 42")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.cancel(job.job_id, reason="user\x00pressed cancel")
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        canceled = await client.cancel(job.job_id, reason="user pressed cancel")
        assert canceled.state == job_pb2.JOB_STATE_CANCELED
    finally:
        await client.close()
        await coordinator.stop(grace=0.5)
