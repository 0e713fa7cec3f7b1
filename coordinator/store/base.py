"""The store interface. The scheduler decides; the store makes decisions durable and answers reads.

Writes arrive as units of work (everything one decision changed). A unit's rows are snapshots taken when
it is built, so later in-memory changes cannot leak into an earlier commit. `commit` returns only after
the transaction holding the unit is durable; implementations group many units into one transaction.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..domain.model import Constraints, Event, Job, JobResult, JobState, PayloadKind


@dataclass(slots=True)
class ReceiptRow:
    receipt_id: str
    job_id: str
    attempt: int
    envelope: bytes
    leaf_index: int  # -1 until the store gives it its place in the log (assign_leaves)
    leaf_hash: bytes
    issued_us: int


def assign_leaves(units: Sequence[UnitOfWork], next_leaf: int) -> tuple[int, list[ReceiptRow]]:
    """Give the units' receipts their places in the receipt log, in commit order; return the next free place
    and the receipts placed. Stores call it inside the transaction that writes the units: the log's order is
    the commit order, so a unit that fails to commit takes no place and leaves no gap (the store gives the
    placed receipts back with `unplace` and counts on from what it holds). A receipt that already has a
    place keeps it."""
    placed = []
    for unit in units:
        for r in unit.receipts:
            if r.leaf_index < 0:
                r.leaf_index = next_leaf
                placed.append(r)
            next_leaf = max(next_leaf, r.leaf_index + 1)
    return next_leaf, placed


def unplace(placed: list[ReceiptRow]) -> None:
    """Their transaction failed: the places assign_leaves gave are void."""
    for r in placed:
        r.leaf_index = -1


@dataclass(slots=True)
class LedgerEntry:
    account_id: str
    kind: str  # "client" | "miner"
    receipt_id: str
    amount_nano: int  # 10^-9 currency units; negative for a client's debit
    units_nano: int
    booked_us: int


@dataclass(slots=True)
class CheckpointRow:
    tree_size: int
    root_hash: bytes
    note: str
    signed_us: int


@dataclass(slots=True)
class KeyRow:
    key_id: str
    role: str
    status: str
    public_key: bytes
    private_seed: bytes | None
    valid_from_us: int
    valid_until_us: int | None
    owner: str = ""


@dataclass(frozen=True, slots=True)
class DrainRow:
    """An operator's drain of a miner identity (table operator_drains), kept across restarts."""

    miner_id: str
    reason: str  # the drain's reason, as its sessions tell it ("ADMIN")
    created_us: int  # when the operator drained the miner (UTC microseconds); names this drain of the miner


# Every stored drain, for a start to load (either store).
LOAD_DRAINS = "SELECT miner_id, reason, created_us FROM operator_drains ORDER BY miner_id"


