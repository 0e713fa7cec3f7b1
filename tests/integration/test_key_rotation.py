"""Replacing an identity's API key (a leaked key rotated: same name, new key) and reloading ends what the old
key opened, as removing the key does. (Review round 10, helper-32: the keyring swapped the key of the
identity's state in place, so a Connect stream opened with the leaked key went on receiving assignments, and
their payloads, after the operator had rotated it.)"""

from __future__ import annotations

import grpc
import pytest
from coord_support import Harness, capabilities, details_of, eventually, expect_error, miner_key, mpb

from coordinator.config import ApiKeyEntry, SettingsError, validate

NEW_KEY = "brand-new-miner-00-key"


def with_miner_key(coord: Harness, name: str, key: str):  # type: ignore[no-untyped-def]
    s = coord.settings
    return s.replace(miner_api_keys=tuple(ApiKeyEntry(name, "miner", key) if e.name == name else e
                                          for e in s.miner_api_keys))  # fmt: skip


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_a_stream_opened_with_a_replaced_key_ends_and_gets_no_more_work(coord: Harness) -> None:
    leaked = await coord.stream_miner("miner-00")
    keep = await coord.stream_miner("miner-01")  # another identity, its key unchanged
    coord.coordinator.reload_keys(with_miner_key(coord, "miner-00", NEW_KEY))
    await leaked.wait_closed(within=3.0)  # at its next message (a heartbeat every 0.2 s)
    assert leaked.end_status == grpc.StatusCode.UNAUTHENTICATED
    assert not keep.closed.is_set()
    job = await coord.client().submit({"secret": "payload"})
    got = await keep.next("assignment")
    assert got.job.job_id == job.job_id
    assert not any(kind == "assignments" and any(a.job.job_id == job.job_id for a in body.assignments)
                   for kind, body in leaked.log)  # fmt: skip


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_the_new_key_works_and_the_old_one_is_refused(coord: Harness) -> None:
    coord.coordinator.reload_keys(with_miner_key(coord, "miner-00", NEW_KEY))
    stub = coord.miner_stub()
    hello = mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=capabilities(slots=1)))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RegisterMiner(hello, metadata=(("x-api-key", miner_key("miner-00")),))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    welcome = (await stub.RegisterMiner(hello, metadata=(("x-api-key", NEW_KEY),))).welcome
    assert welcome.session_id


async def test_two_keys_for_one_name_are_refused_with_a_clear_error(coord: Harness) -> None:
    s = coord.settings
    doubled = s.replace(
        miner_api_keys=(*s.miner_api_keys, ApiKeyEntry("miner-00", "miner", "a-second-key-0001"))
    )
    with pytest.raises(SettingsError, match="'miner-00' has two keys; a name has one"):
        validate(doubled)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0, max_streams_per_identity=1)
async def test_the_streams_of_a_replaced_key_still_count_for_its_name(coord: Harness) -> None:
    """The name's limits count what its old key still holds open: a replaced key's stream runs until its next
    message, and the new key started from zero meanwhile (twice the stream limit; review round 12, helper-34)."""
    old = await coord.stream_miner("miner-00", heartbeat=False)  # open, and silent: it does not end yet
    coord.coordinator.reload_keys(with_miner_key(coord, "miner-00", NEW_KEY))
    call = coord.miner_stub().Connect(metadata=(("x-api-key", NEW_KEY),))
    await call.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities(slots=1))))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    expect_error(details_of(refused.value), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
    await old.kill()
    await eventually(lambda: coord.coordinator.keyring.state("miner", "miner-00").usage.streams == 0,
                     what="the old key's stream released")  # fmt: skip
    fresh = coord.miner_stub().Connect(metadata=(("x-api-key", NEW_KEY),))
    await fresh.write(mpb.ConnectRequest(hello=mpb.Hello(capabilities=capabilities(slots=1))))
    assert (await fresh.read()).WhichOneof("message") == "welcome"
    fresh.cancel()
