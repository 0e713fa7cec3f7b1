"""The receipt log held as tiles and the balances kept with the ledger, on real stores (SQLite and PostgreSQL) with
the real ReceiptIssuer, as a review found them wanting (helper-122):

- A store whose leaves no longer hash to their stored tile root (a restore mixing files, a disk error, a hand
  edit): the whole tree in memory re-hashed every leaf at a start, and a start refused a log contradicting its last
  checkpoint. Tiles are trusted at a start, so a tile's leaves read from the store are checked against its root:
  an error, not a proof that does not verify against the checkpoint served with it (which was served before).
- A store of schema 4 (leaves, ledger, a checkpoint; no tiles, no balances) upgraded: its tiles are hashed once and
  written, a checkpoint inside an older tile is checked, proofs are the whole tree's, balances are the ledger's.
- Balances when a group fails on one unit's rows and every unit is retried alone: each booked once, the culprit not.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aitbc.receipts import MerkleTree, leaf_hash, verify_inclusion

from coordinator.receipts.issuer import ReceiptIssuer
from coordinator.receipts.keyring import load_keys
from coordinator.receipts.tiled_log import TILE
from coordinator.store import Store
from coordinator.store.base import LedgerEntry, ReceiptRow, UnitOfWork

from .store_support import (
    T0,
    Backend,
    pg_admin,
    postgres_schema_of_version,
    sqlite_store_of_version,
)

ORIGIN = "aitbc.coordinator/test"


def receipts_unit(first: int, count: int) -> UnitOfWork:
    unit = UnitOfWork()
    for n in range(first, first + count):
        envelope = f"envelope {n}".encode()
        unit.receipts.append(ReceiptRow(f"rc-{n}", f"job-{n}", 1, envelope, -1, leaf_hash(envelope), T0 + n))
    return unit


async def open_issuer(store: Store) -> ReceiptIssuer:
    """The issuer as a start makes it: its keys, then the log and balances read from the store."""
    issuer = ReceiptIssuer(store, await load_keys(store, "", "", ORIGIN), "test", "chain")
    await issuer.load()
    return issuer


async def lift_append_only_guard(backend: Backend, table: str) -> None:
    """The table refuses UPDATE: its guard is lifted, as by someone editing the store behind the coordinator."""
    if backend.name == "sqlite":
        await backend.raw_execute(f"DROP TRIGGER {table}_no_update")
    else:
        await backend.raw_execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")


async def test_a_tile_whose_stored_leaves_no_longer_match_its_root_gives_an_error_not_a_wrong_proof(
    backend: Backend,
) -> None:
    store = backend.new_store()
    await store.open()
    try:
        issuer = await open_issuer(store)
        unit = receipts_unit(0, 2 * TILE + 3)
        await store.commit(unit)
        issuer.committed(unit)
        checkpoint = await issuer.ensure_checkpoint()
        await store.commit(UnitOfWork())  # (the tiles' writes, queued behind, have landed)
        assert len((await store.load_log_tiles())[0]) == 2
        await issuer.stop()
    finally:
        await store.close()
    await lift_append_only_guard(backend, "log_leaves")
    await backend.raw_execute(
        "UPDATE log_leaves SET leaf_hash = (SELECT leaf_hash FROM log_leaves WHERE leaf_index = 6) "
        "WHERE leaf_index = 5"
    )

    store = backend.new_store()
    await store.open()
    try:
        try:
            issuer = await open_issuer(store)  # refusing at the start is right too
            proof = await issuer.inclusion_proof(5, checkpoint.tree_size)
        except RuntimeError:
            return
        stored = await store.read_leaves(5, 6)
        assert verify_inclusion(stored[0], 5, checkpoint.tree_size, proof, checkpoint.root_hash), (
            "a proof was served that does not verify against the checkpoint it goes with"
        )
        await issuer.stop()
    finally:
        await store.close()


def leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(b"leaf %d" % i).digest() for i in range(n)]


LEDGER = [
    LedgerEntry("alice", "client", f"rc-{i}", -(10**18 + i), 7 * 10**9 + i, T0 + i) for i in range(5)
] + [LedgerEntry("m1", "miner", f"rc-{i}", 10**18 + i, 7 * 10**9 + i, T0 + i) for i in range(5)]


async def write_schema_4_store(backend: Backend, hashes: list[bytes], checkpoint_size: int) -> None:
    """A store as a coordinator of schema 4 left it: leaves, ledger entries and a checkpoint; no tiles, no balances."""
    leaf_rows = list(enumerate(hashes))
    ledger_rows = [
        (e.account_id, e.kind, e.receipt_id, e.amount_nano, e.units_nano, e.booked_us) for e in LEDGER
    ]
    root = MerkleTree(hashes).root(checkpoint_size)
    checkpoint = (checkpoint_size, root, f"{ORIGIN}\n{checkpoint_size}\n-\n", T0)
    ledger_sql = (
        "INSERT INTO ledger_entries (account_id, kind, receipt_id, amount_nano, units_nano, booked_us) "
    )
    if backend.name == "sqlite":
        conn = sqlite_store_of_version(Path(backend.sqlite_path), 4)
        try:
            conn.executemany("INSERT INTO log_leaves VALUES (?,?)", leaf_rows)
            conn.executemany(ledger_sql + "VALUES (?,?,?,?,?,?)", ledger_rows)
            conn.execute("INSERT INTO checkpoints VALUES (?,?,?,?)", checkpoint)
        finally:
            conn.close()
        return
    admin = await postgres_schema_of_version(backend.schema, 4)
    try:
        await admin.executemany("INSERT INTO log_leaves VALUES ($1,$2)", leaf_rows)
        await admin.executemany(ledger_sql + "VALUES ($1,$2,$3,$4,$5,$6)", ledger_rows)
        await admin.execute("INSERT INTO checkpoints VALUES ($1,$2,$3,$4)", *checkpoint)
    finally:
        await admin.close()


async def test_a_schema_4_store_gets_its_tiles_and_balances_and_serves_the_same_log(backend: Backend) -> None:
    hashes = leaves(3 * TILE + 9)
    await write_schema_4_store(backend, hashes, TILE + 3)  # (its check reads tile 1 back from the store)
    whole = MerkleTree(hashes)
    store = backend.new_store()
    await store.open()
    try:
        issuer = await open_issuer(store)
        assert (issuer.tree.size, issuer.tree.tiles) == (len(hashes), 3)
        await store.commit(UnitOfWork())  # (the tiles hashed at the start are written behind it)
        assert (await store.load_log_tiles())[0] == [
            whole.subtree_hash(t * TILE, (t + 1) * TILE) for t in range(3)
        ]
        for index in (0, TILE + 2, 2 * TILE, len(hashes) - 1):
            assert await issuer.inclusion_proof(index, len(hashes)) == whole.inclusion_proof(index)
        assert await issuer.consistency_proof(TILE + 3, len(hashes)) == whole.consistency_proof(TILE + 3)
        assert (await issuer.ensure_checkpoint()).root_hash == whole.root()
        balances = {
            k: (a["balance_nano"], a["receipts"], a["units_nano"]) for k, a in issuer.accounts.items()
        }
        assert balances == {
            ("alice", "client"): (
                sum(e.amount_nano for e in LEDGER[:5]),
                5,
                sum(e.units_nano for e in LEDGER[:5]),
            ),
            ("m1", "miner"): (
                sum(e.amount_nano for e in LEDGER[5:]),
                5,
                sum(e.units_nano for e in LEDGER[5:]),
            ),
        }
        await issuer.stop()
    finally:
        await store.close()


def booking(receipt: str, amount: int) -> UnitOfWork:
    unit = UnitOfWork()
    unit.ledger += [
        LedgerEntry("alice", "client", receipt, -amount, amount, T0),
        LedgerEntry("m1", "miner", receipt, amount, amount, T0),
    ]
    return unit


async def hold_the_writer(backend: Backend) -> Callable[[], Awaitable[None]]:
    """Hold the store's writes back (the SQLite file's write lock, PostgreSQL's balances table locked); returns how
    to let go: the units queued meanwhile are then committed as one group."""
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.sqlite_path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")

        async def release_sqlite() -> None:
            conn.execute("ROLLBACK")
            conn.close()

        return release_sqlite
    admin: asyncpg.Connection = await pg_admin()
    await admin.execute(f'SET search_path = "{backend.schema}"')
    await admin.execute("BEGIN")
    await admin.execute("LOCK TABLE account_balances IN ACCESS EXCLUSIVE MODE")

    async def release_pg() -> None:
        await admin.execute("ROLLBACK")
        await admin.close()

    return release_pg


async def test_a_group_failing_on_one_units_rows_books_the_others_once_each_and_the_culprit_never(
    store: Store, backend: Backend
) -> None:
    await store.commit(booking("rc-0", 5))
    groups: list[int] = []
    store.commit_observer = lambda size, _elapsed: groups.append(size)
    release = await hold_the_writer(backend)
    try:
        first = store.enqueue(booking("rc-1", 10**9 + 7))  # (taken alone, it waits for the hold)
        await asyncio.sleep(0.2)
        good = store.enqueue(booking("rc-2", 3))
        culprit = store.enqueue(booking("rc-0", 100))  # its entries are booked already: a unique key fails it
        other = store.enqueue(booking("rc-3", -2 * 10**9 - 1))
    finally:
        await release()
    await first
    await good
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await culprit
    await other
    for _ in range(100):  # (SQLite's writer thread tells the observer just after the waiters)
        if 3 in groups:
            break
        await asyncio.sleep(0.01)
    assert 3 in groups, f"the three units were not committed as one group: {groups}"

    expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for amount in (5, 10**9 + 7, 3, -2 * 10**9 - 1):
        for account, kind, sign in (("alice", "client", -1), ("m1", "miner", 1)):
            row = expected[(account, kind)]
            row[0] += sign * amount
            row[1] += 1
            row[2] += amount
    got = {(a["account_id"], a["kind"]): [a["balance_nano"], a["receipts"], a["units_nano"]]
           for a in await store.load_accounts()}  # fmt: skip
    assert got == dict(expected)
