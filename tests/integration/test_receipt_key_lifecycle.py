"""Receipt keys whose published validity must keep covering what they signed (review round 10, helper-32).

1. A miner's receipt key retired when another replaced it cannot come back: its validity ended at the
   retirement, so receipts carrying its signatures from then on failed offline verification ("signed after key
   retired"). Its hello is refused RECEIPT_KEY_RETIRED, before any session opens.
2. A configured coordinator key (RECEIPT_SIGNING_KEY_HEX) retired by `aitbc-coordinator keys rotate`: the next
   start made it active again with a validity starting then, so every receipt it had signed failed offline
   ("signed before key valid"). The start is refused with a clear error; without the setting, the coordinator
   signs with the key that replaced it and the old receipts verify.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import grpc
import pytest
from aitbc.channel import open_channel
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.coordinator.v1 import miner_service_pb2_grpc
from aitbc.receipts import (
    KeySet,
    Policy,
    Signer,
    build_miner_report,
    canonical_struct,
    sign_miner_report,
    verify_bundle,
)
from coord_support import Harness, capabilities, details_of, expect_error, miner_key, struct

from coordinator.config import SettingsError
from coordinator.receipts.keyring import rotate
from coordinator.store import open_store

slow_leases = pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)


class KeyedMiner:
    """One Connect stream of identity `name` whose hello registers `signer`'s receipt key."""

    def __init__(self, coord: Harness, signer: Signer, name: str = "miner-01") -> None:
        self.signer = signer
        self.channel = open_channel(coord.address, own_connection=True)
        coord.channels.append(self.channel)
        self.call: Any = miner_service_pb2_grpc.MinerServiceStub(self.channel).Connect(
            metadata=(("x-api-key", miner_key(name)),)
        )

    async def hello(self) -> None:
        await self.call.write(mpb.ConnectRequest(hello=mpb.Hello(
            capabilities=capabilities(slots=1), receipt_public_key=self.signer.public_key)))  # fmt: skip
        await self.next("welcome")

    async def next(self, kind: str) -> Any:
        while True:
            message = await asyncio.wait_for(self.call.read(), 10)
            assert message is not grpc.aio.EOF, f"stream ended waiting for {kind}"
            if message.WhichOneof("message") == kind:
                return getattr(message, kind)

    async def complete_next(self, value: dict) -> mpb.ResultAck:
        [a] = (await self.next("assignments")).assignments
        digest = hashlib.sha256(canonical_struct(value)).hexdigest()
        report = build_miner_report(a.job.job_id, a.attempt, digest, "2", "gpu_seconds")
        r = mpb.Result(job_id=a.job.job_id, attempt=a.attempt, result=struct(value), units="2",
                       unit_type="gpu_seconds", miner_report=report,
                       miner_signature=sign_miner_report(self.signer, report))  # fmt: skip
        await self.call.write(mpb.ConnectRequest(results=mpb.Results(results=[r])))
        return await self.next("result_ack")

    def close(self) -> None:
        self.call.cancel()


@slow_leases
async def test_a_retired_miner_key_cannot_come_back_and_what_it_signed_verifies(coord: Harness) -> None:
    client = coord.client()
    key_a, key_b = Signer.generate(), Signer.generate()
    job_ids = []
    for signer in (key_a, key_b):
        miner = KeyedMiner(coord, signer)
        await miner.hello()
        job = await client.submit({"n": len(job_ids)})
        assert (await miner.complete_next({"n": len(job_ids)})).accepted
        job_ids.append(job.job_id)
        if signer is key_a:
            miner.close()
            await asyncio.sleep(0.1)
    session_b = coord.coordinator.scheduler.by_miner["miner-01"]
    again = KeyedMiner(coord, key_a)  # e.g. the miner restarted with its previous key file
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await again.hello()
    err = details_of(refused.value)
    expect_error(err, grpc.StatusCode.INVALID_ARGUMENT, "RECEIPT_KEY_RETIRED")
    assert [f for f, _ in err.violations] == ["hello.receipt_public_key"]
    assert coord.coordinator.scheduler.by_miner["miner-01"] is session_b  # not replaced by the refused hello
    keys = KeySet.load(await client.signing_keys())
    for job_id in job_ids:
        verify_bundle(await client.bundle(job_id), keys, Policy(frozenset({"coordinator", "miner"})))


SEED_A = "1f" * 32


@pytest.mark.coordinator(receipt_signing_key_hex=SEED_A)
async def test_a_configured_coordinator_key_retired_by_keys_rotate_is_not_made_active_again(
    coord: Harness,
) -> None:
    client = coord.client()
    miner = await coord.stream_miner("miner-00")
    job = await client.submit({"n": 1})
    a = await miner.next("assignment")
    miner.result(a.job.job_id, a.attempt)
    assert (await miner.next("result_ack")).accepted
    bundle = await client.bundle(job.job_id)
    await coord.stop()
    store = open_store(f"sqlite:///{coord.db_path}")
    await store.open()
    try:
        await rotate(store, "coordinator")  # the operator rotates the receipt key, and restarts
    finally:
        await store.close()
    with pytest.raises(
        SettingsError, match=f"configured coordinator key {Signer(SEED_A).key_id} was retired"
    ):
        await coord.start()
    del coord.overrides["receipt_signing_key_hex"]  # as the error says: the setting removed
    await coord.start()
    client = coord.client()
    keys = KeySet.load(await client.signing_keys())
    verify_bundle(bundle, keys, Policy())  # signed while the key was active: it still verifies


@slow_leases
async def test_a_receipt_key_another_miner_has_is_refused(coord: Harness) -> None:
    """Keys are stored by id alone, and a public key is public: miner-02 naming miner-01's key, then moving to
    a key of its own, retired miner-01's row, and miner-01's receipts from then on failed offline verification.
    (Review round 12, helper-34.) The coordinator's own key is refused likewise."""
    client = coord.client()
    key = Signer.generate()
    owner = KeyedMiner(coord, key)
    await owner.hello()
    for taken in (key.public_key, coord.coordinator.issuer.keys.coordinator.public_key):
        thief = KeyedMiner(coord, Signer.generate(), name="miner-02")
        thief.signer.public_key = taken  # (its hello names a key it does not hold)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await thief.hello()
        expect_error(details_of(refused.value), grpc.StatusCode.INVALID_ARGUMENT, "RECEIPT_KEY_IN_USE")
    job = await client.submit({"n": 1})
    assert (await owner.complete_next({"n": 1})).accepted
    verify_bundle(await client.bundle(job.job_id), KeySet.load(await client.signing_keys()),
                  Policy(frozenset({"coordinator", "miner"})))  # fmt: skip
