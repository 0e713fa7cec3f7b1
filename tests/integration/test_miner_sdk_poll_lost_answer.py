"""A poll miner's result whose answer is lost (the connection cut after the coordinator stored it) is sent again
and completes once: the coordinator answers the repeat with the same acknowledgement, no second receipt, no second
run; the miner counts one ack and keeps nothing."""

from __future__ import annotations

from coord_support import COMPLETED, Harness, eventually, gated_sdk_miner

from tests.tcp_relay import DOWN, Relay


async def test_a_result_whose_answer_is_lost_is_sent_again_and_completes_once(coord: Harness) -> None:
    alice = coord.client("alice")
    relay = Relay("127.0.0.1", coord.coordinator.port)
    await relay.start()
    try:
        miner, runner = gated_sdk_miner(f"127.0.0.1:{relay.port}", transport="poll")
        coord.run_miner(miner)
        job = await alice.submit({"n": 1})
        await eventually(lambda: miner.running, what="the job running on the poll miner")

        relay.stall(DOWN)  # requests reach the coordinator; no answer comes back
        runner.gate.set()
        await eventually(lambda: coord.db.job_state(job.job_id) == COMPLETED, what="the result stored")
        assert job.job_id in miner.unacked, "the miner had its ack though no answer came back"
        assert relay.cut("rst") >= 1  # the SubmitResult call fails with its answer unread
        relay.heal()

        await eventually(
            lambda: not miner.unacked, within=10.0, what="the result sent again and acknowledged"
        )
        assert miner.acked == 1 and runner.runs == [1]
        done = await coord.finished(alice, job.job_id)
        assert (done.state, done.attempt) == (COMPLETED, 1)
        assert coord.db.count("receipts", job.job_id) == 1 and coord.db.count("job_results", job.job_id) == 1
        assert [e["reason"] for e in coord.db.events(job.job_id)].count("COMPLETED") == 1
        result = (await alice.result(job.job_id)).result
        assert result.receipt_id and result.attempt == 1
    finally:
        await relay.close()
