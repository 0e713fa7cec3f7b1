"""In-memory ready queues: by constraint shape, then priority, then round-robin over clients, then age.

A shape holds the queued jobs whose constraints are alike but for their price limit (max_price): jobs that
each carry their own limit share one shape. A miner's capabilities have a `Reach`: the shapes it is eligible
for, kept up to date as shapes come and go (a new shape is checked against the reaches that may take it: by
the region it names, those of miners in that region; a shape naming none, every reach). Finding work for a
miner costs O(shapes it is eligible for): neither queue depth, nor the number of distinct price limits, nor
shapes the miner cannot take (20,000 regions, say) slow it. Reaches are bounded (REACHES, the least recently
used goes), as clients choose the constraint sets and miners their capabilities, and a reach no session holds
goes at once (each kept is checked against every new shape). Within a shape and
priority each client has a lane, a FIFO indexed by price limit: the oldest job a miner at unit price p may
take is found in O(1) when the lane's first job is within p, in O(log n) otherwise (a lane without limits
keeps no index). A pop may pass over given jobs (a miner's own refusals, in their pause): they keep their place
in their lane and their client its turn, for every other miner.

Clients take turns, so one client's flood cannot starve another's jobs. A client takes its place at the end
of the turn when its first queued job arrives (having none before), goes to the end each time it is served,
and leaves the turn with its last queued job: a client with nothing queued is forgotten (no credit for time
with nothing queued; memory bounded by the clients with queued jobs). Within a shape and priority the same
holds per level: a client joins a level's turn at its end, and goes to the end of every turn it is in when
it is served, wherever that is (at no cost per level: see _Level); across shapes, the earlier place in the
turn wins. Removal is lazy: a job
that left QUEUED (canceled, expired) is skipped when it is reached; a lane, a priority level or a shape is
dropped the moment no queued job is left in it, stale entries with it. The counts (depth, depth by
priority) are exact at all times, from each job's `in_queue` mark: reading them never scans the queues.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal

from ..domain.matching import eligible, split_price
from ..domain.model import Capabilities, Constraints, Gpu, Job, JobState

_NO_LIMIT = Decimal("Infinity")  # a job without a price limit: any miner's price is within it
_GONE = Decimal("-Infinity")  # the limit of an entry taken out: no price is within it
_ANY_PRICE = Decimal(-1)  # below every limit (limits are non-negative): a pop without a miner price
Skip = Callable[["Job"], bool] | None  # jobs a pop passes over (see ReadyQueues.pop_for)


class _Lane:
    """One client's queued jobs of one shape at one priority, in push order, indexed by their price limits:
    a max-tree over the positions finds the first job within a miner's price in O(log n). A lane none of
    whose jobs has a limit (the usual case) keeps no tree: its first entry is within any price."""

    __slots__ = ("cap", "client", "end", "head", "jobs", "joined", "level", "live", "priority", "shape", "tree")  # fmt: skip

    def __init__(self, shape: Shape, priority: int, client: str, joined: int) -> None:
        self.shape, self.priority, self.client = shape, priority, client
        self.level = shape.levels[priority]
        self.joined = joined  # the tick its client joined the level's turn (unique: a lane's id too)
        self.cap = 8  # positions (a power of two); the tree's leaves are tree[cap:]
        self.jobs: list[Job | None] = [None] * self.cap
        self.tree: list[Decimal] | None = None  # none while no entry has a limit
        self.end = 0  # next free position
        self.head = 0  # no entry before it
        self.live = 0  # its jobs in the queues (in_queue); entries of jobs counted out may remain

    def __iter__(self) -> Iterator[Job]:
        """Its entries' jobs, oldest first (some may have left the queues: they are skipped when reached)."""
        return (job for job in self.jobs[self.head : self.end] if job is not None)

    def push(self, job: Job, limit: Decimal | None) -> None:
        if self.end == self.cap:
            self._compact()
        self.jobs[self.end] = job
        if limit is not None and self.tree is None:
            self._build([_NO_LIMIT if j is not None else _GONE for j in self.jobs[: self.end]])
        if self.tree is not None:
            self._set(self.end, _NO_LIMIT if limit is None else limit)
        self.end += 1

    def first(self, price: Decimal) -> int:
        """The first position whose limit admits price, or -1."""
        tree, cap = self.tree, self.cap
        if tree is None:
            return self.head if self.head < self.end else -1
        if self.head < self.end and tree[cap + self.head] >= price:
            return self.head  # the usual case: the oldest entry is within price
        if not tree[1] >= price:
            return -1
        return self._descend(1, price)

    def after(self, position: int, price: Decimal) -> int:
        """The first position after `position` holding an entry whose limit admits price, or -1."""
        start, tree, cap = position + 1, self.tree, self.cap
        if start >= self.end:
            return -1
        if tree is None:
            jobs, end = self.jobs, self.end
            while start < end and jobs[start] is None:
                start += 1
            return start if start < end else -1
        node = start + cap
        if tree[node] >= price:
            return start
        # up until a right sibling's subtree holds one, then down to its first (positions after start only)
        while node > 1:
            if not node & 1 and tree[node + 1] >= price:
                return self._descend(node + 1, price)
            node >>= 1
        return -1

    def _descend(self, node: int, price: Decimal) -> int:
        """The first position under node (whose subtree holds one) with a limit admitting price."""
        tree, cap = self.tree, self.cap
        assert tree is not None
        while node < cap:
            node <<= 1
            if not tree[node] >= price:
                node += 1
        return node - cap

    def take(self, position: int) -> Job:
        job = self.jobs[position]
        assert job is not None
        self.jobs[position] = None
        if self.tree is not None:
            self._set(position, _GONE)
        if position == self.head:
            jobs, end, head = self.jobs, self.end, position + 1
            while head < end and jobs[head] is None:
                head += 1
            self.head = head
        return job

    def _set(self, position: int, limit: Decimal) -> None:
        tree = self.tree
        assert tree is not None
        node = position + self.cap
        tree[node] = limit
        node >>= 1
        while node:
            left, right = tree[2 * node], tree[2 * node + 1]
            top = left if left >= right else right
            if tree[node] == top:
                break  # (nor do its ancestors change)
            tree[node] = top
            node >>= 1

    def _build(self, limits: list[Decimal]) -> None:
        """The tree over positions 0.. with these limits (the rest empty)."""
        size = self.cap
        tree = self.tree = [_GONE] * (2 * size)
        tree[size : size + len(limits)] = limits
        for node in range(size - 1, 0, -1):
            left, right = tree[2 * node], tree[2 * node + 1]
            tree[node] = left if left >= right else right

    def _compact(self) -> None:
        """Full: keep the entries of jobs still in the queues, in order, in room for twice as many."""
        cap, tree, jobs = self.cap, self.tree, self.jobs
        kept = [i for i in range(self.end) if (job := jobs[i]) is not None and job.in_queue]
        size = 8
        while size < 2 * len(kept):
            size *= 2
        self.cap, self.end, self.head = size, len(kept), 0
        self.jobs = [jobs[i] for i in kept] + [None] * (size - len(kept))
        self.tree = None
        if tree is not None:
            limits = [tree[cap + i] for i in kept]
            if any(limit != _NO_LIMIT for limit in limits):
                self._build(limits)


