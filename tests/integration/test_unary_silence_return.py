"""A unary miner closed for silence (HEARTBEAT_TIMEOUT) coming back within the reconnect grace: what it lists
decides. A job it lists at the attempt it holds stays its own; one it does not list, or lists at another attempt,
is lost (MINER_LOST_JOB, its attempt spent, the stale attempt told NOT_HELD). Meanwhile the admin view shows it
away with the jobs still waiting for it; a coordinator restart during the grace keeps them waiting."""

from __future__ import annotations

import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from coord_support import CANCELED, COMPLETED, RUNNING, Harness, eventually
from test_unary_silence_leases import Unary, holding, requeues, silenced

GRACE = {"lease_seconds": 1.0, "heartbeat_timeout_seconds": 1.0, "reconnect_grace_seconds": 30.0}


@pytest.mark.coordinator(**GRACE)
async def test_back_within_the_grace_not_listing_its_job_the_miner_loses_it(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, [job_id] = await holding(coord)
    await silenced(coord, miner)

    welcome = await miner.register()  # a new process: it runs nothing
    assert not welcome.resumed_jobs
    await eventually(lambda: requeues(coord, job_id), what="the job requeued")
    assert requeues(coord, job_id) == [("MINER_LOST_JOB", 1)]
    [b] = (await miner.poll()).assignments  # the job comes back to it as a new attempt
    assert (b.job.job_id, b.attempt) == (job_id, 2)
    assert (await miner.result(job_id, 2)).accepted
    done = await coord.finished(alice, job_id)
    assert (done.state, done.attempt) == (COMPLETED, 2)
    assert "miner-00" not in coord.coordinator.scheduler.orphans


@pytest.mark.coordinator(**GRACE)
async def test_back_within_the_grace_listing_a_stale_attempt_the_miner_loses_the_job(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, [job_id] = await holding(coord)
    await silenced(coord, miner)

    welcome = await miner.register(running=((job_id, 2),))  # an attempt it never held
    assert not welcome.resumed_jobs
    assert requeues(coord, job_id) == [("MINER_LOST_JOB", 1)]
    hb = await miner.heartbeat()
    assert [(c.job_id, c.attempt, c.reason) for c in hb.cancels] == [(job_id, 2, "NOT_HELD")]
    [b] = (await miner.poll()).assignments
    assert (b.job.job_id, b.attempt) == (job_id, 2)
    assert (await miner.result(job_id, 2)).accepted
    assert (await coord.finished(alice, job_id)).state == COMPLETED


@pytest.mark.coordinator(**GRACE)
async def test_back_within_the_grace_the_miner_keeps_the_jobs_it_lists_only(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, jobs = await holding(coord, 3)
    await silenced(coord, miner)
    miners = await coord.admin().miners()
    assert (miners["miner-00"].status, miners["miner-00"].running_jobs) == (apb.MINER_STATUS_DISCONNECTED, 3)

    welcome = await miner.register(running=((jobs[0], 1), (jobs[2], 1)), slots=3)
    assert sorted((r.job_id, r.attempt) for r in welcome.resumed_jobs) == sorted([(jobs[0], 1), (jobs[2], 1)])
    assert requeues(coord, jobs[1]) == [("MINER_LOST_JOB", 1)]
    assert [requeues(coord, jobs[0]), requeues(coord, jobs[2])] == [[], []]
    miners = await coord.admin().miners()
    assert (miners["miner-00"].status, miners["miner-00"].running_jobs) == (apb.MINER_STATUS_ONLINE, 2)
    for j in (jobs[0], jobs[2]):
        assert (await miner.result(j, 1)).accepted
        assert (await coord.finished(alice, j)).attempt == 1


@pytest.mark.coordinator(**GRACE)
async def test_a_job_canceled_while_its_unary_miner_is_away_no_longer_counts_as_its_own(
    coord: Harness,
) -> None:
    alice = coord.client("alice")
    miner, [job_id] = await holding(coord)
    await silenced(coord, miner)
    assert (await coord.admin().miners())["miner-00"].running_jobs == 1

    assert (await alice.cancel(job_id)).state == CANCELED
    # the miner is away, but runs nothing of the coordinator's any more: not listed as running a job
    listed = (await coord.admin().miners()).get("miner-00")
    assert listed is None or listed.running_jobs == 0, listed

    welcome = await miner.register(running=((job_id, 1),))  # back, still running it: told to drop it
    assert not welcome.resumed_jobs
    hb = await miner.heartbeat()
    assert [(c.job_id, c.attempt, c.reason) for c in hb.cancels] == [(job_id, 1, "NOT_HELD")]
    assert not requeues(coord, job_id)


@pytest.mark.coordinator(**GRACE)
async def test_a_coordinator_restart_during_the_grace_keeps_a_silent_unary_miners_job(coord: Harness) -> None:
    miner, [job_id] = await holding(coord)
    await silenced(coord, miner)

    await coord.restart()
    miner = Unary(coord)
    alice = coord.client("alice")
    assert "miner-00" in coord.coordinator.scheduler.orphans
    welcome = await miner.register(running=((job_id, 1),))
    assert [(r.job_id, r.attempt) for r in welcome.resumed_jobs] == [(job_id, 1)]
    assert (await alice.get(job_id)).state == RUNNING  # (as its heartbeat left it: accepted)
    assert (await miner.result(job_id, 1)).accepted
    done = await coord.finished(alice, job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1)
    assert not requeues(coord, job_id)
