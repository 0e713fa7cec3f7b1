"""Which rejects the SDK miner forgets on its stream: those the coordinator has read for sure (helper h2).

The coordinator gives a stream no more jobs than its slots, counting those whose reject it has not read, and
reads in order: once an assignment arrives, only the last `slots - assigned` rejects may be unread. A job it let
go of otherwise (a cancel, a lease run out) is canceled on the stream first, and no longer counts. The stream here
is scripted: what a coordinator sends, in order, read by the miner's own reader (a draining miner rejects every
assignment at once, so no job runs)."""

from __future__ import annotations

import asyncio

import grpc
from aitbc.coordinator.v1 import job_pb2
from aitbc.coordinator.v1 import miner_service_pb2 as pb
from aitbc.miner import Miner, probe_capabilities


class Scripted:
    """The read side of a Connect call: the given messages, then the end of the stream."""

    def __init__(self, messages: list[pb.ConnectResponse]) -> None:
        self.messages = list(messages)

    async def read(self) -> object:
        return self.messages.pop(0) if self.messages else grpc.aio.EOF


def assigned(*jobs: tuple[str, int]) -> pb.ConnectResponse:
    return pb.ConnectResponse(assignments=pb.Assignments(assignments=[
        pb.Assignment(job=job_pb2.Job(job_id=job_id), attempt=attempt) for job_id, attempt in jobs]))  # fmt: skip


def canceled(job_id: str, attempt: int) -> pb.ConnectResponse:
    return pb.ConnectResponse(cancel=pb.Cancel(job_id=job_id, attempt=attempt, reason="LEASE_EXPIRED"))


async def read(slots: int, messages: list[pb.ConnectResponse]) -> tuple[Miner, list[str]]:
    """A draining miner of `slots` reading `messages`: it, and the job ids of the rejects it wrote, in order."""
    miner = Miner("127.0.0.1:1", "key", capabilities=probe_capabilities(slots=slots))
    miner.draining = True
    outbox: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()
    miner._outbox = outbox
    assert await miner._read(Scripted(messages)) == ("EOF", 0.0)
    written = []
    while not outbox.empty():
        written.append(outbox.get_nowait().reject.job_id)
    return miner, written


async def test_only_the_rejects_an_assignment_proves_read_are_forgotten() -> None:
    miner, written = await read(2, [assigned(("a", 1), ("b", 1)), assigned(("c", 1)), assigned(("d", 1))])
    assert written == ["a", "b", "c", "d"]
    # at "c": at most 1 unread (b), a forgotten; at "d": at most 1 unread (c), b forgotten
    assert list(miner._rejects) == ["c", "d"]


async def test_a_reject_whose_job_was_canceled_meanwhile_does_not_count() -> None:
    """j and r rejected, neither read yet; r's lease runs out (canceled on the stream), its slot filled with k:
    j may still be unread, and is kept (forgotten for r's sake, a stream lost then would lose j's attempt)."""
    script = [assigned(("j", 1)), assigned(("r", 1)), canceled("r", 1), assigned(("k", 1))]
    miner, written = await read(2, script)
    assert written == ["j", "r", "k"]
    assert list(miner._rejects) == ["j", "k"]


async def test_a_cancel_of_another_attempt_keeps_the_reject() -> None:
    miner, _ = await read(1, [assigned(("j", 2)), canceled("j", 1)])
    assert miner._rejects == {"j": (2, "draining")}


async def test_a_job_rejected_again_counts_as_its_latest_reject() -> None:
    """j's attempt 2 is rejected after m's reject: m, written before it, is the older one, forgotten first."""
    script = [assigned(("j", 1), ("m", 1)), assigned(("j", 2)), assigned(("n", 1)), assigned(("p", 1))]
    miner, written = await read(3, script)
    assert written == ["j", "m", "j", "n", "p"]
    assert list(miner._rejects) == ["j", "n", "p"] and miner._rejects["j"][0] == 2
