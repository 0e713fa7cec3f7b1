"""RFC 9162 tree: the incremental tree against a naive recursive definition, and the proof verifiers."""

from __future__ import annotations

import hashlib
import time

import pytest
from aitbc.receipts import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from hypothesis import given, settings
from hypothesis import strategies as st

N = 40
LEAVES = [leaf_hash(b"entry-%d" % i) for i in range(N)]


def naive_root(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 9162 2.1.1."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(naive_root(leaves[:k]), naive_root(leaves[k:]))


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) straight from RFC 9162 2.1.3.1."""
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_root(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_root(leaves[:k])]


def naive_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) straight from RFC 9162 2.1.4.1."""
    n = len(leaves)
    if m == n:
        return [] if b else [naive_root(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, leaves[:k], b), naive_root(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_root(leaves[:k])]


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    t = MerkleTree()
    for i, leaf in enumerate(LEAVES):
        assert t.append(leaf) == i
    return t


def test_roots_equal_naive_for_every_size(tree: MerkleTree) -> None:
    for n in range(N + 1):
        assert tree.root(n) == naive_root(LEAVES[:n])
        assert MerkleTree(LEAVES[:n]).root() == naive_root(LEAVES[:n])
        assert MerkleTree(LEAVES[:n]).size == n


def test_every_inclusion_proof_matches_rfc_and_verifies(tree: MerkleTree) -> None:
    for n in range(1, N + 1):
        root = tree.root(n)
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == naive_path(i, LEAVES[:n])
            assert verify_inclusion(LEAVES[i], i, n, proof, root)


def test_every_consistency_proof_matches_rfc_and_verifies(tree: MerkleTree) -> None:
    for n in range(N + 1):
        for m in range(n + 1):
            proof = tree.consistency_proof(m, n)
            if 0 < m < n:
                assert proof == naive_subproof(m, LEAVES[:n], True)
            else:
                assert proof == []
            assert verify_consistency(m, n, tree.root(m), tree.root(n), proof), (m, n)


def test_inclusion_rejects_truncated_extended_wrong_index_size_leaf(tree: MerkleTree) -> None:
    rejected = 0
    for n in range(1, N + 1):
        root = tree.root(n)
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            cases = [
                (LEAVES[i], i, n, [*proof, proof[-1] if proof else root]),  # extended
                (LEAVES[i], i, n, [*proof, b"\x00" * 32]),
                (LEAVES[i], i, n, [b"\x00" * 32, *proof]),
            ]
            if proof:
                cases.append((LEAVES[i], i, n, proof[:-1]))  # truncated
                cases.append((LEAVES[i], i ^ 1, n, proof) if (i ^ 1) < n else (LEAVES[i], i, n, proof[1:]))
                cases.append((LEAVES[(i + 1) % n], i, n, proof))  # another leaf
            cases.append((LEAVES[i], i + n, n, proof))  # index out of range
            for leaf, index, size, bad in cases:
                assert not verify_inclusion(leaf, index, size, bad, root), (i, n)
                rejected += 1
            # A wrong size with the root of that size fails unless both sizes give the very same path.
            for other in (n - 1, n + 1):
                if i < other <= N and tree.inclusion_proof(i, other) != proof:
                    assert not verify_inclusion(LEAVES[i], i, other, proof, tree.root(other)), (i, n, other)
                    rejected += 1
            # The same root under a wrong size fails whenever the path's shape differs.
            for other in range(i + 1, N + 1):
                if len(naive_path(i, LEAVES[:other])) != len(proof):
                    assert not verify_inclusion(LEAVES[i], i, other, proof, root), (i, n, other)
                    rejected += 1
    assert rejected > 3000


def test_inclusion_proof_size_one_and_bad_inputs() -> None:
    assert verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[0])
    assert not verify_inclusion(LEAVES[0], 0, 0, [], LEAVES[0])
    assert not verify_inclusion(LEAVES[0], -1, 1, [], LEAVES[0])
    assert not verify_inclusion(LEAVES[0], 0, 1, [b"short"], LEAVES[0])
    assert not verify_inclusion(LEAVES[0], True, 2, [LEAVES[0]], node_hash(LEAVES[0], LEAVES[0]))