@dataclass(slots=True)
class UnitOfWork:
    """Every row one decision writes, committed atomically (and grouped with others)."""

    new_jobs: list[tuple] = field(default_factory=list)
    job_updates: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    results: list[tuple] = field(default_factory=list)
    receipts: list[ReceiptRow] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)
    # complete tiles of the receipt log: (tile index, root of its leaves), written once (a repeat is ignored)
    tiles: list[tuple[int, bytes]] = field(default_factory=list)
    keys: list[KeyRow] = field(default_factory=list)
    # operators' drains: stored (a miner's row replaced), then those over deleted, each only if its row is still
    # that drain's (same created_us: a later drain of the miner, written meanwhile, stays)
    drains: list[DrainRow] = field(default_factory=list)
    drains_over: list[DrainRow] = field(default_factory=list)
    # job id -> (inserted by this unit, index in new_jobs or job_updates): one jobs row per job per unit
    _rows: dict[str, tuple[bool, int]] = field(default_factory=dict, repr=False, compare=False)
    # state -> jobs this unit's rows put in it less those they take out (job_state_counts, schema 7)
    state_moves: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    # Set by the caller: this unit's key, and the keys of earlier units, not yet settled when it was built,
    # whose in-memory outcome it builds on. If one of those fails to commit, so does this one (see FailedUnits).
    key: int = field(default=0, compare=False)
    requires: tuple[int, ...] = field(default=(), compare=False)

    def inserts(self, job_id: str) -> bool:
        """Whether this unit inserts job_id (rather than updating a stored job)."""
        slot = self._rows.get(job_id)
        return slot is not None and slot[0]

    def add_new_job(self, job: Job) -> None:
        self._rows[job.job_id] = (True, len(self.new_jobs))
        self.new_jobs.append(job_row(job))
        self._move(None, int(job.state))

    def add_update(self, job: Job, was: JobState | None) -> None:
        """The job's state as it is now; was: its state before this change, as stored (the event's from_state).
        A job this unit already inserts or updates keeps one row, holding its latest state (what the
        commit leaves is the same; the events still record every step)."""
        slot = self._rows.get(job.job_id)
        if slot is None:
            self._rows[job.job_id] = (False, len(self.job_updates))
            self.job_updates.append(job_update_row(job))
            before = None if was is None else int(was)
        elif slot[0]:
            before = self.new_jobs[slot[1]][2]
            self.new_jobs[slot[1]] = refreshed_job_row(self.new_jobs[slot[1]], job)
        else:
            before = self.job_updates[slot[1]][0]
            self.job_updates[slot[1]] = job_update_row(job)
        self._move(before, int(job.state))

    def _move(self, left: int | None, entered: int) -> None:
        if left == entered:
            return
        moves = self.state_moves
        moves[entered] = moves.get(entered, 0) + 1
        if left is not None:
            moves[left] = moves.get(left, 0) - 1

    def add_event(self, event: Event) -> None:
        self.events.append(
            (
                event.job_id,
                event.sequence,
                None if event.from_state is None else int(event.from_state),
                int(event.to_state),
                event.attempt,
                event.miner_id,
                event.reason,
                event.message,
                event.occurred_us,
            )
        )

    def add_result(self, r: JobResult) -> None:
        self.results.append(
            (
                r.job_id,
                r.attempt,
                r.output,
                int(r.output_kind),
                r.result_sha256,
                r.units,
                r.unit_type,
                r.miner_id,
                r.completed_us,
                r.receipt_id,
            )
        )

    def __bool__(self) -> bool:
        return any(
            (
                self.new_jobs,
                self.job_updates,
                self.events,
                self.results,
                self.receipts,
                self.ledger,
                self.checkpoints,
                self.tiles,
                self.keys,
                self.drains,
                self.drains_over,
            )
        )


class StoreInUse(RuntimeError):
    """Another process (a coordinator, a key rotation) has this store open: one at a time may write it."""


class StoreFenced(StoreInUse):
    """Another process held this store, and may have written it, while this one's writer was disconnected
    (found when the writer took the store back: the holder epoch was no longer its own). This process' state in
    memory (jobs, keys, the receipt log, balances) may no longer match the store: it writes no more, for good;
    restarted, it reloads from the store."""


# Predicates, one per store kind (registered by its module), telling whether an error is about reaching the
# store (a connection lost or refused, its file locked or failing) rather than a bug: what failed with it was not
# stored (an in-doubt commit is settled before a unit is failed), and the caller may call again.
_UNREACHABLE: list[Callable[[BaseException], bool]] = []


def register_unreachable(check: Callable[[BaseException], bool]) -> None:
    _UNREACHABLE.append(check)


def store_unreachable(exc: BaseException) -> bool:
    return any(check(exc) for check in _UNREACHABLE)


class StoreMissing(RuntimeError):
    """The store was to be opened as it is (`keys rotate`), and DATABASE_URL names none: opening it would make an
    empty one (a mistyped schema, the wrong database)."""


class StoreUnusable(RuntimeError):
    """DATABASE_URL names a store this coordinator cannot use as it is (a directory, a read-only file, a file
    that is no SQLite database, a schema newer than this code): a setting to fix, not a failure to retry."""


