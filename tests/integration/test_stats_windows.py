"""GetStats' windows (jobs submitted and finished in the last minute, five minutes, hour) are counted in memory as
transitions commit, and the hour before a start is counted once from the store in the background: each GetStats
scanned the last hour's events before (~1 s of the store's one reader for a million jobs an hour, every client
read waiting behind it). The figures must stay the store's: for every kind, and across a restart."""

from __future__ import annotations

import asyncio

import grpc
from aitbc.client import Client
from aitbc.coordinator.v1 import admin_service_pb2, admin_service_pb2_grpc, job_pb2, miner_service_pb2
from aitbc.miner import JobFailed, Miner, Outcome

from coordinator.config import ApiKeyEntry, Settings, validate
from coordinator.domain.clock import now_us
from coordinator.domain.model import Event, JobState
from coordinator.scheduler.recent import SPAN_S, RecentTransitions
from coordinator.server import Coordinator, start

CLIENT, MINER, ADMIN = "client-key-0001", "miner-key-0001", "admin-key-0001"


def settings(database_url: str) -> Settings:
    s = Settings(
        app_port=0, database_url=database_url, client_api_keys=(ApiKeyEntry("alice", "client", CLIENT),),
        miner_api_keys=(ApiKeyEntry("m1", "miner", MINER),), admin_api_keys=(ApiKeyEntry("ops", "admin", ADMIN),),
        reconnect_grace_seconds=1, log_level="WARNING",
    )  # fmt: skip
    validate(s)
    return s


async def failing_on_odd(job: job_pb2.Job) -> Outcome:
    n = int(job.payload["n"])
    if n % 2:
        raise JobFailed("ODD", "odd jobs fail", retryable=False)
    return Outcome(b"ok", units="1", unit_type="jobs")


async def run_jobs(coordinator: Coordinator, count: int) -> None:
    """count jobs: even ones completed, odd ones failed, one more canceled while queued (no miner for it)."""
    address = f"127.0.0.1:{coordinator.port}"
    caps = miner_service_pb2.MinerCapabilities(slots=4)
    miner = Miner(address, MINER, capabilities=caps, runner=failing_on_odd, backoff_base_s=0.05)
    running = asyncio.create_task(miner.run())
    try:
        async with Client(address, CLIENT) as client:
            jobs = await client.submit_many([{"n": n} for n in range(count)])
            for job in jobs:
                await asyncio.wait_for(client.wait(job.job_id), 30)
    finally:
        miner.stop()
        await asyncio.wait_for(running, 10)
    async with Client(address, CLIENT) as client:
        queued = await client.submit({"n": 0}, constraints={"region": "nowhere"})
        await client.cancel(queued.job_id)


async def windows(coordinator: Coordinator) -> dict[int, dict[str, int]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
        stats = await admin_service_pb2_grpc.AdminServiceStub(channel).GetStats(
            admin_service_pb2.GetStatsRequest(), metadata=(("x-api-key", ADMIN),)
        )
    return {w.window.seconds: {k: getattr(w, k) for k in ("submitted", "completed", "failed", "canceled", "expired")}
            for w in stats.windows}  # fmt: skip


async def stored_windows(coordinator: Coordinator) -> dict[int, dict[str, int]]:
    now = now_us()
    store = coordinator.scheduler.store
    return {s: await store.count_transitions_since(now - s * 1_000_000) for s in (60, 300, 3600)}


async def test_stats_windows_are_the_stores_counts_before_and_after_a_restart(database_url: str) -> None:
    coordinator = await start(settings(database_url))
    try:
        await run_jobs(coordinator, 10)
        assert coordinator.scheduler.recent.seeded  # (an empty store's hour, counted at once)
        served = await windows(coordinator)
        assert served[3600] == {"submitted": 11, "completed": 5, "failed": 5, "canceled": 1, "expired": 0}
        assert served == await stored_windows(coordinator)
    finally:
        await coordinator.stop(grace=0.5)

    coordinator = await start(settings(database_url))
    try:
        for _ in range(500):  # the hour before the start, counted from the store in the background
            if coordinator.scheduler.recent.seeded:
                break
            await asyncio.sleep(0.01)
        assert coordinator.scheduler.recent.seeded
        await run_jobs(coordinator, 4)  # and those after it, in memory
        served = await windows(coordinator)
        assert served[3600] == {"submitted": 16, "completed": 7, "failed": 7, "canceled": 2, "expired": 0}
        assert served == await stored_windows(coordinator)
    finally:
        await coordinator.stop(grace=0.5)


def event(to: JobState, at_s: float, submitted: bool = False) -> Event:
    return Event("job", 1, None if submitted else JobState.RUNNING, to, 1, "", "", "", int(at_s * 1_000_000))


def test_a_window_counts_its_seconds_and_an_hour_old_second_is_let_go() -> None:
    recent = RecentTransitions()
    t0 = 1_800_000_000
    recent.seed([(t0 - 10, 4, False, 3), (t0 - 10, 1, True, 5)])
    recent.count(event(JobState.QUEUED, t0, submitted=True))
    recent.count(event(JobState.RUNNING, t0 + 0.5))  # (not a kind a window counts)
    recent.count(event(JobState.EXPIRED, t0 + 1.2))
    assert recent.since(t0 * 1_000_000) == {
        "submitted": 1,
        "completed": 0,
        "failed": 0,
        "canceled": 0,
        "expired": 1,
    }
    assert recent.since((t0 - 60) * 1_000_000)["completed"] == 3
    assert recent.since((t0 - 60) * 1_000_000)["submitted"] == 6
    recent.count(
        event(JobState.FAILED, t0 + 1 + SPAN_S)
    )  # an hour after t0 + 1: t0 and before are out of every window
    assert recent.since(0) == {"submitted": 0, "completed": 0, "failed": 1, "canceled": 0, "expired": 1}
    assert len(recent._seconds) == 2
