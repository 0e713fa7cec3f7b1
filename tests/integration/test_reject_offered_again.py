"""A job its miner rejected goes to another miner first; with none, it is offered to the rejecting miner again
after a pause (RETRY_BACKOFF_BASE_SECONDS, 0.1 s at the soonest), its attempt unspent.

It used to wait in the queue beside the idle miner until something unrelated filled that miner's slot (a submit,
a result, a new stream): found in review round 32, as the SDK miner now rejects an assignment whose slot a
canceled callable still holds, and a one-slot miner whose callable then returns sat idle beside the job.

Review round 35: a miner is not offered a job it rejected until its pause is over (doubling with each of its
refusals of the job), whichever way the job would reach it: two miners rejecting a job passed it back and forth,
and a miner rejecting two jobs took them in turn, hundreds of times a second, each offer two stored events."""

from __future__ import annotations

import asyncio

import pytest
from aitbc.coordinator.v1 import job_pb2
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from coord_support import QUEUED, Harness, StreamMiner, eventually


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, retry_backoff_base_seconds=0.2)
async def test_a_job_rejected_by_the_only_miner_is_offered_to_it_again(coord: Harness) -> None:
    miner = await coord.stream_miner("miner-00", slots=1)
    alice = coord.client("alice")
    job = await alice.submit({"n": 1}, max_attempts=1)
    first = await miner.next("assignment")
    miner.held.pop(job.job_id, None)
    miner.send(reject=mpb.Reject(job_id=job.job_id, attempt=first.attempt, reason="busy for a moment"))
    again = await miner.next("assignment", within=10.0)
    assert again.job.job_id == job.job_id
    assert again.attempt == first.attempt  # the refusal spent no attempt (max_attempts=1: it can still run)


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, retry_backoff_base_seconds=0.2)
async def test_a_rejected_job_goes_to_another_free_miner_first(coord: Harness) -> None:
    first_miner = await coord.stream_miner("miner-00", slots=1)
    alice = coord.client("alice")
    job = await alice.submit({"n": 1})
    offered = await first_miner.next("assignment")
    second_miner = await coord.stream_miner("miner-01", slots=1)
    first_miner.held.pop(job.job_id, None)
    first_miner.send(reject=mpb.Reject(job_id=job.job_id, attempt=offered.attempt, reason="not now"))
    taken = await second_miner.next("assignment", within=10.0)
    assert taken.job.job_id == job.job_id
    got = await alice.get(job.job_id)
    assert got.state == job_pb2.JOB_STATE_ASSIGNED and got.miner_id == "miner-01"


def rejecting(miner: StreamMiner, offers: list[str]) -> None:
    """miner rejects every assignment at once, noting each job offered to it."""

    def probe(stream: object, kind: str, body: mpb.Assignments) -> None:
        if kind == "assignments":
            for a in body.assignments:
                offers.append(a.job.job_id)
                miner.held.pop(a.job.job_id, None)
                miner.send(reject=mpb.Reject(job_id=a.job.job_id, attempt=a.attempt, reason="never"))

    miner.on_message = probe


async def settled_after(offers: list[list[str]], want: int, coord: Harness, job_ids: list[str]) -> None:
    """Once want offers were rejected and every job is back QUEUED, nothing more is offered for a while."""
    await eventually(lambda: sum(map(len, offers)) >= want, what=f"{want} offers")
    await eventually(lambda: all(coord.db.job_state(j) == QUEUED for j in job_ids), what="jobs queued")
    await asyncio.sleep(0.5)  # (they used to be offered again at once: hundreds of times meanwhile)


# A pause of 30 s, doubling: no job may be offered to a miner twice within these tests.
@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, retry_backoff_base_seconds=30.0,
                         retry_backoff_max_seconds=120.0)  # fmt: skip
async def test_two_miners_rejecting_a_job_do_not_pass_it_back_and_forth(coord: Harness) -> None:
    offers: list[list[str]] = [[], []]
    for name, seen in zip(("miner-00", "miner-01"), offers, strict=True):
        rejecting(await coord.stream_miner(name, slots=1), seen)
    job = await coord.client("alice").submit({"n": 1})
    await settled_after(offers, 2, coord, [job.job_id])
    assert offers == [[job.job_id], [job.job_id]]  # each once: each rejected it, and is in its pause


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, retry_backoff_base_seconds=30.0,
                         retry_backoff_max_seconds=120.0)  # fmt: skip
async def test_a_miner_rejecting_two_jobs_is_not_offered_them_in_turn(coord: Harness) -> None:
    offers: list[str] = []
    rejecting(await coord.stream_miner("miner-00", slots=1), offers)
    alice = coord.client("alice")
    jobs = [await alice.submit({"n": n}) for n in range(2)]
    await settled_after([offers], 2, coord, [j.job_id for j in jobs])
    assert sorted(offers) == sorted(j.job_id for j in jobs)  # each once: the other filled its slot, no more
    events = coord.db.events(jobs[0].job_id)
    assert [e["reason"] for e in events].count("REJECTED") == 1 and events[-1]["attempt"] == 0


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, retry_backoff_base_seconds=0.2,
                         retry_backoff_max_seconds=0.4)  # fmt: skip
async def test_a_rejected_job_is_offered_to_its_miner_on_a_new_stream_once_the_pause_is_over(
    coord: Harness,
) -> None:
    miner = await coord.stream_miner("miner-00", slots=1)
    alice = coord.client("alice")
    job = await alice.submit({"n": 1}, max_attempts=1)
    first = await miner.next("assignment")
    miner.held.pop(job.job_id, None)
    miner.send(reject=mpb.Reject(job_id=job.job_id, attempt=first.attempt, reason="restarting"))
    await eventually(lambda: coord.db.job_state(job.job_id) == QUEUED, what="the job back in the queue")
    await miner.kill()
    await miner.connect()  # a new session: the old one's timers find nothing to do
    again = await miner.next("assignment", within=10.0)
    assert (again.job.job_id, again.attempt) == (job.job_id, first.attempt)
    miner.result(job.job_id, again.attempt)
    await coord.finished(alice, job.job_id)
    assert coord.coordinator is not None
    await eventually(
        lambda: not coord.coordinator.scheduler._refusals, what="the refusal forgotten with its job"
    )  # type: ignore[union-attr]


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=5.0, retry_backoff_base_seconds=30.0,
                         retry_backoff_max_seconds=120.0)  # fmt: skip
async def test_a_reject_of_a_job_its_client_canceled_meanwhile_is_refused_and_changes_nothing(
    coord: Harness,
) -> None:
    miner = await coord.stream_miner("miner-00", slots=1)
    alice = coord.client("alice")
    job = await alice.submit({"n": 1})
    offered = await miner.next("assignment")
    await alice.cancel(job.job_id)
    await miner.next("cancel")
    miner.send(reject=mpb.Reject(job_id=job.job_id, attempt=offered.attempt, reason="too late"))
    ack = await miner.next("result_ack")
    assert (ack.accepted, ack.reason) == (False, "JOB_NOT_HELD")
    assert [e["reason"] for e in coord.db.events(job.job_id)][-1] == "CANCELED_BY_CLIENT"
    assert coord.coordinator is not None and not coord.coordinator.scheduler._refusals
    other = await alice.submit({"n": 2})  # its slot is free, with no pause of any kind
    assert (await miner.next("assignment")).job.job_id == other.job_id
