'use strict';
/**
 * A reference Merkle tree for tests, written straight from the recursive definitions of RFC 9162:
 * MTH (2.1.1), PATH (2.1.3.1) and PROOF/SUBPROOF (2.1.4.1). It is slow and obviously correct, which is
 * the point: the verifier's iterative algorithms are checked against it.
 */
const { leafHash, nodeHash, EMPTY_ROOT } = require('../src/merkle');

/** The largest power of two smaller than n (n > 1). */
function split(n) {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** MTH(D[n]). */
function mth(leaves) {
  const n = leaves.length;
  if (n === 0) return EMPTY_ROOT;
  if (n === 1) return leafHash(leaves[0]);
  const k = split(n);
  return nodeHash(mth(leaves.slice(0, k)), mth(leaves.slice(k)));
}

/** PATH(m, D[n]): the inclusion proof of leaf m. */
function inclusionPath(m, leaves) {
  const n = leaves.length;
  if (n <= 1) return [];
  const k = split(n);
  if (m < k) return [...inclusionPath(m, leaves.slice(0, k)), mth(leaves.slice(k))];
  return [...inclusionPath(m - k, leaves.slice(k)), mth(leaves.slice(0, k))];
}

/** SUBPROOF(m, D[n], b). */
function subproof(m, leaves, b) {
  const n = leaves.length;
  if (m === n) return b ? [] : [mth(leaves)];
  const k = split(n);
  if (m <= k) return [...subproof(m, leaves.slice(0, k), b), mth(leaves.slice(k))];
  return [...subproof(m - k, leaves.slice(k), false), mth(leaves.slice(0, k))];
}

/** PROOF(m, D[n]): the consistency proof from size m to size n = leaves.length (0 < m). */
function consistencyProof(m, leaves) {
  return subproof(m, leaves, true);
}

module.exports = { mth, inclusionPath, consistencyProof };
