"""Issues one signed receipt per completed attempt, appends it to the Merkle log and books the ledger.

Everything lands in the unit of work of the COMPLETED transition, so a receipt exists if and only if the
completion does. The store gives each leaf its place in the log as it commits it (commit order), and the
in-memory tree takes leaves only once committed, in that order: a unit that fails to commit leaves no gap
and no phantom leaf, and a checkpoint (signed over the tree) can never contradict the tree rebuilt from
the store after a restart. After a failed commit holding receipts the tree is rebuilt from the store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from aitbc.receipts import (
    MinerSignature,
    build_miner_report,
    leaf_hash,
    new_nonce,
    sign_checkpoint,
    verify_strict,
)
from aitbc.receipts.issuing import ReceiptEncoder
from aitbc.receipts.payload import miner_report_message

from ..config import SettingsError
from ..domain.clock import now_us
from ..domain.errors import CoordinatorError, Kind, invalid
from ..domain.ids import uuid7
from ..domain.model import Job, JobResult
from ..scheduler.engine import ReceiptHook
from ..scheduler.sessions import Session
from ..store.base import CheckpointRow, KeyRow, LedgerEntry, ReceiptRow, Store, UnitOfWork
from .keyring import ActiveKeys, miner_key_row
from .tiled_log import TILE, TiledLog

log = logging.getLogger("coordinator.receipts")

NANO = Decimal("0.000000001")
# the receipt log read back after a failed commit: retried while the store fails, as the scheduler's read-back
REBUILD_FIRST_DELAY_S, REBUILD_MAX_DELAY_S = 0.05, 5.0


def to_nano(value: str) -> int:
    return int((Decimal(value) / NANO).to_integral_value(ROUND_HALF_EVEN))


def from_nano(value: int) -> str:
    text = format((Decimal(value) * NANO).normalize(), "f")
    return "0" if text in ("-0", "0E-9") else text


@functools.lru_cache(maxsize=4096)
def charge(units: str, price: str) -> tuple[str, int, int]:
    """(cost as the receipt writes it, cost in nano units, units in nano units) of units at price: the same
    few pairs recur job after job, and Decimal arithmetic costs microseconds."""
    try:
        cost = to_nano(str(Decimal(units) * Decimal(price)))
    except InvalidOperation:
        raise CoordinatorError(Kind.INVALID_ARGUMENT, "INVALID_RESULT", "units is not a decimal") from None
    units_nano = to_nano(units)
    if max(abs(cost), abs(units_nano)) > MAX_NANO:  # a ledger entry is a 64-bit integer of nano units
        raise CoordinatorError(Kind.INVALID_ARGUMENT, "INVALID_RESULT",
                               f"units {units} at price {price} are beyond what the ledger can book")  # fmt: skip
    return from_nano(cost), cost, units_nano


MAX_NANO = 2**63 - 1


def bad_report(message: str) -> CoordinatorError:
    return CoordinatorError(Kind.INVALID_ARGUMENT, "BAD_MINER_SIGNATURE", message)


class ReceiptIssuer(ReceiptHook):
    def __init__(self, store: Store, keys: ActiveKeys, coordinator_id: str, chain_id: str) -> None:
        self.store = store
        self.keys = keys
        self.coordinator_id = coordinator_id
        self.chain_id = chain_id
        self.origin = f"aitbc.coordinator/{coordinator_id}"
        # The issuing path: checks what a miner or client sent, not what this coordinator made (issue()).
        try:
            self.encoder = ReceiptEncoder(coordinator_id, chain_id)
        except ValueError as exc:  # (else every receipt would be refused)
            raise SettingsError(
                f"COORDINATOR_ID and CHAIN_ID name this coordinator's receipts: {exc}"
            ) from None
        self.tree = TiledLog()
        self.committed_size = 0  # = tree.size: the tree holds committed leaves only
        self._arrived: dict[int, bytes] = {}  # committed leaves waiting for the ones before them
        self._grew = asyncio.Event()  # set (and replaced) whenever the tree grows
        self._resync: asyncio.Task | None = None
        self._stopped = False  # the store closes: nothing more is read back (the next start reads it)
        self._key_reloads: set[asyncio.Task] = set()
        self._reloads = 0  # key read-backs in flight
        self._touched_keys: set[str] | None = None  # key ids changed in memory during them
        self.checkpoint: CheckpointRow | None = None
        self._checkpoint_lock = asyncio.Lock()
        self.accounts: dict[tuple[str, str], dict] = {}
        self.issued = 0
        # No receipt is issued, and no miner key starts, before this: the latest time a key began or a
        # receipt was issued at, so that after the wall clock steps back every receipt lies in its keys'
        # windows.
        self._time_floor_us = max((r.valid_from_us for r in keys.rows), default=0)

    async def load(self) -> None:
        self.tree, checkpoint = await self._read_log()
        self.committed_size = self.tree.size
        self.checkpoint = checkpoint
        if checkpoint is not None and (
            checkpoint.tree_size > self.tree.size
            or await self.root(checkpoint.tree_size) != checkpoint.root_hash
        ):
            raise RuntimeError("the receipt log does not match its last checkpoint: the store was altered")
        if checkpoint is not None:
            self._check_origin(checkpoint)
        for row in await self.store.load_accounts():
            self.accounts[(row["account_id"], row["kind"])] = row
            self._time_floor_us = max(self._time_floor_us, row["updated_us"])  # (booked at issued_at)

    def _check_origin(self, checkpoint: CheckpointRow) -> None:
        """Refuse a COORDINATOR_ID other than the one the store's log was published under: its checkpoints
        name their origin, so under another one every bundle served would fail to verify and every later
        checkpoint would look, to a verifier holding an earlier one, like another log."""
        published = checkpoint.note.split("\n", 1)[0]
        if published != self.origin:
            stored_id = published.removeprefix("aitbc.coordinator/")
            raise SettingsError(
                f"COORDINATOR_ID: the receipt log in this store is published as {published!r} (its "
                f"checkpoints are signed under that name), not {self.origin!r}; set COORDINATOR_ID="
                f"{stored_id} (a log cannot change its origin: verifiers would take it for another log)"
            )

    # ------------------------------------------------------------------ issuing
    def issue(self, job: Job, result: JobResult, session: Session, unit: UnitOfWork) -> str:
        price = session.caps.price or "0"
        cost, amount, units = charge(result.units, price)
        report = signature = None
        if session.receipt_public_key:
            report, signature = self._check_miner_report(job, result, session)
        receipt_id = uuid7()
        now = self._not_before_floor(now_us())
        # build_receipt_payload's bytes: the encoder checks what the miner and client sent (units, unit type,
        # price, digest, names), not this coordinator's own values (ids, clock, cost, the report it built).
        payload = self.encoder.payload(
            receipt_id=receipt_id, job_id=job.job_id, attempt=job.attempt, provider=session.miner_id,
            client=job.client_id, units=result.units, unit_type=result.unit_type, price=price, cost=cost,
            started_us=job.started_us or now, completed_us=result.completed_us, issued_us=now,
            result_sha256=result.result_sha256, input_sha256=job.input_sha256, nonce=new_nonce(),
            miner_report=report, miner_signature=signature,
        )  # fmt: skip
        keys = self.keys
        signers = (keys.coordinator,) if keys.attestation is None else (keys.coordinator, keys.attestation)
        envelope = self.encoder.envelope(payload, signers)
        # its place in the log (leaf_index) is given by the store when the unit commits
        unit.receipts.append(
            ReceiptRow(receipt_id, job.job_id, job.attempt, envelope, -1, leaf_hash(envelope), now)
        )
        unit.ledger.append(LedgerEntry(job.client_id, "client", receipt_id, -amount, units, now))
        unit.ledger.append(LedgerEntry(session.miner_id, "miner", receipt_id, amount, units, now))
        self.issued += 1
        return receipt_id

    def _check_miner_report(
        self, job: Job, result: JobResult, session: Session
    ) -> tuple[bytes, MinerSignature]:
        report, sig = result.miner_report, result.miner_signature
        if not report or not sig:
            raise bad_report(
                "this miner registered a receipt key: results need miner_report and miner_signature"
            )
        expected = build_miner_report(job.job_id, job.attempt, result.result_sha256.hex(), result.units,
                                      result.unit_type)  # fmt: skip
        if report != expected:
            raise bad_report(
                "miner_report does not match the result (job, attempt, digest, units, unit type)"
            )
        if not verify_strict(session.receipt_public_key, miner_report_message(report), sig):
            raise bad_report("miner_signature does not verify with the miner's registered key")
        return report, MinerSignature(miner_key_row(session.miner_id, session.receipt_public_key).key_id, sig)

    def committed(self, unit: UnitOfWork) -> None:
        """After a commit holding receipts: its leaves join the tree (in log order) and its ledger entries
        are booked."""
        for r in unit.receipts:
            if r.leaf_index >= self.tree.size:  # (a rebuild may have taken it already)
                self._arrived[r.leaf_index] = r.leaf_hash
        self._extend()
        for e in unit.ledger:
            acct = self.accounts.setdefault(
                (e.account_id, e.kind),
                {"account_id": e.account_id, "kind": e.kind, "balance_nano": 0, "receipts": 0, "units_nano": 0,
                 "updated_us": 0},
            )  # fmt: skip
            acct["balance_nano"] += e.amount_nano
            acct["receipts"] += 1
            acct["units_nano"] += e.units_nano
            acct["updated_us"] = e.booked_us

    # ------------------------------------------------------------------ the log
    def _extend(self) -> None:
        """Append the committed leaves that now follow the tree without a gap."""
        if self._resync is not None:
            return  # the rebuild takes them
        grew = False
        tiles = []
        while self.tree.size in self._arrived:
            tile = self.tree.append(self._arrived.pop(self.tree.size))
            if tile is not None:
                tiles.append(tile)
            grew = True
        self.committed_size = self.tree.size
        if tiles:
            self._write_tiles(tiles)
        if grew:
            self._grew.set()
            self._grew = asyncio.Event()

    def _write_tiles(self, tiles: list[tuple[int, bytes]]) -> None:
        """Store the tiles the log completed (after their leaves, which are committed): not waited for, and a
        tile whose write fails is hashed from its leaves again at the next start."""
        unit = UnitOfWork()
        unit.tiles.extend(tiles)
        try:
            written = self.store.enqueue(unit)
        except RuntimeError:  # the store is closing: the next start hashes them
            return
        written.add_done_callback(_tiles_written)

    async def _read_log(self) -> tuple[TiledLog, CheckpointRow | None]:
        """The log as stored: its tiles and the leaves after them (those making complete tiles, whose write was
        lost, are hashed into tiles again, and those written)."""
        tiles, checkpoint = await self.store.load_log_tiles()
        if tiles and not await self.store.read_leaves(len(tiles) * TILE - 1, len(tiles) * TILE):
            raise RuntimeError("the receipt log's tiles go beyond its leaves: the store was altered")
        tree, hashed = await TiledLog.read(tiles, self.store.read_leaves)
        if hashed:
            log.info("receipt log: %d tiles hashed from their leaves and stored (a store written before tiles, or "
                     "their write lost)", len(hashed))  # fmt: skip
            self._write_tiles(hashed)
        return tree, checkpoint

    async def _read_tile(self, tile: int) -> list[bytes]:
        return await self.store.read_leaves(tile * TILE, (tile + 1) * TILE)

    async def root(self, size: int) -> bytes:
        """The root of the first size leaves of the committed log."""
        return await self.tree.root(size, self._read_tile)

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 PATH(index, D[0:size]) of the committed log."""
        return await self.tree.inclusion_proof(index, size, self._read_tile)

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 9162 PROOF(first, D[0:second]) of the committed log."""
        return await self.tree.consistency_proof(first, second, self._read_tile)

    def commit_failed(self, unit: UnitOfWork) -> None:
        """A unit holding receipts or keys did not commit: rebuild the tree from the store, which holds
        exactly the committed leaves, rather than guess which ones landed; read the published keys back (a
        miner key registered, or retired, in memory only would otherwise never be written)."""
        if self._stopped:
            return
        if unit.receipts and self._resync is None:
            self._resync = asyncio.get_running_loop().create_task(self._rebuild(), name="receipt-log-rebuild")
        if unit.keys:
            task = asyncio.get_running_loop().create_task(self._reload_keys(), name="keys-reload")
            self._key_reloads.add(task)
            task.add_done_callback(self._key_reloads.discard)

    async def stop(self) -> None:
        """Before the store closes: a rebuild or a key reload started by a commit failed while stopping would
        otherwise read a closed store (the next start reads what the store holds anyway)."""
        self._stopped = True
        tasks = [t for t in (self._resync, *self._key_reloads) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reload_keys(self) -> None:
        """Published keys as the store has them, but for the keys registered or retired meanwhile (their
        writes are queued behind the read: memory is ahead of the store for them, rightly)."""
        self._reloads += 1
        if self._touched_keys is None:
            self._touched_keys = set()
        touched = self._touched_keys
        try:
            await self.store.commit(
                UnitOfWork()
            )  # the writer commits in order: earlier key writes are settled
            stored = await self.store.load_keys()
        except Exception:  # the store is still failing: the next failed key write reads them back again
            log.warning("cannot read the published keys back after a failed commit", exc_info=True)
            return
        finally:
            self._reloads -= 1
            if not self._reloads:
                self._touched_keys = None
        memory = {r.key_id: r for r in self.keys.rows}
        rows = [memory[r.key_id] if r.key_id in touched and r.key_id in memory else r for r in stored]
        stored_ids = {r.key_id for r in stored}
        rows += [memory[k] for k in memory if k in touched and k not in stored_ids]
        self.keys.rows[:] = rows
        log.warning("published keys read back from the store after a failed commit: %d keys", len(rows))

    async def _rebuild(self) -> None:
        try:
            tree = await self._read_log_back()
            if tree is None:  # stopping: the next start reads the log
                return
            self.tree = tree
            self._arrived = {i: h for i, h in self._arrived.items() if i >= self.tree.size}
            log.warning("receipt log rebuilt from the store after a failed commit: %d leaves", self.tree.size)
        finally:
            self._resync = None
            self._extend()

    async def _read_log_back(self) -> TiledLog | None:
        """The stored log, read until the store answers (the failed commit's cause, a full disk or a lost
        server, may fail this read too), with a backoff; None once stopping. Given up, the tree would wait for
        ever for a leaf the store holds and memory does not (every inclusion proof: LOG_CATCHING_UP)."""
        delay = REBUILD_FIRST_DELAY_S
        while not self._stopped:
            try:
                tree, _ = await self._read_log()
                return tree
            except Exception:
                log.warning("cannot read the receipt log back after a failed commit; retrying in %g s", delay,
                            exc_info=True)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, REBUILD_MAX_DELAY_S)
        return None

    async def _holding(self, size: int) -> None:
        """Wait until the tree holds size leaves: a leaf read back from the store is committed, and the
        commit's own bookkeeping (committed()) follows within a turn or two of the event loop."""
        while self.tree.size < size:
            grew = self._grew
            try:
                await asyncio.wait_for(grew.wait(), 10.0)
            except TimeoutError:
                raise CoordinatorError(Kind.UNAVAILABLE, "LOG_CATCHING_UP",
                                       "the receipt log is catching up with the store; retry") from None  # fmt: skip

    async def ensure_checkpoint(self, min_size: int = 0) -> CheckpointRow:
        """The latest checkpoint covering at least min_size leaves, signing a new one if needed."""
        await self._holding(min_size)
        async with self._checkpoint_lock:
            current = self.checkpoint
            size = max(self.committed_size, min_size)
            if current is not None and (current.tree_size == size or 0 < min_size <= current.tree_size):
                return current
            root = await self.root(size)
            note = sign_checkpoint(self.origin, size, root, self.keys.log)
            row = CheckpointRow(size, root, note, now_us())
            unit = UnitOfWork()
            unit.checkpoints.append(row)
            await self.store.commit(unit)
            self.checkpoint = row
            return row

    def check_miner_key(self, miner_id: str, public_key: bytes) -> None:
        """Refuse a miner's receipt key that another miner (or the coordinator) has, or that it had and that was
        retired since (another key registered after it). Its published validity ends at its retirement: what it signed from now on would not verify
        offline, and taking it back would also make it valid for the time it was retired."""
        key_id = miner_key_row(miner_id, public_key).key_id
        for r in self.keys.rows:
            if r.key_id == key_id and r.owner != miner_id:
                # A key is stored by its id alone: taken by a second miner (its public half is published, so no
                # secret is needed to name it), that miner's next key would retire the first one's.
                raise invalid(
                    f"receipt key {key_id} is another miner's; each miner signs with a key of its own",
                    [("hello.receipt_public_key", "in use by another miner: a new key is needed")],
                    "RECEIPT_KEY_IN_USE",
                )
            if r.key_id == key_id and r.owner == miner_id and r.status != "active":
                raise invalid(
                    f"receipt key {key_id} of miner {miner_id} was retired when another key replaced it; "
                    "a retired key cannot come back: use a new one (or the one that replaced it)",
                    [("hello.receipt_public_key", "retired: a new key is needed")],
                    "RECEIPT_KEY_RETIRED",
                )

    def _not_before_floor(self, now: int) -> int:
        """now, or the time floor if the clock stepped back below it; the floor rises to what is returned."""
        self._time_floor_us = max(self._time_floor_us, now)
        return self._time_floor_us

    def register_miner_key(self, miner_id: str, public_key: bytes) -> UnitOfWork:
        """A miner's receipt key, published (and the miner's previous key retired)."""
        unit = UnitOfWork()
        row = miner_key_row(miner_id, public_key)
        known = self.keys.rows
        if any(r.key_id == row.key_id and r.owner == miner_id for r in known):
            return unit
        # (the previous key's receipts end where this key's begin: neither window may end before it starts)
        row.valid_from_us = self._not_before_floor(row.valid_from_us)
        for r in known:
            if r.role == "miner" and r.owner == miner_id and r.status == "active":
                r.status, r.valid_until_us = "retired", row.valid_from_us
                unit.keys.append(r)
        known.append(row)
        unit.keys.append(row)
        if self._touched_keys is not None:  # keys are being read back: these are ahead of the store
            self._touched_keys.update(r.key_id for r in unit.keys)
        return unit

    def published_keys(self) -> list[KeyRow]:
        return list(self.keys.rows)


def _tiles_written(written: asyncio.Future[None]) -> None:
    if not written.cancelled() and written.exception() is not None:
        log.warning("receipt log tiles not written (the next start hashes them from their leaves): %s",
                    written.exception())  # fmt: skip
