"""A half-open connection: the miner's side goes silent without closing (its host lost power, a NAT dropped
the mapping), so no FIN or RST ever arrives. HTTP/2 keepalive finds it: the coordinator's ping goes
unanswered, the connection is closed, the stream ends and the miner's jobs wait out the reconnect grace
before going back to the queue.

The other way round, a miner whose coordinator went silent finds out the same way and reconnects.

The application heartbeat is set far longer than the tests here, so only keepalive can end a session.
Between miner and coordinator sits a TCP proxy that, on request, stops forwarding in both directions while
keeping both sockets open: exactly what a dead peer looks like from the coordinator's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aitbc.channel import open_channel
from aitbc.client import Client
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import Miner, Outcome, probe_capabilities
from coord_support import CLIENT_KEYS, MINER_NAMES, eventually, make_settings, miner_key

from coordinator.config import Settings
from coordinator.server import Coordinator, start
from tests.tcp_relay import Link, Relay


class BlackholeProxy(Relay):
    """Relays TCP to the coordinator until `blackhole()`; then swallows every byte both ways, on every
    connection (later ones too), and never closes a socket."""

    silent = False

    def __init__(self, upstream_port: int) -> None:
        super().__init__("127.0.0.1", upstream_port)

    def blackhole(self) -> int:
        self.silent = True
        return super().blackhole()

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        return b"" if self.silent else data


async def hold(job: job_pb2.Job) -> Outcome:
    await asyncio.Event().wait()  # runs until cancelled
    return Outcome(b"never")


@contextlib.asynccontextmanager
async def miner_behind_proxy(
    settings: Settings, name: str, **channel_options: float
) -> AsyncIterator[tuple[Coordinator, BlackholeProxy]]:
    """A real coordinator, and a real SDK miner (one slot, jobs that never end) reaching it via the proxy."""
    coordinator = await start(settings)
    proxy = BlackholeProxy(coordinator.port)
    address = f"127.0.0.1:{await proxy.start()}"
    channel = open_channel(address, own_connection=True, **channel_options)
    miner = Miner(address, miner_key(name), runner=hold, capabilities=probe_capabilities(slots=1),
                  channel=channel, backoff_base_s=30)  # fmt: skip
    running = asyncio.create_task(miner.run())
    try:
        await eventually(lambda: name in coordinator.scheduler.by_miner, what="the miner connected")
        yield coordinator, proxy
    finally:
        miner.stop()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
        await proxy.close()
        await channel.close()
        await coordinator.stop(0.1)


async def test_a_silent_miner_is_found_by_keepalive_and_its_jobs_requeued(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "c.db", keepalive_time_seconds=0.5, keepalive_timeout_seconds=1.0,
        heartbeat_interval_seconds=30, heartbeat_timeout_seconds=120, lease_seconds=120,
        reconnect_grace_seconds=1.0,
    )  # fmt: skip
    name = MINER_NAMES[0]
    async with miner_behind_proxy(settings, name) as (coordinator, proxy):
        scheduler = coordinator.scheduler
        async with Client(f"127.0.0.1:{coordinator.port}", CLIENT_KEYS["alice"]) as client:
            job = await client.submit({"task": "hold"})
            await eventually(
                lambda: job.job_id in scheduler.by_miner[name].held, what="the job with the miner"
            )

            proxy.blackhole()
            silent_at = time.monotonic()
            await eventually(lambda: name not in scheduler.by_miner, within=6, what="the session closed")
            found_after = time.monotonic() - silent_at
            # keepalive (0.5 s + 1 s), not the application heartbeat (120 s), ended it
            assert found_after < 8, found_after

            async def requeued() -> bool:
                state = (await client.get(job.job_id)).state
                return state == job_pb2.JOB_STATE_QUEUED

            await eventually(requeued, within=10, what="the job back in the queue after the grace period")


async def test_a_miner_finds_a_silent_coordinator_by_keepalive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    settings = make_settings(tmp_path / "c.db", heartbeat_interval_seconds=30, heartbeat_timeout_seconds=120,
                             lease_seconds=120)  # fmt: skip
    # the shortest keepalive the server permits (its minimum interval is 5 s), and a short timeout
    async with miner_behind_proxy(settings, MINER_NAMES[1], keepalive_s=5.5, keepalive_timeout_s=1) as (
        _,
        proxy,
    ):
        proxy.blackhole()
        silent_at = time.monotonic()

        def session_ended() -> bool:
            return any("miner session ended (UNAVAILABLE)" in r.getMessage() for r in caplog.records)

        await eventually(session_ended, within=15, what="the miner giving up on its silent stream")
        assert time.monotonic() - silent_at < 12  # 5.5 s + 1 s (+ scheduling), not the OS's TCP timeout
