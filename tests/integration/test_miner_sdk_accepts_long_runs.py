"""A stream miner accepts a job still running after ACCEPT_AFTER_S: the coordinator (and a client watching it) sees it
RUNNING while it runs, not ASSIGNED until its result. A job done sooner is accepted by its result alone (one commit:
ASSIGNED -> RUNNING -> COMPLETED), so short jobs cost no message and no commit more."""

from __future__ import annotations

from aitbc.miner import ACCEPT_AFTER_S, echo_runner
from coord_support import ASSIGNED, COMPLETED, RUNNING, Harness, eventually, gated_sdk_miner, sdk_miner


async def test_a_job_still_running_after_a_moment_shows_running(coord: Harness) -> None:
    alice = coord.client("alice")
    miner, runner = gated_sdk_miner(coord.address)
    coord.run_miner(miner)
    job = await alice.submit({"n": 1})
    await eventually(lambda: runner.runs == [1], what="the job running on the miner")
    await eventually(lambda: coord.db.job_state(job.job_id) == RUNNING, within=ACCEPT_AFTER_S + 3.0,
                     what="the job RUNNING while its runner runs")  # fmt: skip
    # not accepted at once (a short job would be done by then): ACCEPT_AFTER_S after it started. (Not checked as
    # "still ASSIGNED" once the runner is seen started: a host stalled ACCEPT_AFTER_S meanwhile sees it RUNNING.)
    assigned, accepted = coord.db.events(job.job_id)[1:3]
    waited = (accepted["occurred_us"] - assigned["occurred_us"]) / 1e6
    assert (assigned["to_state"], accepted["reason"]) == (ASSIGNED, "ACCEPTED"), coord.db.events(job.job_id)
    assert waited >= ACCEPT_AFTER_S, f"accepted {waited:.3f} s after its assignment"
    runner.gate.set()
    done = await coord.finished(alice, job.job_id)
    assert (done.state, done.attempt) == (COMPLETED, 1)
    assert [e["reason"] for e in coord.db.events(job.job_id)] == [
        "SUBMITTED",
        "ASSIGNED",
        "ACCEPTED",
        "COMPLETED",
    ]


async def test_a_short_job_is_accepted_by_its_result_alone(coord: Harness) -> None:
    alice = coord.client("alice")
    coord.run_miner(sdk_miner(coord.address, echo_runner))
    job = await alice.submit({"n": 1})
    done = await coord.finished(alice, job.job_id)
    assert done.state == COMPLETED
    accepted, completed = coord.db.events(job.job_id)[-2:]
    assert (accepted["reason"], completed["reason"]) == ("ACCEPTED", "COMPLETED")
    assert accepted["occurred_us"] == completed["occurred_us"]  # one commit: the result implied the accept
