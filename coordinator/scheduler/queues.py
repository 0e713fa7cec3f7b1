"""In-memory ready queues: by constraint shape, then priority, then round-robin over clients, then age.

A shape holds the queued jobs whose constraints are alike but for their price limit (max_price): jobs that
each carry their own limit share one shape, so finding work for a miner costs O(number of shapes), never
O(queued jobs): neither queue depth nor the number of distinct price limits slows dispatch. Within a shape
and priority each client has a lane, a FIFO indexed by price limit: the oldest job a miner at unit price p
may take is found in O(1) when the lane's first job is within p, in O(log n) otherwise (a lane without
limits keeps no index). Clients take turns, so one client's flood cannot starve another's jobs: a client
joins a shape and priority's turn at its end, and goes to the end of every turn it is in (every shape and
priority) when it is served, wherever that is. Removal is lazy: a job that left QUEUED
(canceled, expired) is skipped when it is reached; a lane, a priority level or a shape is dropped the moment
no queued job is left in it, stale entries with it. The counts (depth, depth by priority) are exact at all
times, from each job's `in_queue` mark: reading them never scans the queues.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from decimal import Decimal

from ..domain.matching import split_price
from ..domain.model import Constraints, Job, JobState

PRIORITIES = range(9, -1, -1)
_NO_LIMIT = Decimal("Infinity")  # a job without a price limit: any miner's price is within it
_GONE = Decimal("-Infinity")  # the limit of an entry taken out: no price is within it
_ANY_PRICE = Decimal(-1)  # below every limit (limits are non-negative): a pop without a miner price


class _Lane:
    """One client's queued jobs of one shape at one priority, in push order, indexed by their price limits:
    a max-tree over the positions finds the first job within a miner's price in O(log n). A lane none of
    whose jobs has a limit (the usual case) keeps no tree: its first entry is within any price."""

    __slots__ = ("cap", "client", "end", "head", "jobs", "level", "live", "priority", "shape", "tree")

    def __init__(self, shape: Shape, priority: int, client: str) -> None:
        self.shape, self.priority, self.client = shape, priority, client
        self.level = shape.levels[priority]
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
        node = 1
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
    """One priority level of one shape: a lane per client, clients in round-robin order."""

    __slots__ = ("clients",)

    def __init__(self) -> None:
        self.clients: OrderedDict[str, _Lane] = OrderedDict()


def _ready(job: Job) -> bool:
    return job.in_queue and job.state is JobState.QUEUED  # not counted out (canceled, expired, taken out)


class Shape:
    """The queued jobs whose constraints are these, whatever their price limits: priority -> client -> lane."""

    __slots__ = ("constraints", "levels", "live")

    def __init__(self, constraints: Constraints) -> None:
        self.constraints = constraints  # without max_price: the queue checks each job's limit itself
        self.levels: dict[int, _Level] = {}
        self.live = 0  # its jobs in the queues


class ReadyQueues:
    def __init__(self) -> None:
        self.shapes: dict[Constraints, Shape] = {}
        self.served: dict[str, int] = {}  # client -> dispatch counter at its last dispatch (fair share)
        self.lanes: dict[str, list[_Lane]] = {}  # client -> its lanes (whose turns its dispatches end)
        self._dispatches = 0
        self.depth = 0  # jobs in the queues, QUEUED
        self.by_priority = [0] * 10  # the same by priority (0-9)

    def push(self, job: Job) -> None:
        if job.in_queue:  # already there (two timers made it ready): counted once, served once
            return
        base, limit = split_price(job.constraints) if job.constraints.max_price else (job.constraints, None)
        shape = self.shapes.get(base)
        if shape is None:
            shape = self.shapes[base] = Shape(base)
        level = shape.levels.get(job.priority)
        if level is None:
            level = shape.levels[job.priority] = _Level()
        lane = level.clients.get(job.client_id)
        if lane is None:
            lane = level.clients[job.client_id] = _Lane(shape, job.priority, job.client_id)
            self.lanes.setdefault(job.client_id, []).append(lane)
        lane.push(job, limit)
        lane.live += 1
        shape.live += 1
        self._count(job, True)

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
            lanes = self.lanes[lane.client]
            lanes.remove(lane)
            if not lanes:
                del self.lanes[lane.client]
        shape.live -= 1
        if shape.live <= 0 and self.shapes.get(shape.constraints) is shape:
            del self.shapes[shape.constraints]

    def _count(self, job: Job, queued: bool) -> None:
        job.in_queue = queued
        step = 1 if queued else -1
        self.depth += step
        self.by_priority[job.priority] += step

    def pop_for(self, eligible: Callable[[Shape], bool], price: Decimal | None = None) -> Job | None:
        """Remove and return the best job for a miner at unit price `price` (None: any job, whatever its
        limit) among the shapes it is eligible for (`eligible` sees a shape's constraints without the price
        limit), or None. Best: highest priority, then the client served longest ago, then the oldest; within
        a shape and priority, the first client in turn with a job within price (its oldest such job)."""
        p = _ANY_PRICE if price is None else price
        best: tuple[_Lane, int] | None = None
        best_key: tuple[int, int, str] | None = None
        for shape in list(self.shapes.values()):  # (a shape left empty by a skipped job goes meanwhile)
            if not eligible(shape):
                continue
            found = self._shape_head(shape, p, None if best_key is None else -best_key[0])
            if found is None:
                continue
            lane, position = found
            key = (-lane.priority, self.served.get(lane.client, -1), lane.jobs[position].job_id)  # type: ignore[union-attr]
            if best_key is None or key < best_key:
                best, best_key = found, key
        if best is None:
            return None
        lane, position = best
        job = lane.take(position)
        self._count(job, False)
        self._left(lane)
        self._dispatches += 1
        self.served[job.client_id] = self._dispatches
        for other in self.lanes.get(job.client_id, ()):  # its turn ends in every shape and priority
            other.level.clients.move_to_end(job.client_id)
        return job

    def _shape_head(self, shape: Shape, price: Decimal, floor: int | None) -> tuple[_Lane, int] | None:
        """The job of shape a miner at price takes next, as (lane, position): at the highest priority (not
        below floor) with one within price, the first client in turn that has one."""
        for priority in PRIORITIES:
            if floor is not None and priority < floor:
                return None  # lower priorities cannot win
            level = shape.levels.get(priority)
            if level is None:
                continue
            for lane in list(level.clients.values()):  # (a lane left with skipped jobs only goes meanwhile)
                position = self._first_ready(lane, price)
                if position >= 0:
                    return lane, position
        return None

    def _first_ready(self, lane: _Lane, price: Decimal) -> int:
        """The lane's first position holding a queued job within price, or -1; skipped entries go."""
        while (position := lane.first(price)) >= 0:
            job = lane.jobs[position]
            assert job is not None
            if _ready(job):
                return position
            lane.take(position)
            self.discard(job)  # counted out already, unless it left unannounced
        return -1

    def depth_by_priority(self) -> dict[int, int]:
        return {priority: n for priority, n in enumerate(self.by_priority) if n}