def test_consistency_rejects_tampering(tree: MerkleTree) -> None:
    for n in range(2, N + 1):
        for m in range(1, n):
            proof = tree.consistency_proof(m, n)
            old, new = tree.root(m), tree.root(n)
            assert not verify_consistency(m, n, old, new, proof[:-1])
            assert not verify_consistency(m, n, old, new, [*proof, proof[-1]])
            assert not verify_consistency(m, n, old, new, [b"\x00" * 32, *proof])
            assert not verify_consistency(n, m, new, old, proof)  # rollback: m > n
            assert not verify_consistency(m, n, new, new, proof)
            assert not verify_consistency(m, n, old, old, proof)
            # Wrong sizes with the roots of those sizes fail unless the proofs coincide.
            if m + 1 < n and tree.consistency_proof(m + 1, n) != proof:
                assert not verify_consistency(m + 1, n, tree.root(m + 1), new, proof)
            if n + 1 <= N and tree.consistency_proof(m, n + 1) != proof:
                assert not verify_consistency(m, n + 1, old, tree.root(n + 1), proof)
            if n + 1 <= N:
                assert not verify_consistency(m, n + 1, old, tree.root(n + 1), proof[:-1])
            # The same roots claimed under another new size fail whenever the proof's shape differs
            # (a log presenting an old root as a bigger tree).
            for other in range(m + 1, N + 1):
                if other != n and len(naive_subproof(m, LEAVES[:other], True)) != len(proof):
                    assert not verify_consistency(m, other, old, new, proof), (m, n, other)


def test_consistency_edge_sizes() -> None:
    r3 = naive_root(LEAVES[:3])
    assert verify_consistency(3, 3, r3, r3, [])
    assert not verify_consistency(3, 3, r3, r3, [r3])
    assert not verify_consistency(3, 3, r3, naive_root(LEAVES[:2]), [])
    assert verify_consistency(0, 3, EMPTY_ROOT, r3, [])
    assert not verify_consistency(0, 3, r3, r3, [])
    assert not verify_consistency(0, 3, EMPTY_ROOT, r3, [r3])
    assert not verify_consistency(2, 3, naive_root(LEAVES[:2]), r3, [])  # empty proof, m < n


def test_forked_log_is_not_consistent(tree: MerkleTree) -> None:
    for fork_at in range(0, N - 1, 3):
        forked = [*LEAVES[:fork_at], leaf_hash(b"evil"), *LEAVES[fork_at + 1 :]]
        fork = MerkleTree(forked)
        for m in range(fork_at + 1, N):
            for n in (m, N):
                # The honest proof against the forked root, and the fork's own proof against honest roots.
                assert not verify_consistency(m, n, tree.root(m), fork.root(n), tree.consistency_proof(m, n))
                assert not verify_consistency(m, n, tree.root(m), fork.root(n), fork.consistency_proof(m, n))
                assert not verify_consistency(m, n, fork.root(m), tree.root(n), fork.consistency_proof(m, n))


def test_tree_rejects_out_of_range_requests(tree: MerkleTree) -> None:
    with pytest.raises(ValueError):
        tree.root(N + 1)
    with pytest.raises(ValueError):
        tree.inclusion_proof(5, 5)
    with pytest.raises(ValueError):
        tree.consistency_proof(6, 5)
    with pytest.raises(ValueError):
        tree.append(b"short")


def test_bulk_build_of_100k_is_fast_and_proofs_are_cheap() -> None:
    leaves = [hashlib.sha256(b"%d" % i).digest() for i in range(100_000)]
    start = time.perf_counter()
    big = MerkleTree(leaves)
    assert time.perf_counter() - start < 5
    grown = MerkleTree(leaves[:99_990])
    for leaf in leaves[99_990:]:
        grown.append(leaf)
    assert grown.root() == big.root()
    start = time.perf_counter()
    for i in range(0, 100_000, 997):
        size = max(i + 1, 100_000 - i // 2)
        proof = big.inclusion_proof(i, size)
        assert len(proof) <= 17
        assert verify_inclusion(leaves[i], i, size, proof, big.root(size))
        cproof = big.consistency_proof(i + 1, size)
        assert verify_consistency(i + 1, size, big.root(i + 1), big.root(size), cproof)
    assert time.perf_counter() - start < 5


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_random_sizes_against_pure_verifiers(n: int, data: st.DataObject) -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(n)]
    t = MerkleTree(leaves)
    i = data.draw(st.integers(0, n - 1))
    size = data.draw(st.integers(i + 1, n))
    m = data.draw(st.integers(0, size))
    assert t.root(size) == naive_root(leaves[:size])
    assert verify_inclusion(leaves[i], i, size, t.inclusion_proof(i, size), t.root(size))
    assert verify_consistency(m, size, t.root(m), t.root(size), t.consistency_proof(m, size))
