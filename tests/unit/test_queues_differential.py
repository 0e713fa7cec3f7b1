"""ReadyQueues against a naive model of its rule, over random operations (seeded).

The rule, as the model applies it by scanning every queued job: a miner takes, among the queued jobs of the
shapes it is eligible for whose price limit is within its price, the one of the highest priority; within a
shape and priority, the client first in turn; across shapes, the client earliest in the turn, then the oldest
job. Within a client, shape and priority, jobs go in push order. A client joins a level's turn at its end
when its first queued job there arrives, leaves it with its last one, and goes to the end of every turn it
is in when it is served. Across shapes likewise: a client takes its place at the end of the turn when its
first queued job arrives (with none before), goes to the end when served, and is forgotten with its last
queued job. Jobs that left QUEUED unannounced are skipped, and counted out when reached.

Miners pop either through their capabilities' reach (the shapes eligible() admits, kept up to date by the
queues, with few reaches kept so that they are evicted and rebuilt) or with an arbitrary predicate. Miners
come back with other capabilities (drawn from a small pool: sessions share reaches), holding on to the reach
they had until their next pop, as a session does, and releasing it when they go: a reach is kept while a
miner holds it, and no longer.

Checked at every step: the job popped, the counts (depth, by priority, per shape and lane), that empty
lanes, levels and shapes are gone (the turns as the queues hold them equal the model's), that the turn
across shapes holds exactly the clients with queued jobs, and that every kept reach holds exactly the
shapes its capabilities are eligible for."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from coordinator.domain.matching import eligible
from coordinator.domain.model import Capabilities, Constraints, Gpu, Job, JobState
from coordinator.scheduler.queues import Reach, ReadyQueues
from tests.unit.test_queues_and_matching import job

BASES = [
    Constraints(),
    Constraints(region="eu"),
    Constraints(gpu="a100"),
    Constraints(region="us", cuda="12"),
    Constraints(region="eu", min_vram_gb=40),
    Constraints(min_vram_gb=80),
    Constraints(region="ap"),
    Constraints(models=("llama",), labels=(("tier", "gold"),)),
]
CAPS = [
    Capabilities(),
    Capabilities(region="eu", gpus=(Gpu("A100-SXM", 80),), cuda_version="12.1"),
    Capabilities(region="eu", gpus=(Gpu("rtx4090", 24),), price="7"),
    Capabilities(region="us", gpus=(Gpu("a100", 40),), cuda_version="12.0"),
    Capabilities(region="us", cuda_version="11.8"),
    Capabilities(region="ap", models=frozenset({"llama"}), labels=(("tier", "gold"),)),
    Capabilities(gpus=(Gpu("h100", 80),), models=frozenset({"llama", "x"}), labels=(("tier", "gold"),)),
]
LIMITS = ["", "", "", "", "0", "1", "1.0", "1.00", "1.5", "2", "0.5", "999999999999999999.999999999"]
PRICES = [None, Decimal(0), Decimal(1), Decimal("1.0"), Decimal("1.5"), Decimal(2), Decimal(3)]
GPUS = [Gpu("a100", 40), Gpu("A100-SXM", 80), Gpu("rtx4090", 24), Gpu("h100", 80)]


def random_caps(rng: random.Random) -> Capabilities:
    """A miner's capabilities on a new connection: from a pool small enough for sessions to share them."""
    return Capabilities(
        region=rng.choice(("", "eu", "us", "ap")),
        gpus=tuple(g for g in GPUS if rng.random() < 0.3),
        cuda_version=rng.choice(("", "11.8", "12.0", "12.1")),
        models=frozenset(m for m in ("llama", "x") if rng.random() < 0.4),
        labels=rng.choice(((), (("tier", "gold"),), (("tier", "silver"),))),
        price=rng.choice(("0", "1", "7")),
    )


