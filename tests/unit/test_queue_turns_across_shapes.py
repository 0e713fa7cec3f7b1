"""A client served in one shape loses its turn in every other shape too: its flood in one shape used to keep
its place at the head of another shape's turn, so another client's job there waited for the whole flood."""

from __future__ import annotations

from coordinator.domain.model import Constraints
from coordinator.scheduler.queues import ReadyQueues
from tests.unit.test_queues_and_matching import drain, job


def test_a_flood_in_another_shape_does_not_starve_a_client() -> None:
    q = ReadyQueues()
    for i in range(100):  # the flood, in a shape of its own (miners in eu)
        q.push(job(f"a{i:03d}", client="flood", constraints=Constraints(region="eu")))
    q.push(job("a999", client="flood"))  # and one job in the shape any miner takes, ahead of the small client
    q.push(job("b000", client="small"))
    order = drain(q)  # a miner in eu takes both shapes
    assert order.index("b000") <= 2, order.index("b000")  # was 101: after the whole flood
    assert order[-1] == "a999"  # the flood's own jobs in their order (by age, across shapes)


def test_turns_follow_the_last_dispatch_across_shapes_and_priorities() -> None:
    q = ReadyQueues()
    eu = Constraints(region="eu")
    q.push(job("x0", client="x"))
    q.push(job("y0", client="y"))
    q.push(job("x1", client="x", constraints=eu))
    q.push(job("x2", client="x", constraints=eu))
    assert q.pop_for(lambda shape: shape.constraints == eu).job_id == "x1"  # x served (in eu only)
    assert q.pop_for(lambda shape: not shape.constraints.region).job_id == "y0"  # y's turn in the other shape
