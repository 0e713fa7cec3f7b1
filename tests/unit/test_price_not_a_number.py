"""A price that is not a number (validation refuses it; a row or a miner from before it could carry one) is
read as unparsable: the queues' price index and eligibility compare numbers only, and a NaN made those
comparisons raise (a push into a lane indexed by price, every fill of the miners that could take the job)."""

from __future__ import annotations

from decimal import Decimal

from coordinator.domain.matching import decimal, eligible, split_price
from coordinator.domain.model import Capabilities, Constraints
from coordinator.scheduler.queues import ReadyQueues
from tests.unit.test_queues_and_matching import job


def test_not_a_number_reads_as_unparsable() -> None:
    for text in ("NaN", "nan", "sNaN", "-NaN"):
        assert decimal(text) == Decimal(0)
        assert decimal(text, "1") == Decimal(1)
    assert split_price(Constraints(region="eu", max_price="NaN")) == (Constraints(region="eu"), Decimal(0))
    assert eligible(Constraints(max_price="NaN"), Capabilities(price="0"))
    assert eligible(Constraints(max_price="1"), Capabilities(price="NaN"))  # read as 0: within


def test_queues_take_a_limit_that_is_not_a_number() -> None:
    q = ReadyQueues()
    q.push(job("a", constraints=Constraints(max_price="2")))
    q.push(job("b", constraints=Constraints(max_price="NaN")))  # read as 0: free miners only
    assert q.pop_for(lambda shape: True, Decimal(1)).job_id == "a"
    assert q.pop_for(lambda shape: True, Decimal(1)) is None
    assert q.pop_for(lambda shape: True, Decimal(0)).job_id == "b"
