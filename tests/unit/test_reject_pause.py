"""A miner that rejected a job is not offered it again until its pause is over (RETRY_BACKOFF_BASE_SECONDS,
0.1 s at the soonest, doubling with each of its refusals of the job up to RETRY_BACKOFF_MAX_SECONDS); the job
stays in the queues for every other miner meanwhile."""

from __future__ import annotations

from coordinator.domain.model import Capabilities
from coordinator.scheduler.engine import SchedulerSettings, reject_pause_s
from coordinator.scheduler.pending import Pending
from coordinator.scheduler.sessions import Session
from tests.unit.test_price_shapes import fill, scheduler_with
from tests.unit.test_queues_and_matching import job


def test_the_pause_doubles_with_each_refusal_up_to_the_retry_backoff_maximum() -> None:
    settings = SchedulerSettings(retry_backoff_base_s=1.0, retry_backoff_max_s=5.0)
    assert [reject_pause_s(settings, n) for n in (1, 2, 3, 4, 500)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    quick = SchedulerSettings(retry_backoff_base_s=0.0, retry_backoff_max_s=0.0)
    assert reject_pause_s(quick, 1) == reject_pause_s(quick, 9) == 0.1  # never offered again at once


def test_a_fill_passes_over_a_job_its_miner_rejected_and_leaves_it_to_others() -> None:
    s, session = scheduler_with("1", slots=2)
    refused, other = job("j0"), job("j1")
    for j in (refused, other):
        s.jobs[j.job_id] = j
        s.queues.push(j)
    s._refused(refused, session.miner_id, 0)
    assert fill(s, session) == ["j1"]
    assert refused.in_queue and s.queues.depth == 1
    another = Session(session_id="s1", miner_id="m1", caps=Capabilities(price="1", region="eu"),
                      transport="stream", connected_us=0)  # fmt: skip
    assert fill(s, another) == ["j0"]  # any other miner takes it at once


def test_a_miner_is_offered_a_job_it_rejected_again_once_its_pause_is_over() -> None:
    s, session = scheduler_with("1", slots=1)
    refused = job("j0")
    s.jobs[refused.job_id] = refused
    s.queues.push(refused)
    until = s._refused(refused, session.miner_id, 0)
    assert fill(s, session) == [] and refused.in_queue
    pending = Pending()
    s._fill(session, pending, until)
    assert [out.job.job_id for _, batch in pending.sends for out in batch] == ["j0"]  # type: ignore[union-attr]
    assert s._refused(refused, session.miner_id, until) - until == 2 * until  # its second: twice as long


def other_miner(slots: int) -> Session:
    return Session(session_id="s1", miner_id="m1", caps=Capabilities(price="1", region="eu", slots=slots),
                   transport="stream", connected_us=0)  # fmt: skip


def queued(s, *jobs) -> None:  # type: ignore[no-untyped-def]
    for j in jobs:
        s.jobs[j.job_id] = j
        s.queues.push(j)


def test_a_job_passed_over_keeps_its_place_for_other_miners() -> None:
    # It went to the end of its client's lane each time its miner filled during the pause: behind every job
    # the client submitted after it, for every other miner (FIFO lost, over and over, while the pause lasts).
    s, session = scheduler_with("1", slots=1)
    refused, later, last = job("a0"), job("a1"), job("a2")
    queued(s, refused, later, last)
    s._refused(refused, session.miner_id, 0)
    assert fill(s, session) == ["a1"]
    assert fill(s, other_miner(slots=2)) == ["a0", "a2"]


def test_a_job_passed_over_does_not_cost_its_client_its_turn() -> None:
    # Popping the refused job counted as serving its client: the rejecting miner took another client's job,
    # and the client whose job it refused went to the end of the turn at each of that miner's fills.
    s, session = scheduler_with("1", slots=1)
    queued(s, job("a0", client="alice"), job("a1", client="alice"), job("b0", client="bob"),
           job("b1", client="bob"))  # fmt: skip
    s._refused(s.jobs["a0"], session.miner_id, 0)
    assert fill(s, session) == ["a1"]  # alice's turn: her next job that this miner may take
    assert fill(s, other_miner(slots=3)) == ["b0", "a0", "b1"]  # then turns alternate, a0 in its place
