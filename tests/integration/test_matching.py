"""Which job a miner gets: hard constraints (region, GPU, VRAM, models, price), FIFO within a priority,
priority order, and fair share between clients."""

from __future__ import annotations

from coord_support import ASSIGNED, QUEUED, Harness, StreamMiner

RTX_4090 = (("NVIDIA GeForce RTX 4090", 24),)


async def take(miner: StreamMiner, n: int) -> list[str]:
    """Dispatch order: take one assignment at a time (1 slot), finish it, take the next."""
    order = []
    for _ in range(n):
        a = await miner.next("assignment")
        order.append(a.job.job_id)
        miner.result(a.job.job_id, a.attempt)
    return order


async def test_fifo_within_a_priority(coord: Harness) -> None:
    alice = coord.client("alice")
    ids = [(await alice.submit({"n": i}, priority=4)).job_id for i in range(6)]
    miner = await coord.stream_miner("miner-00", slots=1)
    assert await take(miner, 6) == ids


async def test_eu_west_4090_miner_skips_us_east_and_gets_the_matching_job(coord: Harness) -> None:
    alice = coord.client("alice")
    # submitted first (so older), each failing one hard constraint of the miner below
    us_east = await alice.submit({"j": "us"}, constraints={"region": "us-east"})
    too_much_vram = await alice.submit({"j": "vram"}, constraints={"region": "eu-west", "min_vram_gb": 48})
    other_gpu = await alice.submit({"j": "a100"}, constraints={"gpu": "A100"})
    missing_model = await alice.submit({"j": "m"}, constraints={"models": ["llama-3-70b"]})
    new_cuda = await alice.submit({"j": "cuda"}, constraints={"cuda": "12.4"})
    wrong_label = await alice.submit({"j": "l"}, constraints={"labels": {"tier": "gold"}})
    match = await alice.submit({"j": "eu"}, constraints={
        "region": "eu-west", "gpu": "RTX 4090", "min_vram_gb": 24, "models": ["llama-3-8b", "sdxl"],
        "cuda": "12.1", "labels": {"tier": "silver"}})  # fmt: skip

    miner = await coord.stream_miner("miner-00", slots=4, gpus=RTX_4090, region="eu-west", cuda="12.2",
                                     models=("llama-3-8b", "sdxl", "whisper"), labels={"tier": "silver"})  # fmt: skip
    [a] = await miner.assignments(1)
    assert a.job.job_id == match.job_id
    assert a.job.constraints.region == "eu-west"
    for skipped in (us_east, too_much_vram, other_gpu, missing_model, new_cuda, wrong_label):
        assert (await alice.get(skipped.job_id)).state == QUEUED
    assert (await alice.get(match.job_id)).state == ASSIGNED
    # a us-east miner takes the us-east job the moment it connects
    us = await coord.stream_miner("miner-01", slots=1, region="us-east")
    [b] = await us.assignments(1)
    assert b.job.job_id == us_east.job_id


async def test_miner_priced_3_5_skips_max_price_2_and_takes_max_price_4(coord: Harness) -> None:
    alice = coord.client("alice")
    cheap = await alice.submit({"j": "cheap"}, constraints={"max_price": "2"})
    fair = await alice.submit({"j": "fair"}, constraints={"max_price": "4"})
    miner = await coord.stream_miner("miner-00", slots=2, price="3.5")
    [a] = await miner.assignments(1)
    assert a.job.job_id == fair.job_id
    assert (await alice.get(cheap.job_id)).state == QUEUED
    # a cheaper miner takes the other at once
    cheaper = await coord.stream_miner("miner-01", slots=1, price="1.5")
    [b] = await cheaper.assignments(1)
    assert b.job.job_id == cheap.job_id


async def test_higher_priority_first(coord: Harness) -> None:
    alice = coord.client("alice")
    by_priority = {}
    for i, p in enumerate((0, 5, 9, 5, 0, 7)):
        by_priority[(await alice.submit({"n": i}, priority=p)).job_id] = (p, i)
    miner = await coord.stream_miner("miner-00", slots=1)
    order = await take(miner, 6)
    assert order == sorted(by_priority, key=lambda j: (-by_priority[j][0], by_priority[j][1]))


async def test_fair_share_a_flood_does_not_starve_another_client(coord: Harness) -> None:
    alice, bob = coord.client("alice"), coord.client("bob")
    flood = await alice.submit_many([{"n": i} for i in range(50)])
    bobs = [(await bob.submit({"b": i})).job_id for i in range(2)]
    miner = await coord.stream_miner("miner-00", slots=1)
    order = await take(miner, 6)
    positions = [order.index(j) for j in bobs if j in order]
    assert len(positions) == 2, f"bob's jobs were not among the first 6 dispatches: {order}"
    assert max(positions) <= 4
    # alice's own jobs still go in her submission order
    alices = [j for j in order if j not in bobs]
    assert alices == [j.job_id for j in flood[: len(alices)]]
