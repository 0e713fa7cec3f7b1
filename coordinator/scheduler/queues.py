"""In-memory ready queues: by constraint shape, then priority, then round-robin over clients, then age.

Jobs with identical constraints share a shape, so finding work for a miner costs O(number of shapes),
never O(queued jobs): queue depth does not slow dispatch. Within a shape and priority each client has a
FIFO; clients take turns, so one client's flood cannot starve another's jobs. Removal is lazy: a job that
left QUEUED (canceled, expired) is skipped when it reaches the head. The counts (depth, depth by priority)
are exact at all times, from each job's `in_queue` mark: reading them never scans the queues.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

from ..domain.model import Constraints, Job, JobState

PRIORITIES = range(9, -1, -1)


class _Level:
    """One priority level of one shape: a FIFO per client, clients in round-robin order."""

    __slots__ = ("clients", "owner")

    def __init__(self, owner: ReadyQueues) -> None:
        self.clients: OrderedDict[str, deque[Job]] = OrderedDict()
        self.owner = owner

    def push(self, job: Job) -> None:
        fifo = self.clients.get(job.client_id)
        if fifo is None:
            fifo = self.clients[job.client_id] = deque()
        fifo.append(job)

    def head(self) -> Job | None:
        while self.clients:
            client, fifo = next(iter(self.clients.items()))
            while fifo and not _ready(fifo[0]):
                self.owner.discard(fifo.popleft())  # counted out already, unless it left unannounced
            if fifo:
                return fifo[0]
            del self.clients[client]
        return None

    def pop(self) -> Job:
        client, fifo = next(iter(self.clients.items()))
        job = fifo.popleft()
        if fifo:
            self.clients.move_to_end(client)  # next client's turn
        else:
            del self.clients[client]
        return job


def _ready(job: Job) -> bool:
    return job.in_queue and job.state is JobState.QUEUED  # not counted out (canceled, expired, taken out)


class Shape:
    """The queued jobs sharing one set of constraints."""

    __slots__ = ("constraints", "levels", "size")

    def __init__(self, constraints: Constraints) -> None:
        self.constraints = constraints
        self.levels: dict[int, _Level] = {}
        self.size = 0  # pushes minus pops; lazily removed jobs still count until skipped

    def head(self) -> Job | None:
        for priority in PRIORITIES:
            level = self.levels.get(priority)
            if level is None:
                continue
            job = level.head()
            if job is not None:
                return job
            del self.levels[priority]
        return None


class ReadyQueues:
    def __init__(self) -> None:
        self.shapes: dict[Constraints, Shape] = {}
        self.served: dict[str, int] = {}  # client -> dispatch counter at its last dispatch (fair share)
        self._dispatches = 0
        self.depth = 0  # jobs in the queues, QUEUED
        self.by_priority = [0] * 10  # the same by priority (0-9)

    def push(self, job: Job) -> None:
        if job.in_queue:  # already there (two timers made it ready): counted once, served once
            return
        shape = self.shapes.get(job.constraints)
        if shape is None:
            shape = self.shapes[job.constraints] = Shape(job.constraints)
        level = shape.levels.get(job.priority)
        if level is None:
            level = shape.levels[job.priority] = _Level(self)
        level.push(job)
        shape.size += 1
        self._count(job, True)

    def discard(self, job: Job) -> None:
        """job left QUEUED by another way (cancel, expiry): count it out. A job that was not in the queues
        (waiting out a retry backoff, say) changes nothing; its queue entry, if any, is skipped later."""
        if job.in_queue:
            self._count(job, False)

    def _count(self, job: Job, queued: bool) -> None:
        job.in_queue = queued
        step = 1 if queued else -1
        self.depth += step
        self.by_priority[job.priority] += step

    def pop_for(self, eligible: Callable[[Shape], bool]) -> Job | None:
        """Remove and return the best job among shapes the miner is eligible for, or None."""
        best: Shape | None = None
        best_key: tuple[int, int, str] | None = None
        empty: list[Constraints] = []
        for constraints, shape in self.shapes.items():
            job = shape.head()
            if job is None:
                empty.append(constraints)
                continue
            if not eligible(shape):
                continue
            key = (-job.priority, self.served.get(job.client_id, -1), job.job_id)
            if best_key is None or key < best_key:
                best, best_key = shape, key
        for constraints in empty:
            del self.shapes[constraints]
        if best is None:
            return None
        job = best.head()
        assert job is not None
        popped = best.levels[job.priority].pop()
        best.size -= 1
        self._count(popped, False)
        self._dispatches += 1
        self.served[popped.client_id] = self._dispatches
        return popped

    def depth_by_priority(self) -> dict[int, int]:
        return {priority: n for priority, n in enumerate(self.by_priority) if n}
