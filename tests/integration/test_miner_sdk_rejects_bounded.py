"""The SDK miner's memory of its rejects stays bounded over one stream's life (helper h2).

A reject is kept (and listed in the next hello) until the miner knows the coordinator read it: otherwise a stream
lost before then would lose the job, its attempt spent. It used to be forgotten only when the job was assigned
again or at the next welcome, so on one long stream every job given back for a slot held by a stuck runner (a
canceled python callable) stayed for good, and the next hello listed them all (the coordinator takes 4096 at most
there, then refuses the hello: the miner would end). The stream's own bound: the coordinator assigns a stream
no more jobs than its slots, counting those whose reject it has not read, and reads in order; so once an
assignment arrives, only the latest rejects may still be unread (see Miner._read_rejects_before)."""

from __future__ import annotations

import pytest
from aitbc.miner import python_runner
from coord_support import CANCELED, FAILED, Harness, eventually, sdk_miner
from test_miner_sdk_stuck_runners import OneByOne, offers

ROUNDS = 3


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, reconnect_grace_seconds=30.0)
async def test_rejects_the_coordinator_has_read_are_not_kept_for_the_streams_life(coord: Harness) -> None:
    """Each round: a job's callable sticks past its execution timeout; the job queued behind it is assigned to
    the slot the coordinator counts free, and given back (its reject read: REJECTED), then canceled by its
    client; the callable returns. One stream throughout: the miner keeps no more rejects than its slots."""
    calls = OneByOne()
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, python_runner(calls), slots=1, stuck_timeout_s=600.0)
    coord.run_miner(miner)
    rejected = []
    try:
        await eventually(lambda: miner.connects == 1)
        for n in range(ROUNDS):
            await eventually(lambda: offers(coord, 1), what="the miner offering its slot")
            stuck = await alice.submit({"stuck": True}, max_attempts=1, execution_timeout_s=1.0)
            await eventually(lambda stuck=stuck: stuck.job_id in miner.running, what="the stuck job running")
            behind = await alice.submit({"n": n}, max_attempts=1)  # queued: the slot is busy
            assert (await coord.finished(alice, stuck.job_id)).state == FAILED  # canceled; its thread runs on
            await eventually(lambda b=behind: "REJECTED" in [e["reason"] for e in coord.db.events(b.job_id)],
                             what="the job behind it given back")  # fmt: skip
            await alice.cancel(behind.job_id)
            assert (await coord.finished(alice, behind.job_id)).state == CANCELED
            rejected.append(behind.job_id)
            calls.release_one()
            await eventually(lambda: not miner._canceled, what="the stuck callable returned")
        await eventually(lambda: offers(coord, 1), what="the miner offering its slot again")
        assert miner.connects == 1, "one stream throughout"
        kept = [job_id for job_id in rejected if job_id in miner._rejects]
        assert len(miner._rejects) <= miner.slots, f"{len(miner._rejects)} rejects kept on 1 slot: {kept}"
        assert len(set(miner._listed()) & set(rejected)) <= miner.slots  # what the next hello would list
    finally:
        for _ in range(ROUNDS):
            calls.release_one()
        calls.release.set()
        calls.go.set()
