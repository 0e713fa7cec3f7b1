"""A unary miner gone for good: its session is closed for silence (HEARTBEAT_TIMEOUT) once nothing of it waits at
the coordinator, a poll it left waiting included (within a heartbeat timeout of that poll's end), and its jobs
are requeued MINER_GONE, their attempt spent, once the reconnect grace is over; an operator's drain of it ends
then too. Metrics and the admin view say so along the way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from coord_support import Harness, eventually
from test_auth_rate_limit import free_port, scrape
from test_unary_silence_leases import holding, requeues, silenced


def sample(text: str, name: str, reason: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(f'{name}{{reason="{reason}"}} ')]
    return float(line.split()[1])


@pytest.fixture
async def metered(tmp_path: Path) -> AsyncIterator[Harness]:
    """lease and liveness 1 s, a grace of 2 s, /metrics on."""
    overrides = {"metrics_port": free_port(), "lease_seconds": 1.0, "heartbeat_timeout_seconds": 1.0,
                 "reconnect_grace_seconds": 2.0}  # fmt: skip
    async with Harness(tmp_path, overrides) as harness:
        yield harness


async def test_a_poll_left_waiting_by_a_gone_unary_miner_ends_its_session_and_its_job_goes_miner_gone(
    metered: Harness,
) -> None:
    coord = metered
    miner, [job_id] = await holding(coord)
    scheduler = coord.coordinator.scheduler
    session = scheduler.sessions[miner.session_id]

    # its last call: a poll waiting about 3 s at the coordinator (the miner gone meanwhile, say)
    waiting = asyncio.create_task(miner.poll(deadline_s=4.0))
    await eventually(lambda: session.poll_waiting, what="the poll waiting")
    await asyncio.sleep(2.0)  # past the lease and the liveness timeout: the waiting poll is the miner there
    assert not session.closed and not requeues(coord, job_id)
    answer = await waiting
    assert not answer.assignments and not answer.cancels

    await eventually(lambda: session.closed, within=5.0, what="the session closed once the poll ended")
    listed = (await coord.admin().miners())["miner-00"]
    assert (listed.status, listed.running_jobs) == (apb.MINER_STATUS_DISCONNECTED, 1)
    await eventually(lambda: requeues(coord, job_id), within=10.0, what="the job requeued after the grace")
    assert requeues(coord, job_id) == [("MINER_GONE", 1)]
    assert "miner-00" not in await coord.admin().miners()

    text = await asyncio.to_thread(scrape, coord.coordinator.observability.metrics_port)
    assert sample(text, "aitbc_job_requeues_total", "MINER_GONE") == 1
    assert sample(text, "aitbc_job_requeues_total", "HEARTBEAT_TIMEOUT") == 0
    assert sample(text, "aitbc_job_requeues_total", "LEASE_EXPIRED") == 0
    assert sample(text, "aitbc_miner_disconnections_total", "HEARTBEAT_TIMEOUT") == 1


async def test_a_silent_unary_miner_drained_and_not_back_loses_its_job_and_its_drain_ends(
    metered: Harness,
) -> None:
    coord = metered
    miner, [job_id] = await holding(coord)
    scheduler = coord.coordinator.scheduler

    assert (await coord.admin().drain("miner-00")).miner.status == apb.MINER_STATUS_DRAINING
    await silenced(coord, miner)
    listed = (await coord.admin().miners())["miner-00"]
    assert (listed.status, listed.running_jobs, listed.drain_pending) == (
        apb.MINER_STATUS_DISCONNECTED,
        1,
        True,
    )
    assert not requeues(coord, job_id)

    await eventually(lambda: requeues(coord, job_id), within=10.0, what="the job requeued after the grace")
    assert requeues(coord, job_id) == [("MINER_GONE", 1)]
    await eventually(lambda: "miner-00" not in scheduler.drains_pending(), within=10.0, what="the drain over")
    await eventually(
        lambda: not coord.db.scalar("SELECT COUNT(*) FROM operator_drains"), what="its row deleted"
    )
    assert "miner-00" not in await coord.admin().miners()
    # back later, it takes work again
    await miner.register()
    [b] = (await miner.poll()).assignments
    assert (b.job.job_id, b.attempt) == (job_id, 2)
