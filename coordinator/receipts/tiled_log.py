"""The receipt log's Merkle tree held as tiles: memory and start-up time that do not grow with every receipt.

The whole tree in memory (every leaf hash and every node, as Python bytes) cost ~190 bytes per receipt, and a
start read and hashed every leaf: a million receipts were 190 MiB and over a second of start-up, and a
coordinator at a few hundred jobs a second makes that many in an hour. Here the leaves are grouped in tiles of
TILE leaves (aligned subtrees of height TILE_HEIGHT). Memory holds the tiles' root hashes, as the leaves of a
small tree whose levels are the big tree's levels from TILE_HEIGHT up, and the tree of the one tile not yet
complete. The store holds every leaf, and each complete tile's root (written once the tile is complete, so a
start reads the tiles and the leaves after the last one written). A proof or a root that needs the inside of an
older tile reads that tile's leaves from the store (one range of TILE rows), checks them against its root and
keeps their tree, with the other tiles used last.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

from aitbc.receipts import MerkleTree, node_hash
from aitbc.receipts.merkle import split_point

TILE_HEIGHT = 8
TILE = 1 << TILE_HEIGHT  # leaves per tile
CACHED_TILES = 64  # complete tiles' trees kept after a read (~37 KB each: TILE leaves and their nodes)
READ_CHUNK = 256 * TILE  # leaves read at a time by a start that finds them without their tiles

ReadTile = Callable[[int], Awaitable[list[bytes]]]  # tile index -> its TILE leaf hashes, from the store
ReadLeaves = Callable[[int, int], Awaitable[list[bytes]]]  # [start, end) -> the leaf hashes stored there


def tile_hash(leaves: Sequence[bytes]) -> bytes:
    """The root of a complete tile (TILE leaf hashes)."""
    if len(leaves) != TILE:
        raise ValueError(f"a tile has {TILE} leaves")
    return MerkleTree(leaves).root()


class TiledLog:
    """An append-only RFC 9162 tree of leaf hashes, of which memory holds only tile roots and the open tile."""

    def __init__(self, tile_hashes: Sequence[bytes] = (), tail: Sequence[bytes] = ()) -> None:
        """tile_hashes: the complete tiles' roots, in order; tail: the leaves after them (fewer than TILE)."""
        if len(tail) >= TILE:
            raise ValueError("the tail holds fewer leaves than a tile: fold complete tiles first")
        self._tiles = MerkleTree(tile_hashes)
        # the open tile's leaves, its nodes grown as they come (as the whole tree's were)
        self._open = MerkleTree(tail)
        self._cache: OrderedDict[int, MerkleTree] = OrderedDict()  # complete tiles read or made last

    @classmethod
    async def read(
        cls, tile_hashes: Sequence[bytes], read_leaves: ReadLeaves
    ) -> tuple[TiledLog, list[tuple[int, bytes]]]:
        """The log from its stored tiles and the leaves after them, read a chunk at a time (a store of an older
        version has no tiles: every leaf is read once, and memory holds a chunk of them at most); and the tiles
        those leaves complete (their writes were lost, or never made), to be stored."""
        tiles, hashed = list(tile_hashes), []
        while True:
            start = len(tiles) * TILE
            leaves = await read_leaves(start, start + READ_CHUNK)
            whole = len(leaves) // TILE
            for i in range(whole):
                hashed.append((len(tiles), tile_hash(leaves[i * TILE : (i + 1) * TILE])))
                tiles.append(hashed[-1][1])
            if len(leaves) < READ_CHUNK:
                return cls(tiles, leaves[whole * TILE :]), hashed

    @property
    def size(self) -> int:
        return self._tiles.size * TILE + self._open.size

    @property
    def tiles(self) -> int:
        """Complete tiles."""
        return self._tiles.size

    def append(self, leaf: bytes) -> tuple[int, bytes] | None:
        """Add a leaf hash. Returns (tile index, tile hash) when it completes a tile (for the store), else None."""
        self._open.append(leaf)
        if self._open.size < TILE:
            return None
        index, done = self._tiles.size, self._open
        root = done.root()  # (its top node, made by the append)
        self._tiles.append(root)
        self._remember(index, done)  # (the proofs asked next are mostly for the newest receipts)
        self._open = MerkleTree()
        return index, root

    # ------------------------------------------------------------------ roots and proofs
    async def root(self, size: int, read: ReadTile) -> bytes:
        return await self._computed(lambda view: view.root(size), read)

    async def inclusion_proof(self, index: int, size: int, read: ReadTile) -> list[bytes]:
        return await self._computed(lambda view: view.inclusion_proof(index, size), read)

    async def consistency_proof(self, m: int, n: int, read: ReadTile) -> list[bytes]:
        return await self._computed(lambda view: view.consistency_proof(m, n), read)

    async def _computed(
        self, compute: Callable[[_View], list[bytes] | bytes], read: ReadTile
    ) -> list[bytes] | bytes:
        """compute over a view of the tree, reading the older tiles it needs first. A view is taken afresh after
        each read: the tree may have grown meanwhile (a tile completed), and what a view sees must not change while
        it computes."""
        read_now: dict[int, MerkleTree] = {}
        while True:
            view = _View(self, read_now)
            try:
                return compute(view)
            except _TileNeeded as need:
                read_now[need.tile] = self._remember(
                    need.tile, self._checked(need.tile, await read(need.tile))
                )

    def _checked(self, tile: int, leaves: list[bytes]) -> MerkleTree:
        """A complete tile's leaves read from the store, as a tree, if they are its leaves. Tiles are trusted at a
        start (their leaves are not hashed again): leaves altered since (by hand, a restore of mixed files, a disk)
        would make proofs that do not verify against the checkpoints served with them. An error, not a wrong
        proof."""
        if len(leaves) != TILE:
            raise RuntimeError(f"the store holds {len(leaves)} leaves of complete tile {tile}")
        tree = MerkleTree(leaves)
        if tree.root() != self._tiles.leaf(tile):
            raise RuntimeError(f"the store's leaves of tile {tile} do not hash to its stored root: the store was "
                               "altered")  # fmt: skip
        return tree

    def _remember(self, index: int, tree: MerkleTree) -> MerkleTree:
        self._cache[index] = tree
        self._cache.move_to_end(index)
        while len(self._cache) > CACHED_TILES:
            self._cache.popitem(last=False)
        return tree

    def _tile_tree(self, tile: int, read_now: dict[int, MerkleTree]) -> MerkleTree:
        if tile == self._tiles.size:
            return self._open
        tree = read_now.get(tile) or self._cache.get(tile)
        if tree is None:
            raise _TileNeeded(tile)
        return tree


class _TileNeeded(Exception):
    def __init__(self, tile: int) -> None:
        self.tile = tile


class _View(MerkleTree):
    """The tree as MerkleTree's proof algorithms see it: blocks of a tile or more from the tiles' tree, smaller
    ones from their tile's tree."""

    __slots__ = ("_log", "_read_now", "_size")

    def __init__(self, log: TiledLog, read_now: dict[int, MerkleTree]) -> None:
        super().__init__()
        self._log, self._size, self._read_now = log, log.size, read_now

    @property
    def size(self) -> int:
        return self._size

    def _hash(self, start: int, end: int) -> bytes:
        n = end - start
        if n & (n - 1) == 0:
            k = n.bit_length() - 1
            if k >= TILE_HEIGHT:  # whole tiles: a node of the tiles' tree
                first = start >> TILE_HEIGHT
                return self._log._tiles.subtree_hash(first, first + (n >> TILE_HEIGHT))
            tile = start >> TILE_HEIGHT
            offset = start - (tile << TILE_HEIGHT)
            return self._log._tile_tree(tile, self._read_now).subtree_hash(offset, offset + n)
        k = split_point(n)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))
