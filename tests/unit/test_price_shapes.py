"""Many distinct constraint sets: jobs differing only by price limit share a shape; empty shapes go at once;
a miner's eligibility cache stays bounded; priority, FIFO and fair share hold across price limits."""

from __future__ import annotations

from decimal import Decimal

from coordinator.domain.model import Capabilities, Constraints, JobState
from coordinator.scheduler import engine
from coordinator.scheduler.engine import Scheduler, SchedulerSettings
from coordinator.scheduler.pending import Pending
from coordinator.scheduler.queues import ReadyQueues
from coordinator.scheduler.sessions import Session
from tests.unit.test_queues_and_matching import job


def priced(i: int) -> Constraints:
    return Constraints(region="eu", max_price=f"{1 + i / 1000:.3f}")  # 1.000, 1.001, ...


def scheduler_with(price: str, slots: int) -> tuple[Scheduler, Session]:
    s = Scheduler(None, SchedulerSettings())  # type: ignore[arg-type]  # no commit here: _fill decides only
    caps = Capabilities(price=price, region="eu", slots=slots)
    session = Session(session_id="s0", miner_id="m0", caps=caps, transport="stream", connected_us=0)
    s.sessions[session.session_id] = s.available[session.session_id] = session
    s.by_miner[session.miner_id] = session
    return s, session


def fill(s: Scheduler, session: Session) -> list[str]:
    pending = Pending()
    s._fill(session, pending, 0)
    return [out.job.job_id for _, batch in pending.sends if isinstance(batch, list) for out in batch]


def test_jobs_differing_only_by_price_limit_share_one_shape() -> None:
    q = ReadyQueues()
    for i in range(1000):
        q.push(job(f"j{i:04d}", constraints=priced(i)))
    assert q.depth == 1000
    assert len(q.shapes) == 1


def test_a_shape_goes_as_soon_as_its_last_job_leaves() -> None:
    q = ReadyQueues()
    jobs = [job(f"r{i:02d}", constraints=Constraints(region=f"r{i}")) for i in range(50)]
    for j in jobs:
        q.push(j)
    for j in jobs[1:]:  # canceled or expired: counted out, no pop in between
        j.state = JobState.CANCELED
        q.discard(j)
    assert len(q.shapes) == 1 and q.depth == 1
    assert q.pop_for(lambda shape: True).job_id == "r00"
    assert q.shapes == {} and q.depth == 0


def test_eligibility_cache_stays_bounded_over_many_constraint_sets() -> None:
    s, session = scheduler_with("1.5", slots=1)
    for i in range(3000):  # price limits only: one entry in all
        assert s._eligible(session, priced(i)) is (Decimal(priced(i).max_price) >= Decimal("1.5"))
    assert len(session.eligibility) == 1
    bound = getattr(engine, "ELIGIBILITY_CACHE", 4096)
    for i in range(bound + 2000):  # sets differing in other constraints: bounded
        assert s._eligible(session, Constraints(region=f"r{i}")) is False
    assert s._eligible(session, Constraints(region="eu")) is True
    assert len(session.eligibility) <= bound


def test_fill_takes_priority_then_fifo_within_price_across_price_limits() -> None:
    s, session = scheduler_with("1.2", slots=400)
    jobs = []
    for i in range(400):  # limits 1.000 .. 1.399, priorities 0, 5, 9 in turn; 200 of them beyond 1.2
        j = job(f"j{i:04d}", priority=(0, 5, 9)[i % 3], constraints=priced(i))
        s.jobs[j.job_id] = j
        s.queues.push(j)
        jobs.append(j)
    within = [j for j in jobs if Decimal(j.constraints.max_price) >= Decimal("1.2")]
    expected = [j.job_id for j in sorted(within, key=lambda j: (-j.priority, j.job_id))]
    assert fill(s, session) == expected
    assert s.queues.depth == 200 and len(s.queues.shapes) == 1
    assert all(j.state is JobState.QUEUED for j in jobs if j not in within)


def test_fair_share_holds_across_price_limits() -> None:
    q = ReadyQueues()
    for i in range(6):
        q.push(job(f"a{i}", client="flood", constraints=priced(i)))
    q.push(job("b0", client="small", constraints=priced(100)))
    q.push(job("b1", client="small", constraints=priced(101)))
    order = []
    while (j := q.pop_for(lambda shape: True)) is not None:
        order.append(j.job_id)
    assert order.index("b0") <= 2 and order.index("b1") <= 4, order
    assert [j for j in order if j.startswith("a")] == [f"a{i}" for i in range(6)]


def test_lanes_stay_in_order_through_skips_takes_and_regrowth() -> None:
    """A lane's price index, through lazy skips, takes from the middle (price) and compaction on growth."""
    q = ReadyQueues()
    jobs = [job(f"j{i:04d}", constraints=priced(i % 10)) for i in range(300)]  # limits 1.000 .. 1.009
    for j in jobs:
        q.push(j)
    for j in jobs[::3]:  # canceled, announced or not
        j.state = JobState.CANCELED
        if j.job_id.endswith(("0", "2", "4")):
            q.discard(j)
    live = [j for j in jobs if j.state is JobState.QUEUED]
    taken = [q.pop_for(lambda shape: True, Decimal("1.008")) for _ in range(20)]  # the middle, by price
    assert [j.job_id for j in taken] == [j.job_id for j in live if j.constraints.max_price >= "1.008"][:20]
    more = [job(f"k{i:04d}", constraints=priced(i % 10)) for i in range(300)]  # grows past the lane's room
    for j in more:
        q.push(j)
    rest = [j for j in live if j not in taken] + more
    order = []
    while (j := q.pop_for(lambda shape: True)) is not None:
        order.append(j)
    assert [j.job_id for j in order] == [j.job_id for j in rest]
    assert q.depth == 0 and q.shapes == {}
