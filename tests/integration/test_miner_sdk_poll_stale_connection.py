"""A poll miner whose connection still answers gRPC's keepalive pings but no longer answers any call (a coordinator
that took the connection and never serves it, a middlebox that passes only HTTP/2 control frames): keepalive finds
nothing wrong, so the miner itself must. Its calls time out with nothing at all answered on the session for a
heartbeat's deadline: the connection is stale, replaced by a new one, and the session goes on over that (the results
awaiting their acks sent again). A drain begun on the stale connection ends with every ack in. A registration that
never gets through (unanswered, and a probe on its connection unanswered too) is made again on a new connection.

Staged with tests/integration/muting_relay.py, muted down only: the calls reach the coordinator (the result is
stored) and every frame of their answers is dropped, while the coordinator's connection-level frames (stream 0:
SETTINGS, PING acks, GOAWAY) pass."""

from __future__ import annotations

import asyncio

import pytest
from aitbc import miner_poll
from coord_support import COMPLETED, Harness, eventually, gated_sdk_miner
from muting_relay import back_on_a_fresh_connection, probes_before_a_late_answer, relayed

from tests.tcp_relay import DOWN


async def test_a_connection_answering_pings_but_no_call_is_replaced_and_the_drain_ends_acked(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    relay, channel = await relayed(coord.coordinator.port)
    try:
        # (drain_ack_timeout_s: how long the drain waits for the last ack before giving up on it; the ack is asked
        # for here, not a speed: given up on, the result stays unacked and the job's receipt is never confirmed)
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", transport="poll", channel=channel,
                                        poll_wait_s=1.0, backoff_max_s=1.0, drain_ack_timeout_s=30.0)  # fmt: skip
        task = coord.run_miner(miner)
        job = await alice.submit({"n": 1})
        await eventually(lambda: miner.running, what="the job running on the poll miner")

        assert relay.mute(DOWN) == 1  # the miner's one connection
        runner.gate.set()  # the result reaches the coordinator; its answer does not come back
        await eventually(lambda: coord.db.job_state(job.job_id) == COMPLETED, what="the result stored")
        assert job.job_id in miner.unacked
        miner.drain()

        await asyncio.wait_for(task, 60)  # (a guard against a hang, not a speed)
        assert not miner.unacked and miner.acked == 1, f"drained with results unacked: {list(miner.unacked)}"
        assert relay.accepted >= 2, "the ack came back without a new connection"
        assert relay.muted(), "keepalive ended the muted connection: the staging did not hold"
        assert runner.runs == [1] and coord.db.count("receipts", job.job_id) == 1
    finally:
        await relay.close()
        await channel.close()


async def test_a_registration_that_never_gets_through_is_made_again_on_a_fresh_connection_which_serves(
    coord: Harness,
) -> None:
    # the miner's first connection: its RegisterMiner's frames go nowhere, either way
    relay, channel = await relayed(coord.coordinator.port, mute_next=1)
    try:
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", transport="poll", channel=channel,
                                        poll_wait_s=1.0, backoff_max_s=1.0, welcome_timeout_s=3.0)  # fmt: skip
        # (the miner probes after 3 s unanswered, for 3 s; the registration's own deadline, 30 s, would only have it
        # made again on the muted connection)
        await back_on_a_fresh_connection(
            coord, relay, channel, miner, runner, "a registration on a fresh connection"
        )
    finally:
        await relay.close()
        await channel.close()


async def test_a_registration_slower_than_a_heartbeat_deadline_costs_no_probe(coord: Harness) -> None:
    # the registration waits welcome_timeout_s (20 s) before its connection is probed, as a stream's hello
    assert await probes_before_a_late_answer(coord, "the late registration's answer", transport="poll") == 0


async def test_a_registration_timing_out_before_its_probe_ends_is_made_again_on_a_fresh_connection(
    coord: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The defaults' proportions (welcome_timeout_s 20 s, then a probe of 20 s, past the registration's own 30 s
    # deadline), scaled down: 3 s, then 3 s, past a 4 s deadline. The registration times out while the probe is in
    # flight; the probe unanswered, the connection is stale all the same (made again on it, it would time out again).
    monkeypatch.setattr(miner_poll, "CALL_TIMEOUT_S", 4.0)
    # the miner's first connection: its RegisterMiner's frames go nowhere, either way
    relay, channel = await relayed(coord.coordinator.port, mute_next=1)
    try:
        miner, _ = gated_sdk_miner(f"127.0.0.1:{relay.port}", transport="poll", channel=channel,
                                   poll_wait_s=1.0, backoff_max_s=1.0, welcome_timeout_s=3.0)  # fmt: skip
        # (on the muted connection the registration would time out for ever)
        await back_on_a_fresh_connection(
            coord, relay, channel, miner, what="a registration on a fresh connection"
        )
    finally:
        await relay.close()
        await channel.close()
