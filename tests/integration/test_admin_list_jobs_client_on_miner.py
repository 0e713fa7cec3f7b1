"""AdminService.ListJobs by client AND miner does bounded work per call (sql_reads.SCAN_CAP of the miner's index
entries per state): a page may hold fewer jobs than page_size, even none, with a next_page_token, and the caller
goes on while the token is not empty (AIP-158). Over a real server: the raw stub and the Python SDK's
AdminClient.jobs, both through empty pages, list exactly the client's jobs on the miner."""

from __future__ import annotations

from pathlib import Path

import pytest
from aitbc.admin_cli import AdminClient
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from coord_support import ADMIN_KEY, Harness

from coordinator.domain.model import Job, JobState
from coordinator.store import UnitOfWork, sql_reads
from coordinator.store.sqlite import SqliteStore
from tests.store.store_support import T0, make_job

ADMIN = (("x-api-key", ADMIN_KEY),)
MINER = "miner-00"
ENDED = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELED)


def history() -> list[Job]:
    """The miner's 300 ended jobs: alice's among the first and the last 40, bob's alone in between (so walks of
    a few entries per state find none of hers); ids as the coordinator issues them (tokens carry one)."""
    jobs = []
    for i in range(300):
        client = "alice" if (i < 40 or i >= 260) and i % 3 == 0 else "bob"
        job_id = f"{i:08x}-0000-7000-8000-{i:012x}"
        jobs.append(
            make_job(job_id, client, state=ENDED[i % 3 if i % 7 else 0], miner_id=MINER, created_us=T0 + i)
        )
    return jobs


async def stored(path: Path, jobs: list[Job]) -> None:
    """Written by a store of its own before the coordinator starts on the file (its counts by state kept)."""
    store = SqliteStore(str(path))
    await store.open()
    try:
        unit = UnitOfWork()
        for job in jobs:
            unit.add_new_job(job)
        await store.commit(unit)
    finally:
        await store.close()


async def test_admin_list_jobs_by_client_and_miner_pages_through_empty_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_reads, "SCAN_CAP", 4)  # (the coordinator runs in this process)
    jobs = history()
    want = sorted((j.job_id for j in jobs if j.client_id == "alice"), reverse=True)
    harness = Harness(tmp_path, {})
    await stored(harness.db_path, jobs)
    async with harness as coord:
        stub = coord.admin().stub
        listed: list[str] = []
        sizes: list[int] = []
        token = ""
        while True:
            request = apb.AdminServiceListJobsRequest(
                client_id="alice", miner_id=MINER, page_size=5, page_token=token
            )
            page = await stub.ListJobs(request, metadata=ADMIN, timeout=5)
            listed += [j.job_id for j in page.jobs]
            sizes.append(len(page.jobs))
            token = page.next_page_token
            if not token:
                break
        assert listed == want
        assert max(sizes) <= 5 and sizes.count(0) >= 5, sizes  # empty pages, each with a token
        async with AdminClient(coord.address, ADMIN_KEY) as admin:
            through_sdk = await admin.jobs(client_id="alice", miner_id=MINER, limit=1000)
        assert [j.job_id for j in through_sdk] == want
