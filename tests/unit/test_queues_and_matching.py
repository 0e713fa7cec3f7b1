"""Ready queues (priority, fair share, FIFO, lazy removal) and hard-constraint matching."""

from __future__ import annotations

from coordinator.domain.matching import eligible
from coordinator.domain.model import Capabilities, Constraints, Gpu, JobState
from coordinator.scheduler.queues import ReadyQueues
from tests.unit.test_states import make_job

ANY = Constraints()


def job(job_id: str, client: str = "a", priority: int = 0, constraints: Constraints = ANY):
    j = make_job(JobState.QUEUED)
    j.job_id, j.client_id, j.priority, j.constraints = job_id, client, priority, constraints
    return j


def drain(q: ReadyQueues, fits=lambda shape: True) -> list[str]:
    out = []
    while (j := q.pop_for(fits)) is not None:
        out.append(j.job_id)
    return out


def test_fifo_within_priority_and_priority_first() -> None:
    q = ReadyQueues()
    for i in range(5):
        q.push(job(f"j{i}"))
    q.push(job("urgent", priority=9))
    assert drain(q) == ["urgent", "j0", "j1", "j2", "j3", "j4"]
    assert q.depth == 0


def test_fair_share_interleaves_clients() -> None:
    q = ReadyQueues()
    for i in range(6):
        q.push(job(f"a{i}", client="flood"))
    q.push(job("b0", client="small"))
    q.push(job("b1", client="small"))
    order = drain(q)
    assert order.index("b0") <= 2 and order.index("b1") <= 4, order


def test_canceled_jobs_are_skipped() -> None:
    q = ReadyQueues()
    first, second = job("j0"), job("j1")
    q.push(first)
    q.push(second)
    first.state = JobState.CANCELED
    assert drain(q) == ["j1"]
    assert q.depth == 0 and q.depth_by_priority() == {}  # counted out when skipped, though unannounced


def test_counts_are_exact_without_a_scan() -> None:
    q = ReadyQueues()
    jobs = [job(f"p{i}", priority=i % 3) for i in range(9)]
    for j in jobs:
        q.push(j)
    assert q.depth == 9 and q.depth_by_priority() == {0: 3, 1: 3, 2: 3}
    jobs[0].state = JobState.CANCELED
    q.discard(jobs[0])
    q.discard(jobs[0])  # announced twice: counted once
    waiting = job("backoff", priority=2)  # QUEUED but waiting out a retry backoff: never pushed
    waiting.state = JobState.EXPIRED
    q.discard(waiting)
    assert q.depth == 8 and q.depth_by_priority() == {0: 2, 1: 3, 2: 3}
    assert q.pop_for(lambda shape: True).priority == 2
    assert q.depth == 7 and q.depth_by_priority() == {0: 2, 1: 3, 2: 2}
    assert len(drain(q)) == 7 and q.depth == 0 and q.depth_by_priority() == {}


def test_only_eligible_shapes_are_taken() -> None:
    q = ReadyQueues()
    us = Constraints(region="us-east")
    q.push(job("us", constraints=us))
    q.push(job("any"))
    assert drain(q, lambda shape: shape.constraints != us) == ["any"]
    assert drain(q) == ["us"]


RTX = Capabilities(gpus=(Gpu("NVIDIA GeForce RTX 4090", 24),), cuda_version="12.2",
                   models=frozenset({"sd15", "llama3"}), price="3.5", region="eu-west",
                   labels=(("tier", "gold"),))  # fmt: skip


def test_matching_original_cases() -> None:
    assert not eligible(Constraints(region="us-east"), RTX)
    assert eligible(Constraints(region="eu-west", gpu="4090", min_vram_gb=24, models=("sd15",)), RTX)
    assert not eligible(Constraints(min_vram_gb=48), RTX)
    assert not eligible(Constraints(max_price="2"), RTX)
    assert eligible(Constraints(max_price="4"), RTX)
    assert not eligible(Constraints(cuda="12.10"), RTX)
    assert eligible(Constraints(cuda="12.1"), RTX)
    assert not eligible(Constraints(models=("sd15", "missing")), RTX)
    assert eligible(Constraints(labels=(("tier", "gold"),)), RTX)
    assert not eligible(Constraints(labels=(("tier", "silver"),)), RTX)
