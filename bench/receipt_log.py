"""`python -m bench.receipt_log [--leaves N]`: what the receipt log costs a coordinator that has issued N receipts.

A real SQLite store (the coordinator's schema, opened by SqliteStore) holding N leaf hashes (written straight into
`log_leaves`: the leaves of N receipts, without the receipts themselves, which a start does not read). Measured in
one process, one after the other:
- whole tree: every leaf read and built into one MerkleTree, as the coordinator held its log until the log had
  tiles (and as a verifier with the whole log still would);
- tiled, first start: a store without tiles (one written before them): every leaf read in chunks and hashed into
  tiles, as the first start after the upgrade does;
- tiled: the tiles written, a start as every later one is: the tiles and the leaves after the last one;
and, for each, the memory the log keeps (tracemalloc, on a second start: it slows what it watches) and an
inclusion proof of a leaf in an older tile (the median of 200: in memory for the whole tree, a tile read from the
store for the tiled log, its cache cleared before each). Figures only: nothing is asserted (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import random
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aitbc.receipts import MerkleTree

from coordinator.receipts.tiled_log import TILE, TiledLog
from coordinator.store.base import UnitOfWork
from coordinator.store.sqlite import SqliteStore


async def timed(build: Callable[[], Awaitable[Any]]) -> float:
    gc.collect()
    began = time.perf_counter()
    await build()
    return time.perf_counter() - began


async def kept(build: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """(what build returns, the MiB it keeps allocated): built again under tracemalloc, which slows it."""
    gc.collect()
    tracemalloc.start()
    made = await build()
    gc.collect()
    kept_mib = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    return made, kept_mib


async def proof_us(prove: Callable[[int], Awaitable[object]], size: int, before: Callable[[], None]) -> float:
    rng, times = random.Random(7), []
    for _ in range(200):
        index = rng.randrange(max(1, size - 4 * TILE))  # (an older tile: not the open one)
        before()
        began = time.perf_counter()
        await prove(index)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


async def run(leaves: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-log-") as tmp:
        db = Path(tmp) / "log.db"
        store = SqliteStore(str(db))
        await store.open()
        await store.commit(UnitOfWork())  # (the schema made)
        with sqlite3.connect(db) as conn:
            conn.executemany("INSERT INTO log_leaves VALUES (?, ?)",
                             ((i, hashlib.sha256(b"%d" % i).digest()) for i in range(leaves)))  # fmt: skip
        out: dict[str, float] = {"receipt_log_leaves": leaves}
        try:

            async def whole_tree() -> MerkleTree:
                return MerkleTree(await store.read_leaves(0, leaves))

            out["receipt_log_whole_start_s"] = await timed(whole_tree)
            whole, out["receipt_log_whole_mib"] = await kept(whole_tree)

            async def whole_proof(index: int) -> list[bytes]:
                return whole.inclusion_proof(index)

            out["receipt_log_whole_proof_us"] = await proof_us(whole_proof, leaves, lambda: None)
            whole = None  # (its memory back before the tiled log is measured)

            async def tiled() -> TiledLog:
                tiles, _ = await store.load_log_tiles()
                log, hashed = await TiledLog.read(tiles, store.read_leaves)
                if hashed:
                    unit = UnitOfWork()
                    unit.tiles.extend(hashed)
                    await store.commit(unit)
                return log

            out["receipt_log_tiled_first_start_s"] = await timed(tiled)  # (it writes the tiles)
            out["receipt_log_tiled_start_s"] = await timed(tiled)
            log, out["receipt_log_tiled_mib"] = await kept(tiled)

            async def read_tile(t: int) -> list[bytes]:
                return await store.read_leaves(t * TILE, (t + 1) * TILE)

            out["receipt_log_tiled_proof_us"] = await proof_us(
                lambda i: log.inclusion_proof(i, leaves, read_tile), leaves, log._cache.clear
            )
        finally:
            await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receipt_log", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--leaves", type=int, default=1_000_000, help="receipts in the log (default 1,000,000)"
    )
    args = parser.parse_args()
    out = asyncio.run(run(args.leaves))
    print(f"receipt log of {args.leaves:,} leaves     start s   kept MiB   proof of an older leaf, us")
    for name, key in (("whole tree (before tiles)", "whole"), ("tiled, first start (no tiles)", "tiled_first"),
                      ("tiled", "tiled")):  # fmt: skip
        mib = out.get(f"receipt_log_{key}_mib")
        proof = out.get(f"receipt_log_{key}_proof_us")
        print(f"{name:<32} {out[f'receipt_log_{key}_start_s']:>8.2f}   "
              f"{'' if mib is None else f'{mib:>8.1f}':>8}   {'' if proof is None else f'{proof:>8.0f}':>8}")  # fmt: skip


if __name__ == "__main__":
    main()