class Model:
    def __init__(self) -> None:
        self.entries: list[tuple[int, Job]] = []  # (push number, job), in push order
        self.counted: dict[str, int] = {}  # job id -> push number of its entry, while in the queues
        self.keys: dict[str, tuple[int, int, str]] = {}  # job id -> (shape, priority, client)
        self.limits: dict[str, Decimal | None] = {}
        self.turn: dict[tuple[int, int], list[str]] = {}  # (shape, priority) -> clients in turn
        self.live: dict[tuple[int, int, str], int] = {}
        self.served: dict[str, int] = {}  # client with queued jobs -> its place in the turn across shapes
        self.ticks = 0  # one per client joining a level's turn and per dispatch
        self.pushes = 0

    def push(self, j: Job, shape: int) -> None:
        if j.job_id in self.counted:
            return
        key = (shape, j.priority, j.client_id)
        self.pushes += 1
        self.entries.append((self.pushes, j))
        self.counted[j.job_id] = self.pushes
        self.keys[j.job_id] = key
        self.limits[j.job_id] = Decimal(j.constraints.max_price) if j.constraints.max_price else None
        if key not in self.live:
            self.ticks += 1
            if not self.queued(j.client_id):  # its first queued job: it joins the turn at the end
                self.served[j.client_id] = self.ticks
        self.live[key] = self.live.get(key, 0) + 1
        if self.live[key] == 1:
            self.turn.setdefault(key[:2], []).append(key[2])

    def queued(self, client: str) -> bool:
        return any(key[2] == client for key in self.live)

    def discard(self, j: Job) -> None:
        if j.job_id in self.counted:
            self._out(j)

    def _out(self, j: Job) -> None:
        del self.counted[j.job_id]
        key = self.keys[j.job_id]
        self.live[key] -= 1
        if self.live[key] == 0:
            del self.live[key]
            order = self.turn[key[:2]]
            order.remove(key[2])
            if not order:
                del self.turn[key[:2]]
            if not self.queued(key[2]):  # its last queued job: forgotten
                del self.served[key[2]]

    def sync(self) -> None:
        """Count out the jobs that left unannounced once the queues reached them; forget stale entries."""
        kept = []
        for number, j in self.entries:
            if self.counted.get(j.job_id) == number:
                if j.in_queue:
                    kept.append((number, j))
                else:
                    assert j.state is not JobState.QUEUED, f"{j.job_id} counted out while queued"
                    self._out(j)
        self.entries = kept

    def pop(self, shapes: set[int], price: Decimal | None, passed_over: set[str] = frozenset()) -> Job | None:
        firsts: dict[tuple[int, int], dict[str, Job]] = {}  # (shape, priority) -> client -> its first job
        for number, j in self.entries:
            if self.counted.get(j.job_id) != number or j.state is not JobState.QUEUED:
                continue
            if j.job_id in passed_over:  # as if it were not there
                continue
            shape, priority, client = self.keys[j.job_id]
            limit = self.limits[j.job_id]
            if shape in shapes and (price is None or limit is None or limit >= price):
                firsts.setdefault((shape, priority), {}).setdefault(client, j)
        top: dict[int, int] = {}
        for shape, priority in firsts:
            top[shape] = max(top.get(shape, -1), priority)
        best: tuple[tuple[int, int, str], Job] | None = None
        for (shape, priority), by_client in firsts.items():
            if priority != top[shape]:
                continue
            client = next(c for c in self.turn[(shape, priority)] if c in by_client)
            j = by_client[client]
            key = (-priority, self.served[client], j.job_id)
            if best is None or key < best[0]:
                best = (key, j)
        if best is None:
            return None
        j = best[1]
        self._out(j)
        self.ticks += 1
        if j.client_id in self.served:
            self.served[j.client_id] = self.ticks
        for order in self.turn.values():  # its turn ends in every shape and priority
            if j.client_id in order:
                order.remove(j.client_id)
                order.append(j.client_id)
        return j


def refusals(rng: random.Random, jobs: list[Job]) -> set[str]:
    """Jobs a popping miner rejected, in their pause (passed over), for a third of the pops: none otherwise."""
    if rng.random() < 2 / 3:
        return set()
    return {j.job_id for j in jobs if j.state is JobState.QUEUED and rng.random() < 0.3}


def check_counts(q: ReadyQueues, m: Model, index: dict[Constraints, int]) -> None:
    assert q.depth == len(m.counted)
    by_priority = [0] * 10
    for job_id in m.counted:
        by_priority[m.keys[job_id][1]] += 1
    assert q.by_priority == by_priority
    turn = {}
    for base, shape in q.shapes.items():
        i = index[base]
        assert shape.live == sum(n for key, n in m.live.items() if key[0] == i) > 0
        for priority, level in shape.levels.items():
            turn[(i, priority)] = q.turn(level)
            for client, lane in level.clients.items():
                assert lane.live == m.live[(i, priority, client)]
    assert turn == m.turn
    assert q.served == m.served  # only clients with queued jobs, in the model's turn
    check_reaches(q)


def check_reaches(q: ReadyQueues) -> None:
    """Every kept reach holds exactly the shapes its capabilities are eligible for; the region index is exact."""
    assert len(q.reaches) <= q.max_reaches
    for reach in q.reaches.values():
        assert reach.live
        want = {id(s) for s in q.shapes.values() if eligible(s.constraints, reach.caps)}
        assert {id(s) for s in reach.shapes} == want, reach.caps
    by_region: dict[str, set[int]] = {}
    for base, shape in q.shapes.items():
        by_region.setdefault(base.region, set()).add(id(shape))
    assert {region: {id(s) for s in shapes} for region, shapes in q.by_region.items()} == by_region
    assert {r: set(reaches) for r, reaches in q.reaches_in.items()} == {
        r: {reach for reach in q.reaches.values() if reach.caps.region == r}
        for r in {reach.caps.region for reach in q.reaches.values()}
    }


