"""Undoing a commit that failed (a full disk, an I/O error): the scheduler's memory goes back to the store.

Nothing of a failed commit is in the store, so nothing of it may stay in memory: its messages never leave,
watchers never hear of it, the jobs it inserted are forgotten, and the jobs it changed are taken out at once
("detached": reads go to the store, timers find nothing, their miners' slots stay reserved) and read back
from the store once the writes queued before have settled, then placed as at a start. The store refuses the
writes queued meanwhile that build on the failed one (UnitOfWork.requires), so the store never holds a
state built on one that never landed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..domain.clock import MICROS, now_us
from ..domain.errors import CoordinatorError, Kind
from ..domain.model import Event, Job, JobState
from ..store.base import UnitOfWork
from .pending import Pending
from .sessions import AckOut, CancelOut, GoAwayOut, Held, Session

if TYPE_CHECKING:
    from .engine import Scheduler

log = logging.getLogger("coordinator.scheduler")


@dataclass(slots=True)
class Detached:
    """A job taken out of the scheduler after a failed commit, until it is read back from the store."""

    reserved: Session | None  # the live session whose slot it keeps meanwhile
    miner_id: str = ""  # the miner that ran it before the failed change, and which attempt
    attempt: int = 0
    task: asyncio.Task | None = None  # the read-back
    listed: tuple[Session, int] | None = None  # a session of that miner that said it runs that attempt
    holder: Session | None = None  # the live session that held it when it was taken out
    dropped_by: Session | None = None  # a session whose miner dropped that attempt (refused NOT_STORED)
    announced: int = 0  # the job's last change that watchers and observers heard of (its sequence)
    # whether its miner may have heard of the assignment (Held.told): one it never heard of goes back unspent
    # when read back without a session to keep it (or later, if its session loses it before it leaves)
    told: bool = True
    transport: str = ""  # that of the session it was assigned on (Held.transport)

    def kept_by(self, session: Session, attempt: int) -> bool:
        """Whether session may still be running the job's attempt: it held it then, or its miner says so
        (unless it was told on that session that its message about the attempt is dropped)."""
        if session is self.dropped_by:
            return False
        if session is self.holder:
            return True
        return self.listed is not None and self.listed[0] is session and self.listed[1] == attempt

    def runs(self, session: Session, listed: dict[str, int], job_id: str) -> bool:
        """Whether a new session's hello lists the job as its miner ran it (another miner, or another
        attempt, is not the same work)."""
        return session.miner_id == self.miner_id and listed.get(job_id) == self.attempt


def exec_deadline(job: Job) -> int:
    """A held job's execution deadline, as stored: from its assignment (the last change of an ASSIGNED job)
    or, once RUNNING, from its start."""
    since = job.started_us if job.state is JobState.RUNNING else job.updated_us
    return since + job.execution_timeout_us


WRITE_TRIES = 3  # a message answered once its job is back: how often its own write may fail


class UndoFailedCommits:
    """The part of the Scheduler that undoes failed commits (mixed into it: it works on its state)."""

    def _failed(self: Scheduler, pending: Pending) -> None:
        """Nothing of a failed commit is in the store (a full disk, an I/O error, or an earlier write it
        builds on failed). Its messages never leave (but for its GoAways and NOT_HELDs: true all the same),
        watchers never hear of it; the jobs it inserted are forgotten, and the jobs it changed are taken out
        at once and read back from the store."""
        self._settle(pending)  # readers must not wait on a write that failed
        self._failed_in_a_row += 1
        self._failed_at_us = now_us()
        if self.receipts is not None and (pending.unit.receipts or pending.unit.keys):
            self.receipts.commit_failed(pending.unit)
        for session, message in pending.sends:
            if isinstance(message, GoAwayOut):  # a session closed by this decision is closed all the same
                session.send(message)  # (sessions live in memory only): its miner reconnects
        unit = pending.unit
        first: dict[str, tuple[Job, Event]] = {}  # job -> its first change in this unit (what it was before)
        for job, event in pending.notes:
            if job.job_id not in first and job.job_id in pending.given_back:  # what its miner held
                event = dataclasses.replace(event, attempt=pending.given_back[job.job_id])
            first.setdefault(job.job_id, (job, event))
        detached = []
        freed: dict[str, Session] = {}  # live sessions a job was taken from (its slot, unless reserved)
        for job_id, (job, event) in first.items():
            if unit.inserts(job_id):
                self._forget_failed_insert(job, freed)
            elif self._detach(job, event, unit.key, job_id in pending.unheld, freed, pending.untold):
                detached.append(job_id)
            elif job_id not in pending.unheld:
                self._held_meanwhile(job_id, event, unit.key)
            if self._listings:
                self._adopt_listing(job_id)
        for session, message in pending.sends:  # (after the jobs are taken out, before any refill below)
            if isinstance(message, CancelOut) and message.reason == "NOT_HELD":
                self._not_held_all_the_same(session, message)
        for miner in {job.miner_id for job, _ in first.values()} | {e.miner_id for _, e in first.values()}:
            session = self.by_miner.get(miner)
            if session is not None and session.draining:  # its only job undone (an assignment that failed)
                self._close_if_drained(session)
        ending = self._ends_stream.get(id(pending))
        if ending is not None:  # this failure ends that stream (see _commit_message): nothing new goes there
            freed.pop(ending.session_id, None)
            self.available.pop(ending.session_id, None)
        if not self.stopping:
            self._refill_after_failure(freed.values())
        if detached and not self.stopping:  # at the next start, everything is loaded from the store anyway
            task = asyncio.get_running_loop().create_task(self._restore(detached))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            for job_id in detached:
                self._detached[job_id].task = task

    async def _commit_message(
        self: Scheduler, session: Session, pending: Pending, *, in_background: bool = False
    ) -> None:
        """Commit the decision of a miner's message about its job (an accept, a reject, a result, a failure
        report). On a stream its write's error ends the stream (the reader raises it), unless the message is
        answered in the background once its job is back (`in_background`: see _when_back). Then the undo
        refills nothing there: the slots it frees may outnumber those it keeps for the jobs the miner may still
        run (a slot whose fill was put off, beside queued jobs, was filled by the failed decision too). A job
        refilled onto the ending stream was never sent: lost when its miner came back without it, its attempt
        spent."""
        if session.transport != "stream" or in_background:
            await self._commit(pending)
            return
        self._ends_stream[id(pending)] = session
        try:
            await self._commit(pending)
        finally:
            del self._ends_stream[id(pending)]

    def _not_held_all_the_same(self: Scheduler, session: Session, cancel: CancelOut) -> None:
        """A NOT_HELD of a failed decision (a new session's opening: its hello listed a job that is not its
        miner's at that attempt) is not the decision's to undo: it says what the store holds whether or not the
        write landed (a change being written then that could give the job back kept the listing instead, and no
        undo gives a miner an attempt it was not given). Sent now, before anything refills the session: its
        miner would otherwise run the job in a slot counted as free, and never drop it (heartbeats do not
        correct it). Not to a session that holds the job at that attempt by now."""
        if not session.closed and not self._holds(session, cancel.job_id, cancel.attempt):
            session.send(cancel)

    @staticmethod
    def _holds(session: Session, job_id: str, attempt: int) -> bool:
        held = session.held.get(job_id)
        return held is not None and held.attempt == attempt

    def _refill_after_failure(self: Scheduler, sessions: Iterable[Session]) -> None:
        """Queued work for slots an undone decision freed: nothing else may touch these sessions for a while
        (a quiet system), and a job queued behind the undone one would wait beside an idle miner. At once
        after one failed commit; while commits keep failing (a full disk), after a backoff (0.05 s doubling
        up to 30 s): each refill's own write would fail too, and take the next queued job out with it. (A
        miner's Capacity raise waits the same: see Scheduler.offer.)"""
        now = now_us()
        until = self._refill_wait_until()
        if until <= now:
            self._refill(sessions, now)
            return
        for session in sessions:
            due = self._refills_due.get(session.session_id, 0)
            if now < due <= until:
                continue  # one is due already (a flapping miner's raises add no timer each)
            if len(self._refills_due) >= len(self.sessions):  # (entries of closed sessions, of past refills)
                self._refills_due = {sid: at for sid, at in self._refills_due.items() if at > now}
            self._refills_due[session.session_id] = until
            self.timers.schedule(until, "refill", session.session_id)

    def _refill_wait_until(self: Scheduler) -> int:
        """Until when slots are not filled from the queue after failed commits: 0 after one (at once); while
        they keep failing, the last one's time plus 0.05 s doubling up to 30 s. From the last failure, not
        from now: a store that failed, then fell quiet, does not hold up the next fill for long."""
        failures = self._failed_in_a_row
        if failures <= 1:
            return 0
        return self._failed_at_us + int(min(0.05 * 2 ** min(failures - 2, 10), 30.0) * MICROS)

    def _refill(self: Scheduler, sessions: Iterable[Session], now: int) -> None:
        for session in sessions:
            if session.free > 0 and session.takes_work:
                pending = Pending()
                self._fill(session, pending, now)
                self._spawn_commit(pending)

    def _forget_failed_insert(self: Scheduler, job: Job, freed: dict[str, Session]) -> None:
        if self.jobs.get(job.job_id) is not job:
            return
        del self.jobs[job.job_id]
        self._refusals.pop(job.job_id, None)
        self.queues.discard(job)
        session = self.by_miner.get(job.miner_id)  # assigned in the same unit: the miner never heard of it
        if session is not None and session.held.pop(job.job_id, None) is not None:
            self._refresh_available(session)
            freed[session.session_id] = session

    def _detach(
        self: Scheduler,
        job: Job,
        first: Event,
        key: int,
        unheld: bool,
        freed: dict[str, Session],
        untold: dict[str, str],
    ) -> bool:
        """Take a job whose in-memory state may be ahead of the store out of every structure that acts on it.
        Until it is read back, reads of it go to the store and timers find nothing to do; if the live
        session that held it before the failed change (first, in unit key) is still open, its slot stays
        reserved: its miner may still run it. Whether its miner heard of the assignment the store has is kept:
        as the failed change noted when it took the job from its session (`untold`: job -> transport), or as
        its orphan has it. (Not the held job's: memory may have assigned it again since, in a change built on
        the failed one.)"""
        if self.jobs.get(job.job_id) is not job:
            return False  # already taken out (a later unit built on the same failed one)
        del self.jobs[job.job_id]
        self._refusals.pop(job.job_id, None)  # (read back, it may be offered to them at once)
        self.queues.discard(job)  # counted out: the queues skip it
        holder = self.by_miner.get(job.miner_id)  # as memory has it
        kept_attempt = -1  # the attempt holder runs, if it holds the job
        told, transport = job.job_id not in untold, untold.get(job.job_id, "")
        if holder is not None and (held := holder.held.get(job.job_id)) is not None and held.job is job:
            kept_attempt = held.attempt
            del holder.held[job.job_id]
            self._refresh_available(holder)
            freed[holder.session_id] = holder
        orphans = self.orphans.get(job.miner_id)
        if orphans is not None and (held := orphans.get(job.job_id)) is not None and held.job is job:
            del orphans[job.job_id]
            if not held.told and held.attempt == first.attempt:  # (read back untold before: see _place)
                told, transport = False, held.transport
            if not orphans:
                del self.orphans[job.miner_id]
            unheld = True  # no session held it when the change was decided (a cancel of an orphan, say)
        reserved: Session | None = None
        ran = first.from_state in (JobState.ASSIGNED, JobState.RUNNING)  # first.miner_id ran it, as stored
        if ran and not unheld:
            reserved = self.by_miner.get(first.miner_id)
            # The session open when the change was decided held the job then. One opened since holds it only
            # if its miner listed it (kept, at the attempt the change was about); if not, it lost it, and the
            # read-back requeues it.
            if (
                reserved is not None
                and not reserved.closed
                and (reserved.opened_key < key or (reserved is holder and kept_attempt == first.attempt))
            ):
                reserved.reserved += 1
                self._refresh_available(reserved)
            else:
                reserved = None
        self._detached[job.job_id] = Detached(
            reserved,
            first.miner_id if ran else "",
            first.attempt,
            holder=reserved,
            announced=first.sequence - 1,
            told=told,
            transport=transport,
        )
        self._write_failures[job.job_id] = self._write_failures.get(job.job_id, 0) + 1
        return True

    def _reserve(self: Scheduler, marker: Detached, session: Session) -> None:
        """The job of marker keeps a slot of session (a live one, where its miner may still run it)."""
        if not session.closed:
            session.reserved += 1
            self._refresh_available(session)
            marker.reserved = marker.holder = session

    def _held_meanwhile(self: Scheduler, job_id: str, first: Event, key: int) -> None:
        """A failed change built on another failed one, to a job already taken out: if a session held the job
        when this change was decided (one opened since the first change, whose miner listed it), that session
        keeps its slot, as if the first change had found it there (a cancel decided on it, say)."""
        marker = self._detached.get(job_id)
        if (
            marker is None
            or marker.reserved is not None
            or first.from_state not in (JobState.ASSIGNED, JobState.RUNNING)
            or (first.miner_id, first.attempt) != (marker.miner_id, marker.attempt)
        ):
            return
        session = self.by_miner.get(first.miner_id)
        if session is not None and session.opened_key < key:
            self._reserve(marker, session)

    def _listed_while_written(self: Scheduler, session: Session, job_id: str, attempt: int) -> bool:
        """A new session's miner lists a job that a change being written took from it at that attempt (a
        cancel): should the write fail, the job is its miner's still. It keeps running it meanwhile (the
        welcome names it, and a slot stays reserved for it) and hears NOT_HELD only once the change is
        durable. Whether that is the case."""
        pending = self._unsettled.get(job_id)
        while (  # the job's unsettled changes, latest first (one already settled ends the walk: it landed)
            pending is not None
            and pending.settled is not None
            and not pending.settled.done()
            and not any(
                job.job_id == job_id
                and event.from_state in (JobState.ASSIGNED, JobState.RUNNING)
                and event.miner_id == session.miner_id
                and pending.given_back.get(job_id, event.attempt) == attempt  # (the attempt it held)
                for job, event in pending.notes
            )
        ):
            pending = pending.earlier.get(job_id)
        if pending is None or pending.settled is None or pending.settled.done():
            return False
        self._listings[job_id] = (session, attempt)
        session.reserved += 1
        pending.always.append(lambda: self._listing_settled(job_id, session, attempt))
        return True

    def _listing_settled(self: Scheduler, job_id: str, session: Session, attempt: int) -> None:
        """The change a listing waited for is durable: the miner hears NOT_HELD, and the slot is free again.
        (Had it failed, _failed gave the listing to the job being read back first.)"""
        if self._listings.get(job_id) != (session, attempt):
            return
        del self._listings[job_id]
        self._drop_listing(job_id, session, attempt)

    def _adopt_listing(self: Scheduler, job_id: str) -> None:
        """A change failed while a miner's new session listed the job it took: if the job is being read back
        as that miner's at that attempt, the listing's slot is the job's (and its welcome was right)."""
        listing = self._listings.pop(job_id, None)
        if listing is None:
            return
        session, attempt = listing
        marker = self._detached.get(job_id)
        if (
            marker is not None
            and not session.closed
            and session is self.by_miner.get(marker.miner_id)
            and attempt == marker.attempt
        ):
            marker.listed = listing
            marker.told = True  # (its miner lists it)
            if marker.reserved is None:
                marker.reserved = marker.holder = session  # (the slot reserved when it listed the job)
                return
            session.reserved -= 1  # (already reserved on it for the job)
            self._refresh_available(session)
            return
        self._drop_listing(job_id, session, attempt)

    def _drop_listing(self: Scheduler, job_id: str, session: Session, attempt: int) -> None:
        session.reserved -= 1
        if session.closed:
            return
        held = session.held.get(job_id)
        if held is None or held.attempt != attempt:
            session.send(CancelOut(job_id, attempt, "NOT_HELD"))
        pending = Pending()
        self._fill(session, pending, now_us())  # (or ends it, if it drains)
        self._spawn_commit(pending)

    def _reserve_on(self: Scheduler, session: Session, listed: dict[str, int]) -> None:
        """A miner's new session: it keeps a slot for each of the miner's jobs being read back that it lists
        as running (moved from its previous session, or reserved afresh if the miner was away when the
        write failed); a reservation for a job it does not list is released (the miner lost that job)."""
        for job_id, marker in self._detached.items():
            old = marker.reserved
            if marker.runs(session, listed, job_id):
                marker.listed = (session, listed[job_id])
                marker.told = True  # (its miner lists it)
                if old is not session:
                    if old is not None:
                        old.reserved -= 1
                        self._refresh_available(old)
                    session.reserved += 1
                    marker.reserved = session
            elif old is not None and old is not session and old.miner_id == session.miner_id:
                old.reserved -= 1  # (a session of its miner that does not list it: the miner lost it)
                self._refresh_available(old)
                marker.reserved = None

    async def _restored(self: Scheduler, job_id: str, within: float = 10.0) -> None:
        """Wait, for a while at most, until a job taken out after a failed commit is read back."""
        marker = self._detached.get(job_id)
        if marker is not None and marker.task is not None:
            await asyncio.wait({marker.task}, timeout=within)  # waits without cancelling it

    async def _restore(self: Scheduler, job_ids: list[str]) -> None:
        """Read detached jobs back once every write queued before is settled, and place them as start()
        would: queued, held by their miner's live session (its lease decides), or orphaned."""
        delay = 0.05
        while True:
            try:
                await self.store.commit(
                    UnitOfWork()
                )  # the writer commits in order: earlier writes are settled
                stored = [await self.store.get_job(job_id) for job_id in job_ids]
                unannounced = await self._unannounced_changes(stored)
                break
            except Exception:
                if self.stopping:
                    return
                log.warning("cannot read jobs back after a failed commit; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        now = now_us()
        restored = 0
        freed: dict[str, Session] = {}
        for job_id, job in zip(job_ids, stored, strict=True):
            marker = self._detached.pop(job_id, None)
            if marker is None:
                continue
            if marker.reserved is not None:
                marker.reserved.reserved -= 1
                freed[marker.reserved.session_id] = marker.reserved
            if job is not None and job_id not in self.jobs:
                self._announce(job, unannounced.get(job_id, ()), marker)
            if job is None or job.state.terminal or job_id in self.jobs:
                self._write_failures.pop(job_id, None)
            else:
                try:
                    self._place(job, now, marker)
                    restored += 1
                except Exception:  # one job must not strand the others (their markers, their reservations)
                    log.exception("could not place job %s read back after a failed commit", job_id)
            if marker.listed is not None:  # its miner said it runs it; spared the NOT_HELD then, unless held
                listing, attempt = marker.listed
                if not listing.closed and not self._holds(listing, job_id, attempt):
                    listing.send(CancelOut(job_id, attempt, "NOT_HELD"))
        for session in freed.values():  # a reserved slot the job did not take back is free again
            if not session.closed:
                pending = Pending()
                self._fill(session, pending, now)
                self._spawn_commit(pending)
        log.warning("after a failed commit, %d of %d jobs restored from the store", restored, len(job_ids))

    async def _unannounced_changes(self: Scheduler, stored: list[Job | None]) -> dict[str, list[Event]]:
        """The stored changes of jobs read back that memory never announced: a write reported failed may have
        landed all the same (PostgreSQL: a COMMIT whose answer was lost, its outcome not settled). Read only
        for jobs whose stored sequence is past what was announced (as a rule, none)."""
        changes: dict[str, list[Event]] = {}
        for job in stored:
            marker = self._detached.get(job.job_id) if job is not None else None
            if job is not None and marker is not None and job.event_seq > marker.announced:
                events = await self.store.get_events(job.job_id)
                changes[job.job_id] = [e for e in events if marker.announced < e.sequence <= job.event_seq]
        return changes

    def _announce(self: Scheduler, job: Job, changes: Iterable[Event], marker: Detached) -> None:
        """Tell watchers and observers of a job read back the changes that landed unannounced (as a resumed
        watch replays them, each with the job as stored): a watcher of a job whose end landed so hears of it
        and ends, rather than wait until its deadline; the observers' per-job state and the live counts
        follow the job's stored state. A terminal job is then forgotten, as after its own commit."""
        for event in changes:
            if event.sequence > marker.announced:
                marker.announced = event.sequence
                self._notify(job, event)
        if job.state.terminal:
            key = (job.client_id, job.idempotency_key)
            if job.idempotency_key and self.idempotency.get(key) == job.job_id:
                del self.idempotency[key]  # (the store's unique index answers for it, as in _forget)

    def _place(self: Scheduler, job: Job, now: int, marker: Detached) -> None:
        self.jobs[job.job_id] = job
        # A job whose writes keep failing (a full disk) waits longer each time before anything is decided
        # for it again: its dispatch, and its timers (an expiry or a timeout already due would fire at once).
        wait_until = now + self._write_backoff_us(job.job_id)
        if job.state is JobState.QUEUED:
            if wait_until > now:
                job.not_before_us = max(job.not_before_us, wait_until)
            self.timers.schedule(max(job.expires_us, wait_until), "ttl", job.job_id)
            job.ttl_timed = True
            if job.not_before_us > now:
                self.timers.schedule(job.not_before_us, "ready", job.job_id)
            else:
                self._dispatch_or_queue(job)
            return
        held = Held(job, job.attempt, 0, exec_deadline(job), told=marker.told, transport=marker.transport)
        session = self.by_miner.get(job.miner_id)
        if session is not None and session.closed:
            session = None
        if session is not None and marker.kept_by(session, job.attempt):
            if held.told or self._still_leaves(held, session, now):  # (untold: it leaves, as usual)
                self._place_held(held, session, now, wait_until)
                return
        # A session opened meanwhile, whose miner did not list the job: it lost it (as open_session rules). Or
        # the session's miner dropped it (its message about it refused NOT_STORED: see _dropped). Or it never
        # heard of it and never will (its assignment was passed over while the failed change was written, or
        # its execution deadline passed meanwhile). Or none is open: its miner may come back with it within the
        # grace period, unless it never heard of it.
        until = wait_until  # (past a backoff: its requeue failed before)
        if session is not None:
            held.lost = "MINER_LOST_JOB"  # (its miner is not gone: it lost the job, or dropped it)
        elif held.told:
            until = max(now + int(self.settings.grace_s * MICROS), wait_until)
        if until > now:  # the orphans' timer requeues it then (unspent if untold: see _requeue_held)
            held.lease_us = until
            self.orphans.setdefault(job.miner_id, {})[job.job_id] = held
            self.timers.schedule(until, "orphans", job.miner_id)
            return
        pending = Pending()
        pending.unheld.add(job.job_id)
        self._requeue_held(job, held, held.lost, now, pending)
        self._spawn_commit(pending)

    @staticmethod
    def _still_leaves(held: Held, session: Session, now: int) -> bool:
        """Whether an untold job read back onto its session is still to be handed to its miner: its assignment
        waits to leave, and its execution deadline has not passed (it would be timed out at once, its attempt
        spent on a run that never was). If not, an assignment still waiting for a poll is withdrawn (a stream's
        writer passes it over: see Scheduler.deliverable)."""
        key = (held.job.job_id, held.attempt)
        if key not in session.unsent:
            return False
        if held.exec_deadline_us > now:
            return True
        session.withdraw(*key)
        return False

    def _place_held(self: Scheduler, held: Held, session: Session, now: int, wait_until: int) -> None:
        """A job read back onto the live session that holds it. The miner may still run it (a cancel failed to
        commit) or not (its result failed to commit): its heartbeats keep the lease, or the lease runs out and
        the job is requeued. One its miner never heard of whose assignment is still to leave (the stream's
        outbox, the next poll) stays untold: delivered then (Scheduler.deliverable); if the lease runs out
        first, or the session ends, it goes back unspent, as any untold assignment."""
        job = held.job
        held.lease_us = max(now + int(self.settings.lease_s * MICROS), wait_until)
        session.held[job.job_id] = held
        self.timers.schedule(held.lease_us, "lease", job.job_id, job.attempt)
        self.timers.schedule(max(held.exec_deadline_us, wait_until), "exec", job.job_id, job.attempt)
        self._refresh_available(session)

    def _write_backoff_us(self: Scheduler, job_id: str) -> int:
        """0 after one failed write; then 0.05 s, doubling, up to 30 s."""
        failures = self._write_failures.get(job_id, 0)
        if failures <= 1:
            return 0
        return int(min(0.05 * 2 ** min(failures - 2, 10), 30.0) * MICROS)

    def _coming_back(self: Scheduler, session: Session, job_id: str) -> bool:
        """Whether a message of session's miner about job_id, which the session does not hold, may yet find it
        there: a change to the job is being written (a cancel taking it from this miner, which may fail and
        give it back), or the job is out of memory after a failed commit and was this miner's."""
        if job_id in session.held:
            return False
        marker = self._detached.get(job_id)
        return job_id in self._unsettled or (
            marker is not None and marker.miner_id == session.miner_id
            and marker.task is not None and not marker.task.done()  # (not when stopping: no read-back)
        )  # fmt: skip

    def _when_back(self: Scheduler, session: Session, job_id: str, attempt: int, what: str,
                   then: Callable[[], Awaitable[list[AckOut]]], send: Callable[[AckOut], None]) -> None:  # fmt: skip
        """On a stream: answer a message (`what`: a result, a failure report) about a job coming back (see
        _coming_back) once it is back, sending what `then` answers, without holding up the stream's other
        messages meanwhile (however long the store stays unwritable). If the stream ends first, the miner
        sends it again on its next one. If its own write fails WRITE_TRIES times, it is refused NOT_STORED:
        the miner drops it, and the job runs again at once (_dropped)."""

        async def answer() -> None:
            failures = 0
            while not session.closed:
                if job_id in self._unsettled:
                    await self._settled(job_id)
                    continue
                if self._coming_back(session, job_id) and job_id in self._detached:
                    await self._restored(job_id)
                    continue
                try:
                    acks = await then()
                except Exception as exc:
                    if not (isinstance(exc, CoordinatorError) and exc.reason == "JOB_RESTORING"):
                        failures += 1  # its own write failed (the job is out again: wait for it again)
                    if failures < WRITE_TRIES and self._coming_back(session, job_id):
                        continue
                    log.warning("a message of miner %s about job %s could not be stored: %r", session.miner_id,
                                job_id, exc)  # fmt: skip
                    acks = [AckOut(job_id, attempt, False, reason="NOT_STORED",
                                   message=f"the {what} could not be stored; the job will run again")]  # fmt: skip
                    self._dropped(session, job_id, attempt)
                for ack in acks:  # (also when its own commit closed the session: a drained one's last
                    send(ack)  # result; the ack leaves before the GoAway, as on the stream's own path)
                return

        def answered(task: asyncio.Task) -> None:
            self._background.discard(task)
            session.answering -= 1
            if not self.stopping:
                self._close_if_drained(session)  # (it waited for this answer)

        # Counted from now, not from the task's first step: a drain decided in between waits for it too; and
        # uncounted by the done callback, which runs even for a task cancelled before it started.
        session.answering += 1
        task = asyncio.create_task(answer(), name=f"when-back-{job_id}")
        self._background.add(task)  # (cancelled with the read-backs when the scheduler stops)
        task.add_done_callback(answered)

    def _dropped(self: Scheduler, session: Session, job_id: str, attempt: int) -> None:
        """session's miner is told that its message about job_id's attempt is refused NOT_STORED: it drops the
        message and no longer runs the job, so the job runs again now (as for a miner that lost it), not once
        its lease runs out. At once if the session holds it; if it is out after a failed commit (its message's
        own write failed), once it is read back (then _place requeues it: the session no longer keeps it)."""
        if session.closed:  # (the refusal may never reach the miner: it sends the message again)
            return
        marker = self._detached.get(job_id)
        if marker is not None:
            if (marker.miner_id, marker.attempt) == (session.miner_id, attempt):
                marker.dropped_by = session
            return
        held = session.held.get(job_id)
        if held is None or held.attempt != attempt or self.jobs.get(job_id) is not held.job:
            return
        del session.held[job_id]
        now = now_us()
        pending = Pending()
        pending.unheld.add(job_id)  # (should this write fail, the job read back is not the session's either)
        self._lose_lease(held.job, "MINER_LOST_JOB", now, pending)
        self._fill(session, pending, now)
        self._spawn_commit(pending)

    async def _unless_detached(self: Scheduler, session: Session, job_id: str) -> bool:
        """If job_id is out of memory after a failed commit and was this miner's, wait (for a while at most)
        until it is read back, so that the miner's message about it is matched against what the store holds
        instead of refused; and first, if a change to it is being written (a cancel taking it from this
        miner, which may fail and give it back), until that write settles. Whether it waited and the job is
        now in this session's hands."""
        if job_id in session.held:
            return False
        waited = False
        if job_id in self._unsettled:
            await self._settled(job_id)
            waited = True
        marker = self._detached.get(job_id)
        if marker is not None and marker.miner_id == session.miner_id:  # (another miner's: refused at once)
            await self._restored(job_id)
            if job_id in self._detached:
                # Still not back (the store stays unwritable): refusing it JOB_NOT_HELD now would be wrong
                # once the job is read back into this session's hands. The caller retries: a unary miner
                # calls again; on a stream (an accept or a reject) the stream ends, and the miner's
                # reconnect lists the job.
                raise CoordinatorError(Kind.UNAVAILABLE, "JOB_RESTORING",
                                       f"job {job_id} is being read back from the store after a failed write; retry",
                                       metadata={"job_id": job_id})  # fmt: skip
            waited = True
        return waited and job_id in session.held
