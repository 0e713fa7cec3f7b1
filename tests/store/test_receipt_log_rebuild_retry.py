"""The receipt log rebuilt after a failed commit (ReceiptIssuer._rebuild) when the store fails that read too.

The rebuild is the safety net for a tree that no longer matches the store: given up on one failed read, the
tree waited for ever for a leaf the store holds and memory does not (every later leaf held back, every
inclusion proof LOG_CATCHING_UP), and the error only showed as "Task exception was never retrieved". It is
retried with a backoff, as the scheduler's read-back is, until the store answers.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from aitbc.receipts import MerkleTree, leaf_hash

from coordinator.receipts.issuer import ReceiptIssuer
from coordinator.receipts.keyring import load_keys
from coordinator.store.base import ReceiptRow, UnitOfWork
from coordinator.store.postgres import PostgresStore

from .store_support import T0, pg_admin, pg_url


def receipt_unit(n: int) -> UnitOfWork:
    unit = UnitOfWork()
    envelope = f"envelope {n}".encode()
    unit.receipts.append(ReceiptRow(f"rc-{n}", f"job-{n}", 1, envelope, -1, leaf_hash(envelope), T0 + n))
    return unit


async def lock_log_leaves(schema: str) -> asyncpg.Connection:
    """A maintenance lock on the log's table, held until the connection's transaction ends."""
    conn = await pg_admin()
    await conn.execute(f'SET search_path = "{schema}"')
    await conn.execute("BEGIN")
    await conn.execute("LOCK TABLE log_leaves IN ACCESS EXCLUSIVE MODE")
    return conn


async def test_a_rebuild_whose_read_fails_is_retried_until_the_store_answers(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # reads give a lock up after 0.2 s (lock_timeout): the rebuild's read fails while the table is locked
    store = PostgresStore(pg_url(schema), read_timeout_s=0.2)
    await store.open()
    try:
        issuer = ReceiptIssuer(
            store, await load_keys(store, "", "", "aitbc.coordinator/test"), "test", "chain"
        )
        await issuer.load()
        # a receipt the store holds and the tree does not (a commit reported failed that had landed)
        await store.commit(receipt_unit(0))
        maintenance = await lock_log_leaves(schema)
        try:
            with caplog.at_level(logging.WARNING, logger="coordinator.receipts"):
                issuer.commit_failed(receipt_unit(1))  # (a unit holding a receipt that did not commit)
                rebuild = issuer._resync
                assert rebuild is not None
                for _ in range(500):  # the rebuild's first read fails on the lock
                    if rebuild.done() or "cannot read the receipt log back" in caplog.text:
                        break
                    await asyncio.sleep(0.02)
        finally:
            await maintenance.execute("ROLLBACK")
            await maintenance.close()

        later = receipt_unit(2)
        await store.commit(later)  # its leaf follows the one memory lacked
        issuer.committed(later)
        for _ in range(500):
            if issuer.tree.size == 2:
                break
            await asyncio.sleep(0.02)
        stored = await store.read_leaves(0, 10)
        assert len(stored) == 2
        assert issuer.tree.size == 2, "the tree still lacks the leaf the store holds: the rebuild gave up"
        assert await issuer.root(2) == MerkleTree(stored).root(2)
        await issuer.stop()
    finally:
        await store.close()


async def test_a_rebuild_still_retrying_ends_with_stop(schema: str, caplog: pytest.LogCaptureFixture) -> None:
    """stop() ends a rebuild that is still retrying (the next start reads the log)."""
    store = PostgresStore(pg_url(schema), read_timeout_s=0.2)
    await store.open()
    try:
        issuer = ReceiptIssuer(
            store, await load_keys(store, "", "", "aitbc.coordinator/test"), "test", "chain"
        )
        await issuer.load()
        maintenance = await lock_log_leaves(schema)
        try:
            with caplog.at_level(logging.WARNING, logger="coordinator.receipts"):
                issuer.commit_failed(receipt_unit(1))
                rebuild = issuer._resync
                assert rebuild is not None
                for _ in range(500):
                    if "cannot read the receipt log back" in caplog.text:
                        break
                    await asyncio.sleep(0.02)
            assert not rebuild.done()  # retrying
            await issuer.stop()
            assert rebuild.cancelled()
        finally:
            await maintenance.execute("ROLLBACK")
            await maintenance.close()
    finally:
        await store.close()
