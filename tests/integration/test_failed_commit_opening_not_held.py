"""A miner's new session whose opening write is refused because it builds on an earlier write that failed (the
chaos test, seed 901376546): the session stands, and what the opening decided is undone and read back. Its
hello listed a job that was no longer the miner's (requeued and given to another miner since): the NOT_HELD
telling the miner to drop it left only with the opening's write, and was lost with it. The miner kept running
that job in one of its slots and was given new jobs in all of them.
"""

from __future__ import annotations

import asyncio

import pytest
from coord_support import QUEUED, RUNNING, Harness, Stream, StreamMiner, eventually
from test_failed_commit import held_lock


def replay(stream: Stream, slots: int) -> list[str]:
    """The stream as its miner saw it: the jobs it runs (listed, given; less those answered or cancelled)
    never outnumber its slots, and every cancel names a job it had."""
    problems: list[str] = []
    runs = dict(stream.listed)
    for way, kind, body in stream.log:
        if (way, kind) == ("in", "assignments"):
            runs.update((a.job.job_id, a.attempt) for a in body.assignments)
            if len(runs) > slots:
                problems.append(f"runs {sorted(runs.items())} on {slots} slots")
        elif (way, kind) == ("in", "cancel"):
            if not stream.had(body.job_id, body.attempt):
                problems.append(f"told {body.reason} for {body.job_id} attempt {body.attempt}, never had it")
            if runs.get(body.job_id) == body.attempt:
                del runs[body.job_id]
        elif way == "out" and kind in ("results", "failure", "reject"):
            for r in body.results if kind == "results" else (body,):
                if runs.get(r.job_id) == r.attempt:
                    del runs[r.job_id]
    return problems


def not_held(stream: Stream) -> list[tuple[str, int]]:
    return [
        (b.job_id, b.attempt)
        for w, k, b in stream.log
        if (w, k) == ("in", "cancel") and b.reason == "NOT_HELD"
    ]


def unexplained_holds(coord: Harness, miners: list[StreamMiner]) -> list[str]:
    """Jobs a live session holds, as stored, that its stream was neither given nor listed (the chaos test's
    "a job on a session that never had it")."""
    scheduler = coord.coordinator.scheduler
    out = []
    for m in miners:
        session = scheduler.by_miner.get(m.name)
        stream = m.streams[-1]
        if session is None or stream.session_id != session.session_id:
            continue
        for job_id, held in session.held.items():
            stored = coord.db.scalar("SELECT event_seq FROM jobs WHERE job_id = ?", (job_id,))
            if not stream.had(job_id, held.attempt) and stored == held.job.event_seq:
                out.append(f"{m.name} holds {job_id} attempt {held.attempt}, never given to it nor listed")
    return out


@pytest.mark.coordinator(lease_seconds=30.0, heartbeat_timeout_seconds=30.0)
async def test_a_failed_opening_still_tells_its_miner_to_drop_a_job_it_no_longer_holds(
    coord: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = coord.coordinator.scheduler
    alice = coord.client("alice")
    # Job D ran on miner-01 (attempt 1); the miner vanished and D went to miner-02 (attempt 2).
    m1 = await coord.stream_miner("miner-01", slots=2)
    d = await alice.submit({"d": 1})
    [a_d] = await m1.assignments(1)
    m1.accept(a_d)
    await eventually(lambda: coord.db.job_state(d.job_id) == RUNNING, what="D running on miner-01")
    await m1.kill()
    await eventually(lambda: coord.db.job_state(d.job_id) == QUEUED, what="D requeued (MINER_GONE)")
    m2 = await coord.stream_miner("miner-02", slots=1)
    [a_d2] = await m2.assignments(1)
    assert (a_d2.job.job_id, a_d2.attempt) == (d.job_id, 2)
    # miner-01 is back, busy with E and F; X and Y wait in the queue (no miner free).
    await m1.connect(())
    e, _ = await alice.submit({"e": 1}), await alice.submit({"f": 1})
    a_e, _ = sorted(await m1.assignments(2), key=lambda a: a.job.job_id != e.job_id)
    for n in range(2):
        await alice.submit({"queued": n})
    await eventually(lambda: scheduler.queues.depth == 2, what="X and Y queued")

    blocker = held_lock(coord)
    try:
        m1.accept(a_e)  # E's write waits for the lock, and is refused once it gets it
        await eventually(lambda: scheduler._unsettled.get(e.job_id) is not None, what="E's accept queued")
        # miner-01 comes back (a new process) listing D at attempt 1: no longer its own. Its opening requeues E
        # and F (not listed), building on E's accept, and gives it X and Y; it tells it NOT_HELD for D.
        back = await coord.stream_miner("miner-01", slots=2, running_jobs=((d.job_id, a_d.attempt),))
        opening = scheduler._unsettled[e.job_id]
        blocker.execute(
            f"CREATE TRIGGER test_refuse_job_events BEFORE INSERT ON job_events WHEN NEW.job_id = '{e.job_id}' "
            "AND NEW.reason = 'ACCEPTED' BEGIN SELECT RAISE(ABORT, 'test: this write cannot be made'); END"
        )
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    await asyncio.wait_for(asyncio.shield(opening.settled), 10)
    assert "built on a write that failed" in caplog.text  # (the opening was refused, its session stands)
    await eventually(lambda: not scheduler._detached and not scheduler._unsettled, what="jobs read back")
    # the jobs read back are given out again: miner-01 takes two of E, F, X, Y
    stream = back.streams[-1]
    await eventually(lambda: sum(len(b.assignments) for w, k, b in stream.log if k == "assignments") >= 2,
                     within=10, what="miner-01 given two jobs")  # fmt: skip
    # D is as stored (miner-02's, attempt 2): miner-01 hears NOT_HELD for it, before any job beyond its slots
    await eventually(lambda: not_held(stream), what="miner-01 told NOT_HELD for D")
    assert replay(stream, 2) == []
    assert not_held(stream) == [(d.job_id, a_d.attempt)]
    assert unexplained_holds(coord, [back, m2]) == []
    assert coord.db.scalar("SELECT COUNT(*) FROM job_events WHERE job_id = ? AND reason = 'ACCEPTED'",
                           (e.job_id,)) == 0  # fmt: skip