def run(seed: int, ops: int = 2000) -> None:
    rng = random.Random(seed)
    q, m = ReadyQueues(reaches=rng.choice((1, 2, 3, 128))), Model()  # few kept: evicted and rebuilt
    # miner -> its capabilities and the reach it holds, as a session does (from its first pop)
    miners: dict[int, tuple[Capabilities, Reach | None]] = {i: (caps, None) for i, caps in enumerate(CAPS)}
    bases = BASES[: rng.randint(1, len(BASES))]
    index = {base: i for i, base in enumerate(bases)}
    clients = [f"c{i}" for i in range(rng.randint(1, 5))]
    priorities = rng.sample(range(10), rng.randint(1, 3))
    pushing = rng.uniform(0.3, 0.5)  # share of pushes: some runs grow, some stay short
    jobs: list[Job] = []
    shape_of: dict[str, int] = {}
    taken: list[Job] = []  # popped: retried later (pushed again)
    for step in range(ops):
        r = rng.random()
        if r < pushing or not jobs:
            i = rng.randrange(len(bases))
            b = bases[i]
            c = Constraints(b.gpu, b.cuda, b.min_vram_gb, b.models, b.region, rng.choice(LIMITS), b.labels)
            j = job(
                f"j{len(jobs):06d}",
                client=rng.choice(clients),
                priority=rng.choice(priorities),
                constraints=c,
            )
            jobs.append(j)
            shape_of[j.job_id] = i
            q.push(j)
            m.push(j, i)
        elif r < pushing + 0.08:  # canceled or expired: announced
            j = rng.choice(jobs)
            if j.state is JobState.QUEUED:
                j.state = rng.choice((JobState.CANCELED, JobState.EXPIRED))
                q.discard(j)
                m.discard(j)
        elif r < pushing + 0.12:  # left QUEUED unannounced
            j = rng.choice(jobs)
            if j.state is JobState.QUEUED:
                j.state = JobState.CANCELED
        elif r < pushing + 0.2 and taken:  # retried: back in the queues (pushed twice, counted once)
            j = taken.pop(rng.randrange(len(taken)))
            j.state = JobState.QUEUED
            for _ in range(rng.choice((1, 1, 2))):
                q.push(j)
                m.push(j, shape_of[j.job_id])
        elif r < pushing + 0.24:  # a miner back on a new connection, with other capabilities (or the same)
            miner = rng.randrange(len(miners))
            held = miners[miner][1]
            if held is not None:
                q.release(held)  # (its old session is gone)
            miners[miner] = (random_caps(rng), None)
        elif rng.random() < 0.6:  # a miner pops through its capabilities' reach
            price = rng.choice(PRICES)
            miner = rng.randrange(len(miners))
            caps, held = miners[miner]
            reach = q.reach(caps, held)
            miners[miner] = (caps, reach)
            refused = refusals(rng, jobs)
            got = q.pop_in(reach, price, (lambda j: j.job_id in refused) if refused else None)  # noqa: B023
            want = m.pop({i for i, b in enumerate(bases) if eligible(b, caps)}, price, refused)
            assert (got and got.job_id) == (want and want.job_id), (seed, step)
            if got is not None:
                assert not got.in_queue
                got.state = JobState.ASSIGNED
                taken.append(got)
        else:
            price = rng.choice(PRICES)
            allowed = {i for i in range(len(bases)) if rng.random() < 0.75}
            fits = {bases[i] for i in allowed}
            refused = refusals(rng, jobs)
            passed_over = (lambda j: j.job_id in refused) if refused else None  # noqa: B023
            got = q.pop_for(lambda shape: shape.constraints in fits, price, passed_over)  # noqa: B023
            want = m.pop(allowed, price, refused)
            assert (got and got.job_id) == (want and want.job_id), (seed, step)
            if got is not None:
                assert not got.in_queue
                got.state = JobState.ASSIGNED
                taken.append(got)
        m.sync()
        check_counts(q, m, index)
        holding = [reach for _, reach in miners.values() if reach is not None and reach.live]
        assert {key: reach.holders for key, reach in q.reaches.items()} == {
            reach.key: holding.count(reach) for reach in holding
        }  # a reach is kept while a miner holds it, and no longer
    while (got := q.pop_for(lambda shape: True)) is not None:
        want = m.pop(set(range(len(bases))), None)
        assert want is not None and got.job_id == want.job_id, seed
        m.sync()
    m.sync()
    assert m.pop(set(range(len(bases))), None) is None
    assert q.depth == 0 and q.by_priority == [0] * 10 and q.shapes == {} and q.lanes == {}
    assert q.served == {} and q.by_region == {}  # nothing left of the clients or shapes seen
    assert all(reach.shapes == {} for reach in q.reaches.values())


@pytest.mark.parametrize("seeds", [range(k, 60, 4) for k in range(4)], ids=lambda s: f"seeds{s.start}")
def test_queues_follow_the_model(seeds: range) -> None:
    for seed in seeds:
        run(seed)
