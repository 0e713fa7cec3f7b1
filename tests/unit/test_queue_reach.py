"""Filling a miner's slots looks only at the queue shapes it can take (its reach), however many others there
are; the turn across shapes holds only clients with queued jobs; and the queues' structures go back to empty
once every job of many distinct constraint sets is dispatched."""

from __future__ import annotations

import sys

import pytest

from coordinator.domain import matching
from coordinator.domain.model import Capabilities, Constraints, Gpu
from coordinator.scheduler import engine, queues
from coordinator.scheduler.pending import Pending
from coordinator.scheduler.queues import ReadyQueues
from coordinator.scheduler.sessions import Session
from tests.unit.test_price_shapes import fill, scheduler_with
from tests.unit.test_queues_and_matching import job


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[Constraints]:
    """Every eligibility check the scheduler and the queues make (the constraints checked)."""
    seen: list[Constraints] = []

    def counting(c: Constraints, caps: Capabilities) -> bool:
        seen.append(c)
        return matching.eligible(c, caps)

    monkeypatch.setattr(engine, "eligible", counting)
    monkeypatch.setattr(queues, "eligible", counting, raising=False)
    return seen


def fills_checking(constraints: list[Constraints], caps: Capabilities, checks: list[Constraints]) -> int:
    """Queue a job for each of constraints (none of which the miner can take), then fill the miner's slot
    50 times, a job it can take queued before each: the eligibility checks those fills made of constraints."""
    s, session = scheduler_with(caps.price, slots=1)
    session.caps = caps
    for i, c in enumerate(constraints):
        s.queues.push(job(f"x{i:05d}", constraints=c))
    for i in range(51):
        s.queues.push(job(f"j{i:05d}"))
        assert fill(s, session) == [f"j{i:05d}"]
        session.held.clear()
        if i == 0:
            checks.clear()  # the first fill may learn what the miner takes
    assert s.queues.depth == len(constraints)
    return sum(c != Constraints() for c in checks)  # (the shape of the jobs it takes comes and goes)


def calls_per_fill(foreign: int) -> float:
    """Function calls (Python and C) per fill of a one-slot miner in eu, with `foreign` jobs queued, each
    for a region of its own, by the client whose jobs it takes (served, it goes to the end of its turns)."""
    s, session = scheduler_with("1", slots=1)
    for i in range(foreign):
        s.queues.push(job(f"x{i:05d}", constraints=Constraints(region=f"r{i}")))
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    for i in range(21):
        s.queues.push(job(f"j{i:05d}"))
        if i:  # (the first fill may learn what the miner takes)
            sys.setprofile(count)
        try:
            assert fill(s, session) == [f"j{i:05d}"]
        finally:
            sys.setprofile(None)
        session.held.clear()
    return calls / 20


def test_a_fill_does_as_much_work_with_20000_shapes_it_cannot_take_as_with_10() -> None:
    few, many = calls_per_fill(10), calls_per_fill(20_000)
    assert many <= few * 1.2 + 20, (few, many)  # was 20,000 dictionary moves and eligibility checks more


def test_a_fill_looks_at_no_shape_in_another_region(checks: list[Constraints]) -> None:
    regions = [Constraints(region=f"r{i}") for i in range(20_000)]
    assert fills_checking(regions, Capabilities(region="eu", price="1"), checks) == 0  # was 20,000 per fill


def test_a_fill_looks_at_no_shape_wanting_more_memory_than_the_miner_has(checks: list[Constraints]) -> None:
    memory = [Constraints(min_vram_gb=100 + i) for i in range(20_000)]
    caps = Capabilities(region="eu", price="1", gpus=(Gpu("a100", 80),))
    assert fills_checking(memory, caps, checks) == 0  # was 20,000 per fill


def test_the_turn_forgets_clients_with_nothing_queued() -> None:
    q = ReadyQueues()
    for i in range(1000):
        q.push(job(f"j{i:04d}", client=f"c{i}"))
    while q.pop_for(lambda shape: True) is not None:
        pass
    assert q.served == {} and q.lanes == {}  # kept every client ever seen


