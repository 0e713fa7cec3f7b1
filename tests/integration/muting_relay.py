"""A relay (tests.tcp_relay) that mutes HTTP/2 connections: a muted link passes connection-level frames (stream 0:
SETTINGS, PING and its ack, WINDOW_UPDATE, GOAWAY) both ways and drops every frame of a stream (every call's
headers, messages and end) in the directions muted. gRPC's keepalive pings are answered, so keepalive finds nothing
wrong, but no call goes through: a coordinator that took the connection and never serves it, a middlebox passing
only control frames. Muted down only (`mute(DOWN)`), the calls reach the coordinator and their answers go nowhere.

Plaintext only (it reads the frames). A link is muted both ways from its first byte (`mute_next`: the next N
connections) or from the moment `mute()` is called (the links so far); a muted link stays muted (its HPACK state is
lost for good).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from aitbc.channel import open_channel
from aitbc.miner import CONNECTION_PROBE_METHOD, QUIET_LEAST_S
from coord_support import COMPLETED, eventually, gated_sdk_miner

from tests.tcp_relay import DOWN, UP, Link, Relay

FRAME_HEADER = 9  # HTTP/2: length (3 bytes), type, flags, stream id (4 bytes)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the client's connection preface, before its first frame
BOTH = frozenset({UP, DOWN})


class MutingRelay(Relay):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.mute_next = 0  # connections still to be muted (both ways) from their first byte

    def mute(self, *directions: str) -> int:
        """The links so far pass no call's frames from now on, in the directions given (by default both); how
        many."""
        muting = frozenset(directions) or BOTH
        for link in self.links:
            link.notes["muted"] = self._muted_ways(link) | muting
        return len(self.links)

    def muted(self) -> list[Link]:
        return [link for link in self.links if self._muted_ways(link)]

    @staticmethod
    def _muted_ways(link: Link) -> frozenset[str]:
        return link.notes.get("muted", frozenset())  # type: ignore[return-value]

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if "muted" not in link.notes:  # (its first chunk, whichever way)
            link.notes["muted"] = BOTH if self.mute_next > 0 else frozenset()
            self.mute_next = max(0, self.mute_next - 1)
        buffer = link.notes.get(direction, b"") + data
        passed, at = bytearray(), 0
        if direction == UP and not link.notes.get("preface"):
            if len(buffer) < len(PREFACE):
                link.notes[direction] = buffer
                return b""
            passed += buffer[: len(PREFACE)]
            at = len(PREFACE)
            link.notes["preface"] = True
        # frames are cut at chunk boundaries: the tail of an incomplete one waits for the next chunk
        while len(buffer) - at >= FRAME_HEADER:
            end = at + FRAME_HEADER + int.from_bytes(buffer[at : at + 3], "big")
            if end > len(buffer):
                break
            stream = int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF
            if stream == 0 or direction not in self._muted_ways(link):
                passed += buffer[at:end]
            at = end
        link.notes[direction] = buffer[at:]
        return bytes(passed)


# the shortest keepalive the coordinator permits: were it to end a muted connection, it would do so in 6.5 s
KEEPALIVE = {"keepalive_s": 5.5, "keepalive_timeout_s": 1.0}


async def relayed(port: int, mute_next: int = 0) -> tuple[MutingRelay, grpc.aio.Channel]:
    """A muting relay to the coordinator on port (its next mute_next connections muted from their first byte), and a
    channel of its own through it with that keepalive (the caller's channel a miner is given)."""
    relay = MutingRelay("127.0.0.1", port)
    relay.mute_next = mute_next
    await relay.start()
    return relay, open_channel(f"127.0.0.1:{relay.port}", own_connection=True, **KEEPALIVE)


async def back_on_a_fresh_connection(coord: Any, relay: MutingRelay, channel: grpc.aio.Channel, miner: Any,
                                     runner: Any = None, what: str = "a welcome on a fresh connection") -> None:  # fmt: skip
    """Run miner (through relay, on the caller's channel, its first connection muted) until it is back over a
    connection of its own: the muted one still up (keepalive did not end it: the staging held), the caller's channel
    left open. With runner (a GatedRunner), a job then completes on the fresh connection, once."""
    coord.run_miner(miner)
    await eventually(lambda: miner.connects, within=60.0, what=what)  # (a guard against a hang, not a speed)
    assert relay.accepted == 2 and relay.muted(), (
        "keepalive ended the muted connection: the staging did not hold"
    )
    assert channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN, "the caller's channel was closed"
    if runner is None:
        return
    alice = coord.client("alice")
    job = await alice.submit({"n": 1})
    runner.gate.set()
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED
    assert runner.runs == [1] and miner.acked == 1


async def probes_before_a_late_answer(coord: Any, what: str, **miner_options: Any) -> int:
    """The probes a gated SDK miner (miner_options: its transport...) makes while its opening's answer (a welcome, a
    registration's) is held back past the silence after which a miner awaiting an ack probes (QUIET_LEAST_S); then
    the answer let through, the miner is in on its first connection. In a reconnect storm answers come late (10,000
    miners: up to ~15 s here): a probe per waiting miner would only add to the load."""
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    counter = ProbeCounter()
    address = f"127.0.0.1:{relay.port}"
    channel = grpc.aio.insecure_channel(
        address, interceptors=[counter], options=[("grpc.use_local_subchannel_pool", 1)]
    )
    try:
        await asyncio.wait_for(channel.channel_ready(), 60)
        relay.stall(DOWN)  # the answer (and anything else the coordinator sends) held back
        miner, _ = gated_sdk_miner(address, channel=channel, **miner_options)
        coord.run_miner(miner)
        await asyncio.sleep(QUIET_LEAST_S + 2.5)
        relay.heal()
        await eventually(lambda: miner.connects, what=what)
        assert miner.connects == 1 and relay.accepted == 1
        return counter.probes
    finally:
        await relay.close()
        await channel.close()


class ProbeCounter(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the connection probes (aitbc.miner.CONNECTION_PROBE_METHOD) made on a channel."""

    def __init__(self) -> None:
        self.probes = 0

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        method = client_call_details.method
        if (method.decode() if isinstance(method, bytes) else method) == CONNECTION_PROBE_METHOD:
            self.probes += 1
        return await continuation(client_call_details, request)
