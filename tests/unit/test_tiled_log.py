"""The receipt log's tiled tree against the whole tree (aitbc.receipts.MerkleTree, checked against RFC 9162 and the
shared vectors elsewhere): the same roots and proofs for every size and index around tile edges, reading from the
store only the tiles memory does not hold."""

from __future__ import annotations

import hashlib
import random

import pytest
from aitbc.receipts import MerkleTree

from coordinator.receipts import tiled_log
from coordinator.receipts.tiled_log import TILE, TiledLog


def leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(b"leaf %d" % i).digest() for i in range(n)]


class Stored:
    """The store's leaves, with the tiles read counted."""

    def __init__(self, hashes: list[bytes]) -> None:
        self.hashes, self.tiles_read = hashes, []

    async def tile(self, index: int) -> list[bytes]:
        self.tiles_read.append(index)
        return self.hashes[index * TILE : (index + 1) * TILE]

    async def range(self, start: int, end: int) -> list[bytes]:
        return self.hashes[start:end]


@pytest.mark.parametrize(
    "n", [1, 2, TILE - 1, TILE, TILE + 1, 2 * TILE - 1, 2 * TILE, 3 * TILE + 77, 9 * TILE]
)
async def test_roots_and_proofs_equal_the_whole_trees_for_every_size_read_from_tiles(n: int) -> None:
    hashes = leaves(n)
    whole, stored = MerkleTree(hashes), Stored(hashes)
    log, _ = await TiledLog.read(
        [], stored.range
    )  # nothing of the older tiles in memory: their reads are needed
    rng = random.Random(n)
    sizes = sorted({1, n, *(rng.randint(1, n) for _ in range(40)), *(min(n, k * TILE) for k in (1, 2))})
    for size in sizes:
        assert await log.root(size, stored.tile) == whole.root(size)
        for index in {0, size - 1, rng.randrange(size), min(size - 1, TILE)}:
            assert await log.inclusion_proof(index, size, stored.tile) == whole.inclusion_proof(index, size)
        for first in {1, size, rng.randint(1, size), min(size, TILE)}:
            assert await log.consistency_proof(first, size, stored.tile) == whole.consistency_proof(
                first, size
            )


async def test_memory_holds_the_open_tile_and_the_tiles_roots_and_reads_a_tile_once() -> None:
    hashes = leaves(5 * TILE + 3)
    stored = Stored(hashes)
    log = TiledLog()
    completed = [log.append(h) for h in hashes]
    tiles = [c for c in completed if c is not None]
    assert tiles == [(t, MerkleTree(hashes[t * TILE : (t + 1) * TILE]).root()) for t in range(5)]
    assert (log.size, log.tiles, log._open.size) == (5 * TILE + 3, 5, 3)
    # the tiles completed here are kept for the proofs asked next: none is read
    assert await log.inclusion_proof(7, log.size, stored.tile) == MerkleTree(hashes).inclusion_proof(7)
    assert stored.tiles_read == []
    log._cache.clear()  # (as after a start)
    for _ in range(2):
        assert await log.inclusion_proof(TILE + 7, log.size, stored.tile) == MerkleTree(
            hashes
        ).inclusion_proof(TILE + 7)
    assert stored.tiles_read == [1]  # read once, then kept


async def test_a_start_hashes_leaves_without_tiles_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiled_log, "READ_CHUNK", 2 * TILE)
    hashes = leaves(5 * TILE + 9)
    reads: list[tuple[int, int]] = []

    async def read(start: int, end: int) -> list[bytes]:
        reads.append((start, end))
        return hashes[start:end]

    first_two = [MerkleTree(hashes[t * TILE : (t + 1) * TILE]).root() for t in range(2)]
    log, hashed = await TiledLog.read(first_two, read)  # tiles 2-4 not stored
    assert [t for t, _ in hashed] == [2, 3, 4]
    assert reads == [(2 * TILE, 4 * TILE), (4 * TILE, 6 * TILE)]  # from the first tile missing, a chunk each
    assert (log.size, log.tiles) == (len(hashes), 5)
    assert await log.root(log.size, Stored(hashes).tile) == MerkleTree(hashes).root()


async def test_a_tile_the_store_holds_short_is_an_error_not_a_wrong_proof() -> None:
    hashes = leaves(2 * TILE)
    log, _ = await TiledLog.read([], Stored(hashes).range)
    log._cache.clear()

    async def short(index: int) -> list[bytes]:
        return hashes[index * TILE : (index + 1) * TILE - 1]

    with pytest.raises(RuntimeError, match="leaves of complete tile 0"):
        await log.inclusion_proof(3, 2 * TILE, short)
