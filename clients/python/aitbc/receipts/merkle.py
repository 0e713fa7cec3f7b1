"""RFC 9162 Merkle tree (receipts spec section 6): hashing, an append-only tree for the log, and proofs.

The tree keeps, for every level k, the hashes of all complete aligned subtrees of 2^k leaves
(``levels[k][i]`` covers leaves [i*2^k, (i+1)*2^k)). Such a block never changes once complete, so any
historical root and any proof for an older size is assembled from O(log n) stored blocks plus at most one
O(log n) right-edge recomputation, and an append costs amortised O(1) hashes. The proof verifiers follow
RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "split_point",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()
HASH_SIZE = 32


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one log entry (the envelope bytes)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly less than n (n >= 2): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 9162 tree of leaf hashes. Not thread-safe: the log serialises appends."""

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Build from existing leaf hashes in bulk (one pass per level, n hashes in total)."""
        level = [bytes(h) for h in leaf_hashes]
        for h in level:
            if len(h) != HASH_SIZE:
                raise ValueError("a leaf hash is 32 bytes")
        self._levels: list[list[bytes]] = [level]
        while len(level) >= 2:
            level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self._levels.append(level)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def __len__(self) -> int:
        return self.size

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; returns its index. Completes at most log n blocks (amortised O(1))."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        levels = self._levels
        below = levels[0]
        index = len(below)
        # bytes are immutable: kept as given (a bytearray or memoryview is copied)
        below.append(leaf if leaf.__class__ is bytes else bytes(leaf))
        k, i = 0, index
        while i & 1:  # the block just completed is a right child: its parent is now complete too
            parent = hashlib.sha256(b"\x01" + below[i - 1] + below[i]).digest()  # node_hash, inline
            k += 1
            if k == len(levels):
                levels.append([])
            below = levels[k]
            below.append(parent)
            i >>= 1
        return index

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self._levels[0][index]

    def _hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range whose start is aligned to the power of two covering it.

        Complete aligned blocks are looked up; a partial (right-edge) range splits per RFC 9162 and only
        its right part recurses, so the cost is O(log n).
        """
        n = end - start
        if n & (n - 1) == 0:
            k = n.bit_length() - 1
            return self._levels[k][start >> k]
        k = split_point(n)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range of leaves whose start is a multiple of the power of two covering it (a
        block of 2^k leaves, or the right edge of one): what a larger tree built on this one's hashes needs."""
        n = end - start
        if not 0 <= start < end <= self.size or start & ((1 << (n - 1).bit_length()) - 1):
            raise ValueError(f"[{start}, {end}) is not an aligned range of a tree of {self.size}")
        return self._hash(start, end)

    def _check_size(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} out of range [0, {self.size}]")

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all); the empty tree's root is SHA-256("")."""
        size = self.size if size is None else size
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 2.1.3.1 PATH(index, D[0:size]), leaf to root."""
        size = self.size if size is None else size
        self._check_size(size)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
            raise ValueError(f"leaf index {index} out of range for size {size}")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = split_point(end - start)
            if index < start + k:
                path.append(self._hash(start + k, end))
                end = start + k
            else:
                path.append(self._hash(start, start + k))
                start += k
        path.reverse()
        return path

    def consistency_proof(self, m: int, n: int | None = None) -> list[bytes]:
        """RFC 9162 2.1.4.1 PROOF(m, D[0:n]); empty for m == n and for m == 0 (nothing to prove)."""
        n = self.size if n is None else n
        self._check_size(n)
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= n:
            raise ValueError(f"first size {m} out of range [0, {n}]")
        if m in (0, n):
            return []
        # SUBPROOF(m, D[start:end], b), unrolled: each step descends into one half.
        proof: list[bytes] = []
        start, end, complete = 0, n, True
        while True:
            size = end - start
            if m == size:
                if not complete:
                    proof.append(self._hash(start, end))
                break
            k = split_point(size)
            if m <= k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start += k
                m -= k
                complete = False
        proof.reverse()
        return proof


def _valid_hash_list(proof: Sequence[bytes]) -> bool:
    return all(isinstance(p, bytes | bytearray) and len(p) == HASH_SIZE for p in proof)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: whether ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree ``root`` of
    ``size`` leaves. Truncated or extended proofs, a wrong index or a wrong size give False."""
    if not (_is_count(index) and _is_count(size)) or not _valid_hash_list(proof):
        return False
    if len(leaf) != HASH_SIZE or len(root) != HASH_SIZE or index >= size:
        return False
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(m: int, n: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: whether the tree ``new_root`` of ``n`` leaves extends ``old_root`` of ``m`` leaves.

    m > n (a rollback) is False. m == n needs an empty proof and equal roots. m == 0: the empty tree is
    a prefix of every tree, so an empty proof and ``old_root`` = SHA-256("") suffice (RFC 9162 defines
    proofs only for 0 < m; this is the conventional reading, as in Go's transparency-dev/merkle).
    """
    if not (_is_count(m) and _is_count(n)) or not _valid_hash_list(proof):
        return False
    if len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE or m > n:
        return False
    if m == n:
        return not proof and old_root == new_root
    if m == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:  # step 1
        return False
    path = list(proof)
    if m & (m - 1) == 0:  # step 2: first is a power of two
        path.insert(0, bytes(old_root))
    fn, sn = m - 1, n - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0  # step 7
