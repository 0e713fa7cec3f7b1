"""Request signing: good signatures from the SDK (unary, server stream, the miner's Connect stream), and a
tampered body, a stale or future timestamp, a replayed nonce, a signature for another method, a missing
signature and the wrong secret: each refused, and none changes anything."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from aitbc.client import Client
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.miner import Miner, probe_capabilities
from aitbc.signing import SigningChannel, signing_metadata
from sec_support import (
    ALICE,
    BOB,
    M1,
    C,
    Store,
    address,
    eventually,
    expect,
    failure_of,
    md,
    raw_unary,
    serving,
)

from coordinator.security.limits import ReplayGuard

GLOBAL = "global-signing-secret-0001"  # HMAC_SECRET: every key without its own secret
ALICE_SECRET = "alice-own-signing-secret"  # alice's per-key secret
SUBMIT = "/aitbc.coordinator.v1.JobService/SubmitJob"
GET_USAGE = "/aitbc.coordinator.v1.JobService/GetUsage"


def signed_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    return serving(tmp_path, hmac_secret=GLOBAL, hmac={"alice": ALICE_SECRET})


async def status_of(awaitable) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        await awaitable
        return C.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def test_the_sdk_signs_unary_and_streaming_calls(tmp_path: Path) -> None:
    async with signed_server(tmp_path) as coord:
        async with Client(address(coord), ALICE, hmac_secret=ALICE_SECRET) as alice:
            job = await alice.submit({"prompt": "signed"})
            assert (await alice.get(job.job_id)).job_id == job.job_id
            updates = alice.watch(job.job_id)  # a server stream: its request is signed with its body
            first = await anext(updates)
            assert first.job.job_id == job.job_id
            await updates.aclose()
            # the miner runtime signs its Connect stream (the call; messages ride on it)
            miner = Miner(address(coord), M1, capabilities=probe_capabilities(2), hmac_secret=GLOBAL)
            task = asyncio.create_task(miner.run())
            try:
                done = await asyncio.wait_for(alice.wait(job.job_id), 10)
                assert done.state == 4  # COMPLETED
            finally:
                miner.stop()
                await asyncio.wait_for(task, 5)
        async with Client(address(coord), BOB, hmac_secret=GLOBAL) as bob:  # bob has no own secret
            await bob.list()


async def test_unsigned_wrong_secret_and_other_keys_secret_are_refused(tmp_path: Path) -> None:
    async with signed_server(tmp_path) as coord:
        store = Store(coord)
        for key, secret, reason in ((ALICE, None, "SIGNATURE_REQUIRED"), (ALICE, GLOBAL, "BAD_SIGNATURE"),
                                    (BOB, ALICE_SECRET, "BAD_SIGNATURE"), (BOB, "x" * 32, "BAD_SIGNATURE")):  # fmt: skip
            async with Client(address(coord), key, hmac_secret=secret) as c:
                try:
                    await c.submit({"n": 1})
                    raise AssertionError(f"{key} signed with {secret} was accepted")
                except grpc.aio.AioRpcError as exc:
                    expect(failure_of(exc), C.UNAUTHENTICATED, reason)
        # an unsigned miner stream is refused too
        miner = Miner(address(coord), M1, capabilities=probe_capabilities(1))
        try:
            await asyncio.wait_for(miner.run(), 5)
            raise AssertionError("an unsigned miner stream was accepted")
        except grpc.aio.AioRpcError as exc:
            expect(failure_of(exc), C.UNAUTHENTICATED, "SIGNATURE_REQUIRED")
        assert store.scalar("SELECT COUNT(*) FROM jobs") == 0


async def test_tampered_body_stale_timestamp_replayed_nonce_and_other_method(tmp_path: Path) -> None:
    async with signed_server(tmp_path) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        store = Store(coord)
        submit = raw_unary(ch, SUBMIT)
        body = jpb.SubmitJobRequest(payload_bytes=b"pay 1 coin").SerializeToString()
        tampered = jpb.SubmitJobRequest(payload_bytes=b"pay 9 coin").SerializeToString()

        async def send(payload: bytes, signature_md, path_call=submit) -> grpc.StatusCode | str:  # type: ignore[no-untyped-def]
            try:
                await path_call(payload, metadata=md(ALICE, *signature_md), timeout=3)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                f = failure_of(exc)
                assert f.code == C.UNAUTHENTICATED, f
                return f.reason

        # tampered body: signed one message, sent another
        assert await send(tampered, signing_metadata(ALICE_SECRET, SUBMIT, body)) == "BAD_SIGNATURE"
        # a signature made for another method
        assert await send(body, signing_metadata(ALICE_SECRET, GET_USAGE, body)) == "BAD_SIGNATURE"
        # a forged signature, a missing part, malformed timestamp or nonce
        good = signing_metadata(ALICE_SECRET, SUBMIT, body)
        forged = (good[0], good[1], (good[2][0], "0" * 64))
        assert await send(body, forged) == "BAD_SIGNATURE"
        assert await send(body, good[:2]) == "SIGNATURE_REQUIRED"
        assert (
            await send(body, signing_metadata(ALICE_SECRET, SUBMIT, body, nonce="short")) == "BAD_SIGNATURE"
        )
        # stale and future timestamps, even correctly signed
        for skew in (-301, 301, -3600):
            stale = signing_metadata(ALICE_SECRET, SUBMIT, body, timestamp=time.time() + skew)
            assert await send(body, stale) == "STALE_TIMESTAMP"
        assert store.scalar("SELECT COUNT(*) FROM jobs") == 0  # none of it did anything
        # a good signature works once; the same request replayed is refused
        once = signing_metadata(ALICE_SECRET, SUBMIT, body)
        assert await send(body, once) == "OK"
        assert await send(body, once) == "REPLAYED_NONCE"
        # the same nonce under a fresh timestamp and signature is still a replay
        nonce = dict(once)["x-aitbc-nonce"]
        assert await send(body, signing_metadata(ALICE_SECRET, SUBMIT, body, nonce=nonce)) == "REPLAYED_NONCE"
        assert store.scalar("SELECT COUNT(*) FROM jobs") == 1
        # signatures are checked before the rate limit and the body is signed as received: the SDK's
        # SigningChannel sends exactly the bytes it signed
        signed = SigningChannel(ch, ALICE_SECRET)
        assert await send(body, (), signed.unary_unary(SUBMIT)) == "OK"
        await eventually(lambda: store.scalar("SELECT COUNT(*) FROM jobs") == 2, what="the second job")


def test_replay_guard_memory_is_bounded_and_forgotten_nonces_stay_refused() -> None:
    guard = ReplayGuard(window_s=300, capacity=100)
    now = 1_000_000.0
    for i in range(1000):
        assert guard.check(f"nonce-{i:06d}", now - 200 + i * 0.1, now) == ""
        assert len(guard.seen) <= 100 and len(guard.by_time) <= 100
    # nonce-000000 was forgotten to make room; its timestamp is below the floor now: still refused
    assert guard.check("nonce-000000", now - 200, now) == "STALE_TIMESTAMP"
    assert guard.check("nonce-000999", now - 200 + 99.9, now) == "REPLAYED_NONCE"
    assert guard.check("fresh-nonce-1", now, now) == ""
    # entries past the window are dropped as time goes by
    later = now + 1000
    assert guard.check("fresh-nonce-2", later, later) == ""
    assert len(guard.seen) == 1
