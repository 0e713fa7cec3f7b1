"""Review (helper-128) of AdminService.ListJobs by client AND miner over a real server (SQLite file, loopback gRPC):
a token from a page that stopped at a frontier is refused under other filters (INVALID_ARGUMENT), and a call whose
page holds a job with a write in flight waits for it, answers it as written, and still ends at the store's frontier
(Scheduler.list_jobs passes JobPage.scanned_to on unchanged)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from coord_support import ADMIN_KEY, COMPLETED, RUNNING, Harness, eventually, expect_error, rpc_error
from test_admin_list_jobs_client_on_miner import MINER, history, stored
from test_failed_commit import held_lock

from coordinator.services.jobs import decode_page_token, encode_page_token
from coordinator.store import sql_reads
from coordinator.store.base import JobFilter

ADMIN = (("x-api-key", ADMIN_KEY),)


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_reads, "SCAN_CAP", 4)  # (the coordinator runs in this process)


def request(token: str = "", **filters) -> apb.AdminServiceListJobsRequest:  # type: ignore[no-untyped-def]
    return apb.AdminServiceListJobsRequest(page_size=5, page_token=token, **filters)


@pytest.mark.usefixtures("small_cap")
async def test_a_token_from_a_page_stopped_at_a_frontier_is_refused_under_other_filters(
    tmp_path: Path,
) -> None:
    harness = Harness(tmp_path, {})
    await stored(harness.db_path, history())
    async with harness as coord:
        stub = coord.admin().stub
        asked = {
            "client_id": "nobody",
            "miner_id": MINER,
        }  # none of the miner's jobs: empty pages with a token
        first = await stub.ListJobs(request(**asked), metadata=ADMIN, timeout=5)
        assert not first.jobs and first.next_page_token
        others = [
            {"client_id": "alice", "miner_id": MINER},
            {"client_id": "nobody", "miner_id": "miner-01"},
            {"client_id": "nobody"},
            {"miner_id": MINER},
            {**asked, "states": [COMPLETED]},
            {},
        ]
        for filters in others:
            details = await rpc_error(
                stub.ListJobs(request(first.next_page_token, **filters), metadata=ADMIN, timeout=5)
            )
            expect_error(details, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
        second = await stub.ListJobs(request(first.next_page_token, **asked), metadata=ADMIN, timeout=5)
        assert not second.jobs  # the same filters: it goes on


@pytest.mark.usefixtures("small_cap")
async def test_a_job_written_meanwhile_is_waited_for_and_the_page_still_ends_at_the_frontier(
    tmp_path: Path,
) -> None:
    """Alice's new job on the miner is stored ASSIGNED, then its RUNNING write is held behind the file's write lock
    while an admin lists her jobs on the miner: the call waits, answers the job RUNNING, and its token is where the
    store stopped (as the store itself reads it afterwards), not the last job's: none of hers below skipped."""
    harness = Harness(tmp_path, {})
    await stored(harness.db_path, history())
    async with harness as coord:
        miner = await coord.stream_miner(MINER, slots=1)
        job_id = (await coord.client("alice").submit({"j": 1})).job_id
        [assignment] = await miner.assignments(1)
        await eventually(lambda: coord.db.job_state(job_id) is not None and job_id not in coord.coordinator.scheduler._unsettled,
                         what="the assignment stored")  # fmt: skip
        blocker = held_lock(coord)
        try:
            miner.accept(assignment)
            await eventually(lambda: job_id in coord.coordinator.scheduler._unsettled, what="RUNNING written")
            call = asyncio.ensure_future(
                coord.admin().stub.ListJobs(
                    request(client_id="alice", miner_id=MINER), metadata=ADMIN, timeout=10
                )
            )
            await asyncio.sleep(0.3)
            assert not call.done(), "answered before the job's write settled"
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        page = await call
        assert page.jobs[0].job_id == job_id and page.jobs[0].state == RUNNING
        assert len(page.jobs) < 5 and page.next_page_token  # stopped short at the frontier
        flt = JobFilter(client_id="alice", miner_id=MINER)
        direct = await coord.coordinator.scheduler.store.list_jobs(
            flt, 6, None
        )  # the store itself, no memory
        assert [j.job_id for j in page.jobs] == [j.job_id for j in direct.jobs]
        assert direct.scanned_to and page.next_page_token == encode_page_token(direct.scanned_to, flt)
        assert decode_page_token(page.next_page_token, flt) < page.jobs[-1].job_id
