"""Health: NOT_SERVING (or not listening) until the store is open and the queues rebuilt; SERVING while up;
NOT_SERVING again as soon as shutdown begins."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import grpc
from aitbc.admin_cli import AdminClient
from aitbc.channel import open_channel
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ops_support import ADMIN_KEY, make_settings, running

from coordinator.server import SERVICE_NAMES, start

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _port_outside_the_ephemeral_range() -> int:
    """A free port the coordinator binds later. Outside the kernel's ephemeral range, which other processes take
    from (connections' local ports, binds to port 0: other tests' coordinators), so that none takes it meanwhile:
    the probe then talked to another coordinator, or to none, the start failing "in use"."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for port in random.sample(range(max(1024, low - 12_000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


async def _check(stub: health_pb2_grpc.HealthStub, service: str = "") -> int | str:
    try:
        return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)).status
    except grpc.aio.AioRpcError as exc:
        return exc.code().name


async def test_serving_only_once_the_queues_are_rebuilt(tmp_path: Path) -> None:
    # a store holding queued work (no miner ever came)
    async with running(tmp_path) as ops:
        client = ops.client()
        for batch in range(5):
            await client.submit_many([{"i": batch * 100 + i} for i in range(100)])
    port = _port_outside_the_ephemeral_range()
    settings = make_settings(tmp_path, app_port=port)
    channel = open_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    starting = asyncio.create_task(start(settings))
    seen: list[int | str] = []
    depth_when_serving = None
    try:
        while True:
            status = await _check(stub)
            seen.append(status)
            if status == SERVING:
                async with AdminClient(f"127.0.0.1:{port}", ADMIN_KEY) as admin:
                    stats = await admin.stats()
                depth_when_serving = stats.queue_depth
                break
            assert status in ("UNAVAILABLE", "DEADLINE_EXCEEDED", NOT_SERVING), status
            if starting.done():  # (failed: its error, not probes until the test's timeout)
                starting.result()
            await asyncio.sleep(0.002)
        await starting
        assert depth_when_serving == 500, "health said SERVING before the queues were rebuilt"
        assert seen[0] != SERVING  # the probe began before the coordinator could serve
        for name in ("", *SERVICE_NAMES):
            assert await _check(stub, name) == SERVING, name
    finally:
        # stopped whatever failed, once started (its store's threads would keep the test process alive)
        if not starting.done():
            starting.cancel()
        await asyncio.wait({starting})
        if not starting.cancelled() and starting.exception() is None:
            await starting.result().stop(grace=0.5)
        await channel.close()


async def test_not_serving_as_soon_as_shutdown_begins(tmp_path: Path) -> None:
    async with running(tmp_path) as ops:
        channel = open_channel(ops.address)
        stub = health_pb2_grpc.HealthStub(channel)
        watches = {
            name: stub.Watch(health_pb2.HealthCheckRequest(service=name)) for name in ("", *SERVICE_NAMES)
        }
        try:
            for call in watches.values():
                assert (await asyncio.wait_for(call.read(), 5)).status == SERVING
            stopping = asyncio.create_task(ops.coordinator.stop(grace=1.0))
            for name, call in watches.items():
                update = await asyncio.wait_for(call.read(), 5)
                assert update is not grpc.aio.EOF and update.status == NOT_SERVING, name
            await stopping
            assert await _check(stub) == "UNAVAILABLE"  # and then nobody answers at all
        finally:
            for call in watches.values():
                call.cancel()
            await channel.close()
        ops.coordinator.stop = _already_stopped  # type: ignore[method-assign]


async def _already_stopped(grace: float | None = None) -> None:
    return None