class DependencyFailed(Exception):
    """A unit was refused because an earlier unit it builds on failed to commit."""

    def __init__(self, keys: set[int]) -> None:
        super().__init__(f"an earlier write this one builds on failed to commit (units {sorted(keys)})")


class FailedUnits:
    """The writer's memory of recently failed units, so that units built on them fail too (and are not
    written over a state that never landed: an event sequence with a hole, a row that skips a step)."""

    def __init__(self, keep: int = 10_000) -> None:
        self._keys: dict[int, None] = {}  # insertion-ordered: the oldest are forgotten first
        self._keep = keep

    def blocking(self, unit: UnitOfWork) -> DependencyFailed | None:
        if not unit.requires or not self._keys:
            return None
        failed = {k for k in unit.requires if k in self._keys}
        return DependencyFailed(failed) if failed else None

    def partition(self, units: Sequence[UnitOfWork]) -> tuple[list[BaseException | None], list[int]]:
        """Each unit's outcome so far (refused if built on a failed unit), and the indexes of those to write."""
        outcomes: list[BaseException | None] = [None] * len(units)
        live: list[int] = []
        for i, unit in enumerate(units):
            if (blocked := self.blocking(unit)) is not None:
                outcomes[i] = blocked
                self.add(unit)
            else:
                live.append(i)
        return outcomes, live

    def add(self, unit: UnitOfWork) -> None:
        if unit.key:
            self._keys[unit.key] = None
            if len(self._keys) > self._keep:
                del self._keys[next(iter(self._keys))]


NANO_SPLIT = 1_000_000_000  # account_balances keeps amounts as whole units and the nano rest (schema 6)


def split_nano(n: int) -> tuple[int, int]:
    """n nano units as (whole units, rest), truncated toward zero as SQL's integer division is."""
    whole = abs(n) // NANO_SPLIT * (1 if n >= 0 else -1)
    return whole, n - whole * NANO_SPLIT


def balance_rows(units: Sequence[UnitOfWork]) -> list[tuple]:
    """The units' ledger entries summed per account, as rows to add to account_balances: (account_id, kind,
    amount whole, amount rest, entries, units whole, units rest, latest booked_us). One row per account a group
    books, whatever its entries: a group of 500 receipts from one client to 16 miners adds 17."""
    sums: dict[tuple[str, str], list[int]] = {}
    for unit in units:
        for e in unit.ledger:
            acct = sums.get((e.account_id, e.kind))
            if acct is None:
                sums[(e.account_id, e.kind)] = [e.amount_nano, 1, e.units_nano, e.booked_us]
            else:
                acct[0] += e.amount_nano
                acct[1] += 1
                acct[2] += e.units_nano
                acct[3] = max(acct[3], e.booked_us)
    return [(account, kind, *split_nano(amount), entries, *split_nano(units_nano), booked)
            for (account, kind), (amount, entries, units_nano, booked) in sums.items()]  # fmt: skip


def state_count_rows(units: Sequence[UnitOfWork]) -> list[tuple[int, int]]:
    """The units' moves between states summed per state, as rows to add to job_state_counts: (state, jobs in it
    after the units less before), the states whose count changes only."""
    moves: dict[int, int] = {}
    for unit in units:
        for state, n in unit.state_moves.items():
            moves[state] = moves.get(state, 0) + n
    return [(state, n) for state, n in moves.items() if n]


JOB_COLUMNS = (
    "job_id, client_id, state, priority, payload, payload_kind, input_sha256, constraints, ttl_us, "
    "max_attempts, execution_timeout_us, idempotency_key, request_fingerprint, created_us, updated_us, "
    "attempt, miner_id, started_us, finished_us, terminal_reason, terminal_message, metadata, "
    "reassignments, event_seq, not_before_us, queued_us"
)