class _Level:
    """One priority level of one shape: a lane per client, and the clients' turn.

    A client's place in the turn is the tick it last went to its end: when its lane joined, or when it was
    last served (anywhere), whichever is later. The turn is a heap of (place, lane id, lane) as each place was
    when its entry was made: serving a client moves it to the end of every turn it is in without touching
    them (an entry behind its client's place is put right when it reaches the top; a gone lane's is dropped
    then)."""

    __slots__ = ("clients", "turn")

    def __init__(self) -> None:
        self.clients: dict[str, _Lane] = {}
        self.turn: list[tuple[int, int, _Lane]] = []


def _ready(job: Job) -> bool:
    return job.in_queue and job.state is JobState.QUEUED  # not counted out (canceled, expired, taken out)


class Shape:
    """The queued jobs whose constraints are these, whatever their price limits: priority -> client -> lane."""

    __slots__ = ("constraints", "levels", "live")

    def __init__(self, constraints: Constraints) -> None:
        self.constraints = constraints  # without max_price: the queue checks each job's limit itself
        self.levels: dict[int, _Level] = {}
        self.live = 0  # its jobs in the queues


# capability sets whose eligible shapes the queues keep up to date (the least recently used goes first)
REACHES = 128

ReachKey = tuple[str, tuple[Gpu, ...], str, frozenset[str], tuple[tuple[str, str], ...]]


