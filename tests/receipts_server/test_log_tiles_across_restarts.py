"""The receipt log held as tiles (coordinator/receipts/tiled_log.py): memory keeps the roots of complete runs of 256
leaves and the leaves of the run still open, the store keeps every leaf and each complete tile's root, and a start
reads the tiles and the leaves after them, not every leaf (the whole tree in memory grew ~150 bytes a receipt, and a
start hashed every leaf again). What a verifier gets must not change: every proof, served before and after a
restart, for leaves inside tiles read back from the store, is the RFC 9162 proof of the stored leaves, and verifies
against the checkpoint it comes with. On SQLite and PostgreSQL, with real SDK miners and clients.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from aitbc.client import Client
from aitbc.coordinator.v1 import miner_service_pb2
from aitbc.miner import Miner
from aitbc.receipts import MerkleTree, verify_consistency, verify_inclusion

from coordinator.config import ApiKeyEntry, Settings, validate
from coordinator.receipts.tiled_log import TILE
from coordinator.server import Coordinator, start
from coordinator.store.base import UnitOfWork

CLIENT, MINER = "client-key-0001", "miner-key-0001"


def settings(database_url: str) -> Settings:
    s = Settings(
        app_port=0, database_url=database_url, client_api_keys=(ApiKeyEntry("alice", "client", CLIENT),),
        miner_api_keys=(ApiKeyEntry("m1", "miner", MINER),), reconnect_grace_seconds=1, log_level="WARNING",
    )  # fmt: skip
    validate(s)
    return s


async def complete_jobs(coordinator: Coordinator, count: int) -> None:
    """count jobs submitted in batches and run by a real SDK miner, until their receipts are in the log."""
    address = f"127.0.0.1:{coordinator.port}"
    target = coordinator.issuer.committed_size + count
    caps = miner_service_pb2.MinerCapabilities(slots=16)
    miner = Miner(address, MINER, capabilities=caps, backoff_base_s=0.05)
    running = asyncio.create_task(miner.run())
    try:
        async with Client(address, CLIENT) as client:
            for first in range(0, count, 200):
                await client.submit_many([{"n": n} for n in range(first, min(first + 200, count))])
        for _ in range(3000):
            if coordinator.issuer.committed_size >= target:
                break
            await asyncio.sleep(0.01)
        assert coordinator.issuer.committed_size == target
    finally:
        miner.stop()
        await asyncio.wait_for(running, 10)


async def stored_log(coordinator: Coordinator) -> tuple[list[bytes], list[bytes]]:
    """(every leaf, the tile roots) as the store holds them, once the tiles' writes (not waited for) landed."""
    store = coordinator.scheduler.store
    await store.commit(UnitOfWork())  # (the writer commits in order: the tiles queued before are written)
    leaves = await store.read_leaves(0, 10**9)
    tiles, _ = await store.load_log_tiles()
    return leaves, tiles


async def check_proofs(
    coordinator: Coordinator, leaves: list[bytes], indexes: list[int], firsts: list[int]
) -> None:
    """Proofs served for these leaves and earlier sizes are the stored log's, and verify against its checkpoint."""
    reference = MerkleTree(leaves)
    async with Client(f"127.0.0.1:{coordinator.port}", CLIENT) as client:
        checkpoint = await client.checkpoint()
        size = checkpoint.tree_size
        assert size == len(leaves) and checkpoint.root_hash == reference.root()
        for index in indexes:
            proof = await client.inclusion_proof(index)
            assert list(proof.hashes) == reference.inclusion_proof(index, size), index
            assert verify_inclusion(leaves[index], index, size, list(proof.hashes), checkpoint.root_hash)
        for first in firsts:
            proof = await client.consistency_proof(first)
            assert list(proof.hashes) == reference.consistency_proof(first, size), first
            assert verify_consistency(
                first, size, reference.root(first), checkpoint.root_hash, list(proof.hashes)
            )


async def test_proofs_from_tiles_read_back_after_a_restart_are_the_stored_logs(database_url: str) -> None:
    count = 2 * TILE + 37
    coordinator = await start(settings(database_url))
    try:
        await complete_jobs(coordinator, count)
        leaves, tiles = await stored_log(coordinator)
        assert len(leaves) == count
        # each complete tile's root is stored, as the root of its stored leaves
        assert tiles == [MerkleTree(leaves[t * TILE : (t + 1) * TILE]).root() for t in range(2)]
    finally:
        await coordinator.stop(grace=0.5)

    coordinator = await start(settings(database_url))
    try:
        assert (coordinator.issuer.tree.size, coordinator.issuer.tree.tiles) == (count, 2)
        # leaves in both tiles (read from the store: nothing of them is in memory after the start) and the open run
        edges = [0, 1, TILE - 1, TILE, TILE + 100, 2 * TILE - 1, 2 * TILE, count - 1]
        await check_proofs(coordinator, leaves, edges, [1, 3, TILE, TILE + 1, 2 * TILE, count - 1, count])

        await complete_jobs(coordinator, TILE)  # the log grows past another tile's end after the restart
        leaves, tiles = await stored_log(coordinator)
        assert len(leaves) == count + TILE and len(tiles) == 3
        assert tiles[2] == MerkleTree(leaves[2 * TILE : 3 * TILE]).root()
        await check_proofs(coordinator, leaves, [5, TILE + 7, 2 * TILE + 36, 2 * TILE + 37, len(leaves) - 1],
                           [count, 3 * TILE, len(leaves) - 1])  # fmt: skip
    finally:
        await coordinator.stop(grace=0.5)


async def test_a_store_without_its_tiles_gets_them_at_the_next_start(tmp_path: Path) -> None:
    """A store written before the log had tiles (or whose tiles' writes were lost in a crash): the start hashes the
    leaves after the last stored tile into tiles once, writes them, and serves the same log."""
    db = tmp_path / "c.db"
    coordinator = await start(settings(f"sqlite:///{db}"))
    try:
        await complete_jobs(coordinator, 2 * TILE + 5)
        leaves, tiles = await stored_log(coordinator)
        assert len(tiles) == 2
        checkpoint_before = (await coordinator.issuer.ensure_checkpoint()).root_hash
    finally:
        await coordinator.stop(grace=0.5)
    with sqlite3.connect(db) as conn:  # (the table is append-only: its guard is lifted to take the rows out)
        conn.execute("DROP TRIGGER log_tiles_no_delete")
        conn.execute("DELETE FROM log_tiles WHERE tile_index >= 1")

    coordinator = await start(settings(f"sqlite:///{db}"))
    try:
        assert await stored_log(coordinator) == (leaves, tiles)  # tile 1 hashed and written back
        assert (await coordinator.issuer.ensure_checkpoint()).root_hash == checkpoint_before
        await check_proofs(coordinator, leaves, [0, TILE + 3, len(leaves) - 1], [TILE, len(leaves)])
    finally:
        await coordinator.stop(grace=0.5)


async def test_a_start_refuses_tiles_beyond_the_stored_leaves(tmp_path: Path) -> None:
    """Tiles naming leaves the store does not hold (an altered store): the log would claim receipts that are not
    there, and new leaves would take their places. The start refuses, as for a log that contradicts its checkpoint."""
    db = tmp_path / "c.db"
    coordinator = await start(settings(f"sqlite:///{db}"))
    await coordinator.stop(grace=0.5)
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO log_tiles VALUES (?, ?)", [(0, b"\x01" * 32), (1, b"\x02" * 32)])
    with pytest.raises(RuntimeError, match="the receipt log's tiles go beyond its leaves"):
        await start(settings(f"sqlite:///{db}"))
