"""Retries of the Python SDK: a rate-limited watch resume, and the CLI after a cancelled last try.

The CLI after a submit's last try ended CANCELLED (helper h2): a stopping coordinator cancels the calls still
in flight at the end of its grace, a submit among them possibly stored already; the SDK makes such a submit
again while its deadline allows, and when none is left the CLI names the key to submit again with, as it does
after UNAVAILABLE or DEADLINE_EXCEEDED (it said nothing: a plain resubmit could make a second job)."""

from __future__ import annotations

import argparse
import asyncio

import grpc
import pytest
from aitbc.channel import open_channel
from aitbc.cli import _call_failed
from aitbc.client import Client, RetryPolicy
from coord_support import CLIENT_KEYS, COMPLETED, Harness, eventually

from tests.tcp_relay import Relay

FAST_RETRY = RetryPolicy(attempts=100, backoff_s=0.05, backoff_max_s=0.2)


def test_the_cli_names_the_key_of_a_submit_whose_last_try_was_cancelled_by_the_coordinator() -> None:
    args = argparse.Namespace(command="submit", idempotency_key="auto-0190-y")
    cut = grpc.aio.AioRpcError(
        grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Cancelled"
    )
    assert _call_failed(cut, args) == (
        "CANCELLED: Cancelled (the job may have been stored: submit again with --idempotency-key auto-0190-y"
        " to get it, not a second one)"
    )


@pytest.mark.coordinator(rate_limits="read=0.2/s:burst=2")
async def test_a_watch_resume_refused_by_a_rate_limit_waits_its_retry_info_and_misses_nothing(
    coord: Harness,
) -> None:
    """After an outage every watch of an application resumes at once, and its key's read budget may refuse
    some (RESOURCE_EXHAUSTED, RetryInfo: when a token is back). The watch, made again by the SDK itself and
    without a deadline of its own, waits that out as it waits out the cut (it raised RESOURCE_EXHAUSTED, and
    wait() with it)."""
    relay = Relay("127.0.0.1", coord.coordinator.port)  # type: ignore[union-attr]
    await relay.start()
    try:
        miner = await coord.stream_miner("miner-00")
        job = await coord.client().submit({"x": 1})
        a = await miner.next("assignment")
        channel = open_channel(f"127.0.0.1:{relay.port}")
        coord.channels.append(channel)
        client = Client(f"127.0.0.1:{relay.port}", CLIENT_KEYS["alice"], channel=channel, retry=FAST_RETRY)
        seen: list[int] = []
        first = asyncio.Event()

        async def watch() -> None:
            async for update in client.watch(job.job_id):
                seen.append(update.sequence)
                first.set()

        watching = asyncio.create_task(watch())  # the first of the key's two read tokens
        await asyncio.wait_for(first.wait(), 5)
        await client.get(job.job_id)  # the second: none left for 5 s
        relay.cut("rst")
        miner.accept(a)
        miner.result(a.job.job_id, a.attempt)
        await eventually(lambda: coord.db.job_state(job.job_id) == COMPLETED, what="COMPLETED")
        await asyncio.wait_for(watching, 30)
        assert seen == [2, 3, 4], seen
    finally:
        await relay.close()
