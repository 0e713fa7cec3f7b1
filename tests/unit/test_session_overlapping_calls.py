"""A miner's overlapping unary calls (SubmitResult, ReportFailure): the lease check looks at when the oldest call
still being handled began (Session.handling_since_us). It used to keep the first call of an overlapping run,
long over, so a call begun after a lease ran out held that lease up (and a miner whose calls never stopped
overlapping kept its leases for ever)."""

from __future__ import annotations

import time

from coordinator.domain.model import Capabilities
from coordinator.scheduler.sessions import Session


def unary_session() -> Session:
    return Session("s-1", "miner-00", Capabilities(slots=2), "unary", connected_us=1)


def test_the_oldest_call_still_handled_counts_not_the_first_of_an_overlapping_run() -> None:
    session = unary_session()
    first = session.handling_one()
    first.__enter__()
    began_first = session.handling_since_us
    time.sleep(0.002)  # (the second call begins on a later clock reading)
    second = session.handling_one()
    second.__enter__()
    assert session.handling_since_us == began_first  # both handled: the older one counts
    first.__exit__(None, None, None)
    assert session.handling and session.handling_since_us > began_first  # the second one's, begun later
    second.__exit__(None, None, None)
    assert (session.handling, session.handling_since_us) == (0, 0)