def reach_key(caps: Capabilities) -> ReachKey:
    """What eligibility for a shape (constraints without a price limit) reads of a miner's capabilities."""
    return caps.region, caps.gpus, caps.cuda_version, caps.models, caps.labels


class Reach:
    """The shapes miners with these capabilities are eligible for, kept while `live` (see ReadyQueues.reach)."""

    __slots__ = ("caps", "holders", "key", "live", "shapes", "used")

    def __init__(self, caps: Capabilities, key: ReachKey) -> None:
        self.caps, self.key = caps, key
        self.shapes: dict[Shape, None] = {}  # (an ordered set)
        self.live = True  # false once evicted: no longer kept up to date
        self.used = 0  # when it was last popped from (the least recently used is evicted)
        self.holders = 0  # sessions it was handed to (see ReadyQueues.release)


class ReadyQueues:
    def __init__(self, reaches: int = REACHES) -> None:
        self.shapes: dict[Constraints, Shape] = {}
        self.by_region: dict[str, dict[Shape, None]] = {}  # region a shape names ("": none) -> its shapes
        self.reaches: dict[ReachKey, Reach] = {}
        self.reaches_in: dict[str, dict[Reach, None]] = {}  # miners' region -> their reaches
        self.max_reaches = reaches
        # client with queued jobs -> the tick it last went to the end of the turn (joined it, or was served)
        self.served: dict[str, int] = {}
        self.lanes: dict[str, int] = {}  # client with queued jobs -> its lanes
        self._ticks = 0  # a tick per lane joining a level's turn and per dispatch
        self._pops = 0
        self.depth = 0  # jobs in the queues, QUEUED
        self.by_priority = [0] * 10  # the same by priority (0-9)

    def push(self, job: Job) -> None:
        if job.in_queue:  # already there (two timers made it ready): counted once, served once
            return
        base, limit = split_price(job.constraints) if job.constraints.max_price else (job.constraints, None)
        shape = self.shapes.get(base)
        if shape is None:
            shape = self._add_shape(base)
        level = shape.levels.get(job.priority)
        if level is None:
            level = shape.levels[job.priority] = _Level()
        lane = level.clients.get(job.client_id)
        if lane is None:
            lane = self._add_lane(shape, level, job)
        lane.push(job, limit)
        lane.live += 1
        shape.live += 1
        self._count(job, True)

    def _add_lane(self, shape: Shape, level: _Level, job: Job) -> _Lane:
        """job's client joins the level's turn at its end, and the turn across shapes if it had no queued job."""
        self._ticks += 1
        client = job.client_id
        lane = level.clients[client] = _Lane(shape, job.priority, client, self._ticks)
        lanes = self.lanes.get(client, 0)
        if not lanes:
            self.served[client] = self._ticks
        self.lanes[client] = lanes + 1
        if len(level.turn) > 2 * len(level.clients) + 8:  # mostly gone lanes' entries: rebuilt
            level.turn = [(max(ln.joined, self.served[c]), ln.joined, ln) for c, ln in level.clients.items()]
            heapq.heapify(level.turn)
        else:
            heapq.heappush(level.turn, (self._ticks, self._ticks, lane))
        return lane

    def _add_shape(self, base: Constraints) -> Shape:
        shape = self.shapes[base] = Shape(base)
        self.by_region.setdefault(base.region, {})[shape] = None
        for reach in self._reaches_for(base.region):
            if eligible(base, reach.caps):
                reach.shapes[shape] = None
        return shape

    def _drop_shape(self, shape: Shape) -> None:
        base = shape.constraints
        del self.shapes[base]
        if not self.shapes:  # (a dict never shrinks as it empties: a burst's table goes with it)
            self.shapes, self.by_region = {}, {}
        else:
            in_region = self.by_region[base.region]
            del in_region[shape]
            if not in_region:
                del self.by_region[base.region]
        for reach in self._reaches_for(base.region):
            if shape in reach.shapes:
                del reach.shapes[shape]
                if not reach.shapes:
                    reach.shapes = {}

    def _reaches_for(self, region: str) -> Iterable[Reach]:
        """The reaches a shape naming region may be in: a miner elsewhere never takes it."""
        if region:
            return self.reaches_in.get(region, ())
        return self.reaches.values()

    def reach(self, caps: Capabilities, known: Reach | None = None) -> Reach:
        """The shapes a miner with caps is eligible for: known while it is kept up to date, else the kept
        one for caps, else a new one (built from the shapes naming no region or the miner's). A reach handed
        out so (not known) counts its holder: `release` it once that session is gone."""
        if known is not None and known.live:
            return known
        key = reach_key(caps)
        reach = self.reaches.get(key)
        if reach is not None:
            reach.holders += 1
            return reach
        if len(self.reaches) >= self.max_reaches:
            self._evict(min(self.reaches.values(), key=lambda r: r.used))
        reach = self.reaches[key] = Reach(caps, key)
        self.reaches_in.setdefault(caps.region, {})[reach] = None
        for region in ("", caps.region) if caps.region else ("",):
            for shape in self.by_region.get(region, ()):
                if eligible(shape.constraints, caps):
                    reach.shapes[shape] = None
        reach.used = self._pops
        reach.holders = 1
        return reach

    def release(self, reach: Reach) -> None:
        """A session `reach` was handed to is gone: a reach no session holds goes at once. Kept, each would be
        checked against every new shape (of its region) until evicted, as miners come back with other
        capabilities (labels, drivers) and leave; a miner back with the same ones has it rebuilt."""
        if not reach.live:
            return
        reach.holders -= 1
        if reach.holders <= 0:
            self._evict(reach)

    def _evict(self, reach: Reach) -> None:
        reach.live = False
        reach.shapes = {}
        del self.reaches[reach.key]
        in_region = self.reaches_in[reach.caps.region]
        del in_region[reach]
        if not in_region:
            del self.reaches_in[reach.caps.region]

    def discard(self, job: Job) -> None:
        """job left QUEUED by another way (cancel, expiry): count it out. A job that was not in the queues
        (waiting out a retry backoff, say) changes nothing; its queue entry, if any, is skipped later (or
        dropped with its lane once that holds no queued job)."""
        if job.in_queue:
            self._count(job, False)
            c = job.constraints
            shape = self.shapes.get(split_price(c)[0] if c.max_price else c)
            level = None if shape is None else shape.levels.get(job.priority)
            lane = None if level is None else level.clients.get(job.client_id)
            if lane is not None:  # (always: a job in the queues has its lane)
                self._left(lane)

    def _left(self, lane: _Lane) -> None:
        """One of lane's jobs (counted out) left it: drop what that leaves empty."""
        lane.live -= 1
        shape, level = lane.shape, lane.level
        if lane.live <= 0 and level.clients.get(lane.client) is lane:
            del level.clients[lane.client]
            if not level.clients and shape.levels.get(lane.priority) is level:
                del shape.levels[lane.priority]
            lanes = self.lanes[lane.client] - 1
            if lanes:
                self.lanes[lane.client] = lanes
            else:  # its last queued job: it leaves the turn (forgotten)
                del self.lanes[lane.client]
                del self.served[lane.client]
                if not self.served:
                    self.served, self.lanes = {}, {}
        shape.live -= 1
        if shape.live <= 0 and self.shapes.get(shape.constraints) is shape:
            self._drop_shape(shape)

    def _count(self, job: Job, queued: bool) -> None:
        job.in_queue = queued
        step = 1 if queued else -1
        self.depth += step
        self.by_priority[job.priority] += step

    def pop_in(self, reach: Reach, price: Decimal | None = None, passed_over: Skip = None) -> Job | None:
        """Remove and return the best job for a miner with reach (see `reach`) at unit price `price` (None:
        any job, whatever its limit), or None: `pop_for` over the shapes it is eligible for, found without
        looking at any other."""
        self._pops += 1
        reach.used = self._pops
        # (a shape left empty by a skipped job goes meanwhile)
        return self._pop(list(reach.shapes), price, passed_over)

    def pop_for(
        self, eligible: Callable[[Shape], bool], price: Decimal | None = None, passed_over: Skip = None
    ) -> Job | None:
        """Remove and return the best job for a miner at unit price `price` (None: any job, whatever its
        limit) among the shapes it is eligible for (`eligible` sees a shape's constraints without the price
        limit; every shape is asked), or None. Best: highest priority, then the client earliest in turn, then
        the oldest; within a shape and priority, the first client in the level's turn with a job within
        price (its oldest such job).

        Jobs for which `passed_over` is true (a miner's own refusals, in their pause) are not this miner's:
        they keep their place in their lane and their client its turn, as if they were not there."""
        return self._pop([shape for shape in self.shapes.values() if eligible(shape)], price, passed_over)

    def _pop(self, shapes: list[Shape], price: Decimal | None, passed_over: Skip) -> Job | None:
        p = _ANY_PRICE if price is None else price
        best: tuple[_Lane, int] | None = None
        best_key: tuple[int, int, str] | None = None
        served = self.served
        for shape in shapes:
            found = self._shape_head(shape, p, None if best_key is None else -best_key[0], passed_over)
            if found is None:
                continue
            lane, position = found
            key = (-lane.priority, served[lane.client], lane.jobs[position].job_id)  # type: ignore[union-attr]
            if best_key is None or key < best_key:
                best, best_key = found, key
        if best is None:
            return None
        lane, position = best
        job = lane.take(position)
        self._count(job, False)
        self._left(lane)
        self._ticks += 1
        if job.client_id in self.served:  # to the end of every turn it is in (unless that was its last job)
            self.served[job.client_id] = self._ticks
        return job

    def _shape_head(
        self, shape: Shape, price: Decimal, floor: int | None, passed_over: Skip
    ) -> tuple[_Lane, int] | None:
        """The job of shape a miner at price takes next, as (lane, position): at the highest priority (not
        below floor) with one within price, the first client in turn that has one."""
        levels = shape.levels
        for priority in sorted(levels, reverse=True) if len(levels) > 1 else tuple(levels):
            if floor is not None and priority < floor:
                return None  # lower priorities cannot win
            level = levels.get(priority)  # (a level left with skipped jobs only goes meanwhile)
            if level is not None and (found := self._level_head(level, price, passed_over)) is not None:
                return found
        return None

    def _level_head(self, level: _Level, price: Decimal, passed_over: Skip) -> tuple[_Lane, int] | None:
        """The first client in level's turn with a queued job within price: its lane and that job's position."""
        turn, clients, served = level.turn, level.clients, self.served
        passed = []  # clients with no job within price, taken off the heap meanwhile
        found = None
        while turn:
            place, joined, lane = turn[0]
            if clients.get(lane.client) is not lane:
                heapq.heappop(turn)  # its lane is gone
                continue
            now = served[lane.client]
            if now > place:  # served since the entry was made: at the end now
                heapq.heapreplace(turn, (now, joined, lane))
                continue
            position = self._first_ready(lane, price, passed_over)  # (skipped jobs may leave the lane gone)
            if position >= 0:
                found = lane, position
                break
            if clients.get(lane.client) is lane:
                passed.append(heapq.heappop(turn))
        for entry in passed:
            heapq.heappush(turn, entry)
        return found

    def turn(self, level: _Level) -> list[str]:
        """level's clients in turn (for inspection: the scheduler never sorts a turn)."""
        return sorted(level.clients, key=lambda c: max(level.clients[c].joined, self.served[c]))

    def _first_ready(self, lane: _Lane, price: Decimal, passed_over: Skip) -> int:
        """The lane's first position holding a queued job within price and not passed over, or -1; skipped
        entries go."""
        position = lane.first(price)
        while position >= 0:
            job = lane.jobs[position]
            assert job is not None
            if not _ready(job):
                lane.take(position)
                self.discard(job)  # counted out already, unless it left unannounced
            elif passed_over is None or not passed_over(job):
                return position
            position = lane.after(position, price)
        return -1

    def depth_by_priority(self) -> dict[int, int]:
        return {priority: n for priority, n in enumerate(self.by_priority) if n}