def job_row(job: Job) -> tuple:
    import json

    return (
        job.job_id, job.client_id, int(job.state), job.priority, job.payload, int(job.payload_kind),
        job.input_sha256, job.constraints.to_json(), job.ttl_us, job.max_attempts, job.execution_timeout_us,
        job.idempotency_key or None, job.request_fingerprint, job.created_us, job.updated_us, job.attempt,
        job.miner_id, job.started_us, job.finished_us, job.terminal_reason, job.terminal_message,
        json.dumps(job.metadata), job.reassignments, job.event_seq, job.not_before_us, job.queued_us,
    )  # fmt: skip


# Positions in job_row of the columns job_update_row sets (all but job_id, its last element).
_UPDATED_IN_ROW = (2, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25)


def refreshed_job_row(row: tuple, job: Job) -> tuple:
    """row (a job_row of job) with the columns that change after insert taken from job as it is now."""
    fresh = list(row)
    for position, value in zip(_UPDATED_IN_ROW, job_update_row(job), strict=False):
        fresh[position] = value
    return tuple(fresh)


def job_update_row(job: Job) -> tuple:
    return (
        int(job.state), job.updated_us, job.attempt, job.miner_id, job.started_us, job.finished_us,
        job.terminal_reason, job.terminal_message, job.reassignments, job.event_seq, job.not_before_us,
        job.queued_us, job.job_id,
    )  # fmt: skip


EVENT_COLUMNS = "job_id, sequence, from_state, to_state, attempt, miner_id, reason, message, occurred_us"

FINISHED_NAMES = {4: "completed", 5: "failed", 6: "canceled", 7: "expired"}


def event_from_row(r: Sequence[Any]) -> Event:
    """An Event from the EVENT_COLUMNS of a row (either store)."""
    return Event(
        r[0], r[1], None if r[2] is None else JobState(r[2]), JobState(r[3]), r[4], r[5], r[6], r[7], r[8]
    )


def tally_transitions(rows: Sequence[Sequence[Any]]) -> dict[str, int]:
    """(to_state, is_submission, count) rows -> counts by kind (count_transitions_since, either store)."""
    out = dict.fromkeys(("submitted", *FINISHED_NAMES.values()), 0)
    for to_state, is_submit, count in rows:
        out["submitted" if is_submit else FINISHED_NAMES[to_state]] += count
    return out


