"""A scheduler decision in flight: the rows it writes and what may happen only once they are durable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from ..domain.model import Event, Job
from ..store.base import UnitOfWork
from .sessions import Session


@dataclass(slots=True)
class Pending:
    """A decision's writes and the messages that may leave only after they are durable."""

    unit: UnitOfWork = field(default_factory=UnitOfWork)
    sends: list[tuple[Session, object]] = field(default_factory=list)
    notes: list[tuple[Job, Event]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)  # once durable
    always: list[Callable[[], None]] = field(default_factory=list)  # once durable or failed
    settled: asyncio.Future | None = None  # resolved once the writes are durable (or failed)
    unheld: set[str] = field(default_factory=set)  # held jobs it changes that no session held (orphans, lost)
    miners: list[str] = field(default_factory=list)  # miners whose slots it frees (see Scheduler._unsettle)
    # job -> the attempt its miner held, for a job it queues again with that attempt unspent (its event names
    # the attempt before): should the write fail, that miner may still hold it at that attempt
    given_back: dict[str, int] = field(default_factory=dict)
    # job -> the transport of the session it takes the job from before its miner heard of it (Held.told false):
    # should the write fail, the job read back is still untold there (given back unspent if it never leaves)
    untold: dict[str, str] = field(default_factory=dict)
    enqueued: bool = False  # handed to the store: from then on, its outcome undoes or applies it
    # job -> the unsettled decision about it queued before this one (cleared once this one settles)
    earlier: dict[str, Pending] = field(default_factory=dict)

    def record(self, job: Job, event: Event) -> None:
        self.unit.add_update(job, event.from_state)
        self.unit.add_event(event)
        self.notes.append((job, event))
