"""A poll miner whose connection still answers gRPC's keepalive pings but no longer answers any call (a coordinator
that took the connection and never serves it, a middlebox that passes only HTTP/2 control frames): keepalive finds
nothing wrong, so the miner itself must. Its calls time out with nothing at all answered on the session for a
heartbeat's deadline: the connection is stale, replaced by a new one, and the session goes on over that (the results
awaiting their acks sent again). A drain begun on the stale connection ends with every ack in.

The relay below stages it deterministically: on a muted link it passes the coordinator's connection-level frames
(stream 0: SETTINGS, PING acks, GOAWAY) and drops every frame of a stream (the calls' answers)."""

from __future__ import annotations

import asyncio

from aitbc.channel import open_channel
from coord_support import COMPLETED, Harness, eventually, gated_sdk_miner

from tests.tcp_relay import DOWN, Link, Relay

FRAME_HEADER = 9  # HTTP/2: length (3 bytes), type, flags, stream id (4 bytes)


class MutingRelay(Relay):
    """mute(): the links so far keep the connection alive (pings answered) but pass no call's answer, for good."""

    def mute(self) -> int:
        for link in self.links:
            link.notes["muted"] = True
        return len(self.links)

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction != DOWN:
            return data
        # frames are cut at chunk boundaries: keep the tail of an incomplete one for the next chunk
        buffer = link.notes.get("buffer", b"") + data
        passed, at = bytearray(), 0
        while len(buffer) - at >= FRAME_HEADER:
            length = int.from_bytes(buffer[at : at + 3], "big")
            end = at + FRAME_HEADER + length
            if end > len(buffer):
                break
            stream = int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF
            if stream == 0 or not link.notes.get("muted"):
                passed += buffer[at:end]
            at = end
        link.notes["buffer"] = buffer[at:]
        return bytes(passed)


async def test_a_connection_answering_pings_but_no_call_is_replaced_and_the_drain_ends_acked(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    relay = MutingRelay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    # the shortest keepalive the coordinator permits: were it to end the muted connection, it would do so in 6.5 s
    channel = open_channel(
        f"127.0.0.1:{relay.port}", own_connection=True, keepalive_s=5.5, keepalive_timeout_s=1.0
    )
    try:
        # (drain_ack_timeout_s: how long the drain waits for the last ack before giving up on it; the ack is asked
        # for here, not a speed: given up on, the result stays unacked and the job's receipt is never confirmed)
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", transport="poll", channel=channel,
                                        poll_wait_s=1.0, backoff_max_s=1.0, drain_ack_timeout_s=30.0)  # fmt: skip
        task = coord.run_miner(miner)
        job = await alice.submit({"n": 1})
        await eventually(lambda: miner.running, what="the job running on the poll miner")

        assert relay.mute() == 1  # the miner's one connection
        runner.gate.set()  # the result reaches the coordinator; its answer does not come back
        await eventually(lambda: coord.db.job_state(job.job_id) == COMPLETED, what="the result stored")
        assert job.job_id in miner.unacked
        miner.drain()

        await asyncio.wait_for(task, 60)  # (a guard against a hang, not a speed)
        assert not miner.unacked and miner.acked == 1, f"drained with results unacked: {list(miner.unacked)}"
        assert relay.accepted >= 2, "the ack came back without a new connection"
        muted = [link for link in relay.links if link.notes.get("muted")]
        assert muted, "keepalive ended the muted connection: the staging did not hold"
        assert runner.runs == [1] and coord.db.count("receipts", job.job_id) == 1
    finally:
        await relay.close()
        await channel.close()