def test_a_client_back_after_nothing_queued_takes_its_turn_at_the_end() -> None:
    """Its old place is forgotten with its last queued job: it comes back behind the clients queued meanwhile."""
    q = ReadyQueues()
    eu, us = Constraints(region="eu"), Constraints(region="us")
    q.push(job("a1", client="a", constraints=eu))
    q.push(job("b1", client="b", constraints=us))
    q.push(job("b2", client="b", constraints=us))
    assert [q.pop_for(lambda shape: True).job_id for _ in range(2)] == ["a1", "b1"]  # a has nothing queued
    q.push(job("a2", client="a", constraints=eu))
    assert [q.pop_for(lambda shape: True).job_id for _ in range(2)] == ["b2", "a2"]


def test_queues_go_back_to_empty_after_many_distinct_constraint_sets() -> None:
    q = ReadyQueues(reaches=8)
    regions, depths = 300, 10  # 3,000 constraint sets, 1,000 clients
    for i in range(regions * depths):
        c = Constraints(region=f"r{i % regions}", min_vram_gb=i // regions)
        q.push(job(f"j{i:05d}", client=f"c{i % 1000}", constraints=c))
    assert len(q.shapes) == regions * depths
    popped = 0
    for r in range(regions):  # a miner per region, each taking all of its region's jobs
        reach = q.reach(Capabilities(region=f"r{r}", gpus=(Gpu("a100", 80),)))
        while q.pop_in(reach) is not None:
            popped += 1
    assert popped == regions * depths and q.depth == 0
    assert q.shapes == {} and q.by_region == {} and q.served == {} and q.lanes == {}
    assert len(q.reaches) <= 8 and all(reach.shapes == {} for reach in q.reaches.values())


def test_a_submit_checks_each_capability_set_once_not_each_idle_miner(checks: list[Constraints]) -> None:
    s, first = scheduler_with("1", slots=1)
    first.caps = caps = Capabilities(region="us", price="1")
    for k in range(1, 1000):  # an idle fleet of one kind, in another region than the jobs'
        session = Session(session_id=f"s{k}", miner_id=f"m{k}", caps=caps, transport="stream", connected_us=0)
        s.sessions[session.session_id] = s.available[session.session_id] = session
    for session in s.available.values():
        assert fill(s, session) == []  # (as when it connected: nothing queued yet)
    checks.clear()
    for i in range(20):
        assert s._pick_session(job(f"j{i}", constraints=Constraints(region=f"eu{i}"))) is None
    assert len(checks) == 20  # was 1,000 per job: one per idle miner
    us = job("us", constraints=Constraints(region="us"))
    assert s._pick_session(us) is first
    assert s._pick_session(us, exclude=first) is not None


def test_the_reaches_of_miners_gone_are_dropped(checks: list[Constraints]) -> None:
    """Miners come and go with capabilities of their own (a host label, say): once they are gone, a new
    constraint set is checked against none of theirs (128 were kept, and checked against every new shape)."""
    s, _ = scheduler_with("1", slots=1)
    gone = []
    for i in range(200):
        caps = Capabilities(region="eu", price="1", labels=(("host", f"h{i}"),))
        session, _, _ = s.open_session(f"m{i}", caps, "stream", [])
        assert session.reach is not None  # (its first fill gave it one)
        gone.append(session)
    for session in gone:
        s._close(session, Pending(), "STREAM_CLOSED", requeue=True)
    assert s.queues.reaches == {} and s.queues.reaches_in == {}
    checks.clear()
    s.queues.push(job("new", constraints=Constraints(gpu="a100")))
    assert checks == []


def test_a_reach_two_sessions_share_stays_while_one_of_them_is_open() -> None:
    s, _ = scheduler_with("1", slots=1)
    caps = Capabilities(region="eu", price="1", labels=(("pool", "a"),))
    first, _, _ = s.open_session("m1", caps, "stream", [])
    second, _, _ = s.open_session("m2", caps, "stream", [])
    shared = first.reach
    assert shared is not None and second.reach is shared
    s._close(first, Pending(), "STREAM_CLOSED", requeue=True)
    assert shared.live and s.queues.reaches == {shared.key: shared}
    s.queues.push(job("later", constraints=Constraints(region="eu")))
    assert fill(s, second) == ["later"]  # it still sees new shapes
    s._close(second, Pending(), "STREAM_CLOSED", requeue=True)
    assert not shared.live and s.queues.reaches == {}
