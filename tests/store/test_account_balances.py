"""Account balances kept with the ledger (schema 6, account_balances): a start reads a row per account, not every
ledger entry ever booked (that GROUP BY took ~2 s a million receipts). What load_accounts returns must stay the
ledger's sum, however the entries were grouped into commits, past a BIGINT of nano units, and for a store written
before the table existed. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path

import pytest

from coordinator.store import Store, open_store
from coordinator.store.base import LedgerEntry, UnitOfWork

from .store_support import (
    T0,
    create_schema,
    drop_schema,
    pg_url,
    postgres_schema_of_version,
    sqlite_store_of_version,
)

BIG = 4_000_000_000_123_456_789  # an entry fits a BIGINT; three of them in a balance do not


def entries(count: int, seed: int) -> list[LedgerEntry]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        amount = rng.choice([rng.randint(-(10**10), 10**10), BIG, -BIG, -987_654_321, 1])
        units = rng.choice([rng.randint(0, 10**10), BIG])
        account = rng.choice(["alice", "bob", "m1", "m2", "whale"])
        out.append(LedgerEntry(account, rng.choice(["client", "miner"]), f"rc-{seed}-{i}", amount, units,
                               T0 + rng.randint(0, 10**6)))  # fmt: skip
    return out


def summed(booked: list[LedgerEntry]) -> dict[tuple[str, str], dict]:
    """What the ledger says, account by account (load_accounts' rows)."""
    acc: dict[tuple[str, str], dict] = defaultdict(lambda: {"balance_nano": 0, "receipts": 0, "units_nano": 0,
                                                              "updated_us": 0})  # fmt: skip
    for e in booked:
        a = acc[(e.account_id, e.kind)]
        a.update(account_id=e.account_id, kind=e.kind, balance_nano=a["balance_nano"] + e.amount_nano,
                 receipts=a["receipts"] + 1, units_nano=a["units_nano"] + e.units_nano,
                 updated_us=max(a["updated_us"], e.booked_us))  # fmt: skip
    return dict(acc)


def unit_of(batch: list[LedgerEntry]) -> UnitOfWork:
    unit = UnitOfWork()
    unit.ledger += batch
    return unit


async def accounts(store: Store) -> dict[tuple[str, str], dict]:
    return {(a["account_id"], a["kind"]): a for a in await store.load_accounts()}


async def test_balances_are_the_ledgers_sum_however_the_entries_were_committed(store: Store) -> None:
    booked = entries(600, seed=1)
    # one by one, then concurrently (the writer groups them), then a unit of many entries
    for e in booked[:50]:
        await store.commit(unit_of([e]))
    await asyncio.gather(*(store.commit(unit_of(booked[i : i + 3])) for i in range(50, 350, 3)))
    await store.commit(unit_of(booked[350:]))
    assert await accounts(store) == summed(booked)
    for a in (await accounts(store)).values():
        assert all(type(a[k]) is int for k in ("balance_nano", "receipts", "units_nano", "updated_us"))


async def test_a_failed_unit_books_nothing_into_the_balances(store: Store) -> None:
    booked = entries(20, seed=2)
    await store.commit(unit_of(booked))
    twice = unit_of(
        [LedgerEntry("alice", "client", "rc-again", -5, 1, T0), booked[0]]
    )  # (booked[0]: a duplicate)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.commit(twice)
    assert await accounts(store) == summed(booked)


def insert_ledger(booked: list[LedgerEntry]) -> list[tuple]:
    return [(e.account_id, e.kind, e.receipt_id, e.amount_nano, e.units_nano, e.booked_us) for e in booked]


LEDGER_INSERT = (
    "INSERT INTO ledger_entries (account_id, kind, receipt_id, amount_nano, units_nano, booked_us) VALUES "
)


async def test_a_sqlite_store_written_before_balances_gets_them_from_its_ledger(tmp_path: Path) -> None:
    booked = entries(300, seed=3)
    conn = sqlite_store_of_version(tmp_path / "old.db", 5)
    conn.executemany(LEDGER_INSERT + "(?,?,?,?,?,?)", insert_ledger(booked))
    conn.close()
    store = open_store(f"sqlite:///{tmp_path / 'old.db'}")
    await store.open()
    try:
        assert await accounts(store) == summed(booked)
        later = entries(40, seed=4)
        await store.commit(unit_of(later))
        assert await accounts(store) == summed(booked + later)
    finally:
        await store.close()


async def test_a_postgres_store_written_before_balances_gets_them_from_its_ledger() -> None:
    booked = entries(300, seed=5)
    schema = await create_schema()
    try:
        admin = await postgres_schema_of_version(schema, 5)
        try:
            await admin.executemany(LEDGER_INSERT + "($1,$2,$3,$4,$5,$6)", insert_ledger(booked))
        finally:
            await admin.close()
        store = open_store(pg_url(schema))
        await store.open()
        try:
            assert await accounts(store) == summed(booked)
            later = entries(40, seed=6)
            await store.commit(unit_of(later))
            assert await accounts(store) == summed(booked + later)
        finally:
            await store.close()
    finally:
        await drop_schema(schema)