def job_from_row(r: Sequence[Any]) -> Job:
    """A Job from the JOB_COLUMNS of a row (either store)."""
    return Job(
        job_id=r[0], client_id=r[1], state=JobState(r[2]), priority=r[3], payload=r[4],
        payload_kind=PayloadKind(r[5]), input_sha256=r[6], constraints=Constraints.from_json(r[7]), ttl_us=r[8],
        max_attempts=r[9], execution_timeout_us=r[10], idempotency_key=r[11] or "", request_fingerprint=r[12],
        created_us=r[13], updated_us=r[14], attempt=r[15], miner_id=r[16], started_us=r[17], finished_us=r[18],
        terminal_reason=r[19], terminal_message=r[20], metadata=tuple(tuple(p) for p in json.loads(r[21])),
        reassignments=r[22], event_seq=r[23], not_before_us=r[24], queued_us=r[25],
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class JobFilter:
    client_id: str | None = None
    miner_id: str | None = None
    states: frozenset[JobState] = frozenset()


@dataclass(frozen=True, slots=True)
class JobPage:
    """What list_jobs found: jobs (newest first, at most the limit asked) and, when the store stopped looking
    short of the listing's end (a client's jobs on a miner: a bounded walk per call), where. Every matching job
    with an id >= scanned_to is in jobs (up to the limit); the listing goes on below it (before_job_id=scanned_to,
    when jobs did not fill the limit). None: the store looked as far as the limit needed."""

    jobs: list[Job]
    scanned_to: str | None = None


class Store(ABC):
    """Durable state of the coordinator. Implementations: `SqliteStore`, `PostgresStore`."""

    # Called (on the event loop, once) when the store refuses every write from now on because another process
    # took it meanwhile (StoreFenced): the coordinator stops serving. None: nobody is told but the writers.
    on_lost: Callable[[StoreFenced], None] | None = None

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def close_unused(self) -> None:
        """Close the store after a start that failed before serving: a store this open made (SQLite: a new
        file) is removed, so that a refused start (a port in use) leaves no empty store behind."""
        await self.close()

    @abstractmethod
    def enqueue(self, unit: UnitOfWork) -> asyncio.Future[None]:
        """Queue unit for the writer, which commits units in the order they were queued. The future resolves
        once its transaction committed, or fails with the error that refused it. It is never cancelled by
        the store: a caller that stops waiting can still learn the outcome."""

    async def commit(self, unit: UnitOfWork) -> None:
        """Make unit durable; returns after its transaction committed."""
        await self.enqueue(unit)

    @abstractmethod
    async def get_job(self, job_id: str) -> Job | None: ...

    @abstractmethod
    async def find_by_idempotency_keys(self, client_id: str, keys: Sequence[str]) -> dict[str, Job]:
        """client_id's jobs stored under any of keys, by key (one read for a whole batch)."""

    @abstractmethod
    async def count_idempotency_keys(self) -> int:
        """How many jobs carry an idempotency key."""

    @abstractmethod
    async def idempotency_keys_after(
        self, after: tuple[str, str] | None, limit: int
    ) -> list[tuple[str, str]]:
        """Up to limit (client_id, idempotency_key) pairs of stored jobs, in order, after `after` (a page of a
        scan of them all)."""

    @abstractmethod
    async def list_jobs(self, flt: JobFilter, limit: int, before_job_id: str | None) -> JobPage:
        """Jobs matching flt, newest first, with job_id < before_job_id when given: up to limit, and fewer (even
        none) when the store stopped at JobPage.scanned_to (a client's jobs on a miner only)."""

    @abstractmethod
    async def load_active_jobs(self) -> list[Job]:
        """Every non-terminal job (to rebuild the queues at start-up)."""

    @abstractmethod
    async def get_result(self, job_id: str) -> JobResult | None: ...

    @abstractmethod
    async def get_events(self, job_id: str) -> list[Event]: ...

    @abstractmethod
    async def count_by_state(self) -> dict[JobState, int]: ...

    @abstractmethod
    async def count_transitions_since(self, since_us: int) -> dict[str, int]:
        """Events since since_us by kind: submitted, completed, failed, canceled, expired."""

    @abstractmethod
    async def count_transitions_by_second(
        self, since_us: int, until_us: int
    ) -> list[tuple[int, int, bool, int]]:
        """Submissions and finishes in [since_us, until_us), per second: (second since the epoch, to_state, is a
        submission, count)."""

    @abstractmethod
    async def get_receipts(self, job_id: str) -> list[ReceiptRow]: ...

    @abstractmethod
    async def load_log_tiles(self) -> tuple[list[bytes], CheckpointRow | None]:
        """The receipt log as a start needs it: the stored tile roots from the first on, up to the first one
        missing; and the latest checkpoint. (The leaves after those tiles: read_leaves.)"""

    @abstractmethod
    async def read_leaves(self, start: int, end: int) -> list[bytes]:
        """The leaf hashes at [start, end) of the receipt log, in order (fewer if the log is shorter)."""

    @abstractmethod
    async def load_keys(self) -> list[KeyRow]: ...

    @abstractmethod
    async def load_accounts(self) -> list[dict[str, Any]]:
        """Per account: account_id, kind, balance_nano, receipts, units_nano, updated_us."""

    @abstractmethod
    async def receipt_booked(self, receipt_id: str) -> bool: ...

    @abstractmethod
    async def load_drains(self) -> list[DrainRow]:
        """Every operator's drain not over (a start gives each its miner's grace period again)."""


def flatten(rows: Sequence[Sequence[tuple]]) -> list[tuple]:
    return [r for group in rows for r in group]
