"""A stream miner whose connection still answers gRPC's keepalive pings but carries no call (a coordinator that took
the connection and never serves it, a middlebox passing only HTTP/2 control frames): keepalive finds nothing wrong,
and the coordinator answers no heartbeat on the stream, so the miner itself must. Once the stream has been silent for
a heartbeat's deadline (the welcome's interval, 5 s at least) and a probe call on its connection goes unanswered as
long, the session ends CONNECTION_STALE and the miner goes on over a new connection: its hello's welcome, its
results' acks come again. A channel the caller passed is left open.

Staged with tests/integration/muting_relay.py: a muted link passes stream 0 (pings and their acks) both ways and
drops every frame of every call."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aitbc.miner import IDLE_QUIET_LEAST_S, QUIET_LEAST_S
from coord_support import COMPLETED, Harness, eventually, gated_sdk_miner
from muting_relay import ProbeCounter, back_on_a_fresh_connection, probes_before_a_late_answer, relayed

# the shortest keepalive the coordinator permits: were it to end a muted connection, it would do so in 6.5 s
GUARD_S = 60.0  # a guard against a hang, not a speed (the miner probes after 5 s of silence, for 5 s)


async def test_a_hello_that_never_gets_through_ends_the_stream_and_a_fresh_connection_is_welcomed(
    coord: Harness,
) -> None:
    # the miner's first connection: its Connect call's frames go nowhere, either way
    relay, channel = await relayed(coord.coordinator.port, mute_next=1)
    try:
        miner, runner = gated_sdk_miner(
            f"127.0.0.1:{relay.port}", channel=channel, backoff_max_s=1.0, welcome_timeout_s=3.0
        )
        await back_on_a_fresh_connection(coord, relay, channel, miner, runner)
    finally:
        await relay.close()
        await channel.close()


async def test_a_stream_muted_past_the_heartbeat_timeout_is_replaced_and_its_job_completes_once(
    coord: Harness,
) -> None:
    # (the coordinator's heartbeat timeout is 1 s here: it takes the silent stream's job back before the miner knows)
    alice = coord.client("alice")
    relay, channel = await relayed(coord.coordinator.port)
    try:
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", channel=channel, backoff_max_s=1.0)
        coord.run_miner(miner)
        job = await alice.submit({"n": 1})
        await eventually(lambda: miner.running, what="the job running on the stream miner")

        assert relay.mute() == 1
        runner.gate.set()  # its result goes nowhere; nor does the coordinator's end of the session
        await eventually(
            lambda: miner.connects >= 2, within=GUARD_S, what="a new stream on a fresh connection"
        )
        done = await coord.finished(alice, job.job_id)
        assert done.state == COMPLETED and coord.db.count("receipts", job.job_id) == 1
        await eventually(lambda: not miner.unacked, what="no result left unacked")
        assert relay.muted(), "keepalive ended the muted connection: the staging did not hold"
        # the coordinator requeued the job of the silent stream: it ran again, on the new stream (attempt 2)
        assert runner.runs == [1, 2] and done.attempt == 2
    finally:
        await relay.close()
        await channel.close()


@pytest.mark.coordinator(heartbeat_interval_seconds=1.0, heartbeat_timeout_seconds=60.0, lease_seconds=60.0)
async def test_a_result_sent_on_a_muted_stream_is_sent_again_on_a_fresh_connection_and_the_drain_ends_acked(
    coord: Harness,
) -> None:
    # the coordinator waits longer than the miner takes to see the stream is stale: the new session keeps the job,
    # and the result that went nowhere lands when sent again
    alice = coord.client("alice")
    relay, channel = await relayed(coord.coordinator.port)
    try:
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", channel=channel, backoff_max_s=1.0)
        task = coord.run_miner(miner)
        job = await alice.submit({"n": 1})
        await eventually(lambda: miner.running, what="the job running on the stream miner")

        assert relay.mute() == 1
        runner.gate.set()
        await eventually(lambda: job.job_id in miner.unacked, what="the result sent")
        miner.drain()  # (drain_ack_timeout_s, 60 s: given up on, the result would stay unacked)

        await asyncio.wait_for(task, GUARD_S + 60)
        assert not miner.unacked and miner.acked == 1, f"drained with results unacked: {list(miner.unacked)}"
        assert miner.connects == 2 and relay.accepted == 2 and relay.muted()
        done = await coord.finished(alice, job.job_id)
        assert (done.state, done.attempt, runner.runs) == (COMPLETED, 1, [1])
        assert coord.db.count("receipts", job.job_id) == 1
    finally:
        await relay.close()
        await channel.close()


async def test_an_idle_miner_on_a_quiet_stream_does_not_probe_every_heartbeat_deadline(
    coord: Harness,
) -> None:
    # A fleet of idle miners probing at each heartbeat deadline (5 s here, 10 s by default) would be thousands of
    # calls a second; one awaiting nothing probes only after IDLE_QUIET_LEAST_S (120 s) of silence.
    counter = ProbeCounter()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{coord.coordinator.port}", interceptors=[counter],
        options=[("grpc.use_local_subchannel_pool", 1)],
    )  # fmt: skip
    try:
        miner, _ = gated_sdk_miner(f"127.0.0.1:{coord.coordinator.port}", channel=channel)
        coord.run_miner(miner)
        await eventually(lambda: miner.connects, what="the miner welcomed")
        await asyncio.sleep(QUIET_LEAST_S + 2.5)  # past the deadline a miner awaiting an answer probes at
        assert counter.probes == 0 and miner.connects == 1
    finally:
        await channel.close()


async def test_a_miner_awaiting_an_ack_probes_its_quiet_stream_and_one_awaiting_nothing_does_not(
    coord: Harness,
) -> None:
    """The rule itself: soon while an answer is awaited (a welcome, an ack), rarely while none is."""
    miner, _ = gated_sdk_miner(f"127.0.0.1:{coord.coordinator.port}")
    assert miner._quiet_limit_s() == miner._quiet_s  # no welcome yet
    miner._welcomed = True
    assert miner._quiet_limit_s() >= IDLE_QUIET_LEAST_S
    miner.unacked["job-1"] = (1, None)
    assert miner._quiet_limit_s() == miner._quiet_s


async def test_a_welcome_slower_than_a_heartbeat_deadline_costs_no_probe(coord: Harness) -> None:
    # (an early version probed each miner still awaiting its welcome after 5 s: +52 MiB of coordinator memory in the
    # bench's 10,000-miner reconnect); the hello waits welcome_timeout_s (20 s)
    assert await probes_before_a_late_answer(coord, "the late welcome") == 0
