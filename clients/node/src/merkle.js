'use strict';
/**
 * RFC 9162 Merkle tree hashing and proof verification (sections 2.1.1, 2.1.3.2 and 2.1.4.2).
 *
 * Indices and sizes are handled as BigInt: JavaScript's bit operators truncate to 32 bits, and a log may
 * outgrow that. The algorithms below follow the RFC's step lists; the comments name the steps.
 */
const crypto = require('node:crypto');
const { VerificationError } = require('./encoding');

const EMPTY_ROOT = crypto.createHash('sha256').digest();

/** SHA-256(0x00 || data): the domain-separated hash of a leaf. */
function leafHash(data) {
  return crypto.createHash('sha256').update(Buffer.of(0)).update(data).digest();
}

/** SHA-256(0x01 || left || right): the hash of an interior node. */
function nodeHash(left, right) {
  return crypto.createHash('sha256').update(Buffer.of(1)).update(left).update(right).digest();
}

/** A non-negative integer as BigInt; refuses fractions, negatives and junk. */
function toCount(value, what) {
  let n;
  try {
    n = BigInt(value);
  } catch {
    throw new VerificationError('BAD_PROOF', `${what} is not an integer`);
  }
  if (n < 0n || (typeof value === 'number' && !Number.isSafeInteger(value))) {
    throw new VerificationError('BAD_PROOF', `${what} is out of range`);
  }
  return n;
}

function checkHashes(hashes) {
  if (!Array.isArray(hashes) || !hashes.every((h) => h instanceof Uint8Array && h.length === 32)) {
    throw new VerificationError('BAD_PROOF', 'proof hashes must be 32-byte values');
  }
}

/**
 * Computes the root an inclusion proof leads to (RFC 9162 2.1.3.2 steps 1-5), or throws when the path
 * does not fit the index and size (too short, too long, index out of range).
 * @param {bigint|number|string} leafIndex
 * @param {bigint|number|string} treeSize
 * @param {Uint8Array} leaf the leaf hash
 * @param {Uint8Array[]} path audit path, leaf to root
 * @returns {Buffer} the computed root
 */
function rootFromInclusionProof(leafIndex, treeSize, leaf, path) {
  const index = toCount(leafIndex, 'leaf_index');
  const size = toCount(treeSize, 'tree_size');
  checkHashes(path);
  // Step 1: the index must be inside the tree.
  if (index >= size) throw new VerificationError('BAD_PROOF', `leaf index ${index} is not below tree size ${size}`);
  // Step 2.
  let fn = index;
  let sn = size - 1n;
  let r = Buffer.from(leaf);
  // Step 3.
  for (const p of path) {
    if (sn === 0n) throw new VerificationError('BAD_PROOF', 'inclusion proof is too long');
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  // Step 4 (first half): every level was consumed.
  if (sn !== 0n) throw new VerificationError('BAD_PROOF', 'inclusion proof is too short');
  return r;
}

/**
 * Verifies an inclusion proof against a root; throws VerificationError('BAD_PROOF') when it fails.
 * @param {bigint|number|string} leafIndex
 * @param {bigint|number|string} treeSize
 * @param {Uint8Array} leaf the leaf hash
 * @param {Uint8Array[]} path
 * @param {Uint8Array} root
 */
function verifyInclusion(leafIndex, treeSize, leaf, path, root) {
  const r = rootFromInclusionProof(leafIndex, treeSize, leaf, path);
  // Step 4 (second half).
  if (!r.equals(Buffer.from(root))) throw new VerificationError('BAD_PROOF', 'inclusion proof does not lead to the root');
}

/**
 * Verifies that the tree of size `secondSize` and root `secondRoot` extends the tree of size `firstSize`
 * and root `firstRoot` (RFC 9162 2.1.4.2); throws VerificationError('BAD_PROOF') when it does not.
 * Equal sizes need an empty proof and equal roots; an empty first tree (root SHA-256("")) is a prefix of
 * every tree, with an empty proof (RFC 9162 defines proofs for 0 < m only; this is the usual reading).
 * @param {bigint|number|string} firstSize
 * @param {bigint|number|string} secondSize
 * @param {Uint8Array} firstRoot
 * @param {Uint8Array} secondRoot
 * @param {Uint8Array[]} proof
 */
function verifyConsistency(firstSize, secondSize, firstRoot, secondRoot, proof) {
  const first = toCount(firstSize, 'first_size');
  const second = toCount(secondSize, 'second_size');
  checkHashes(proof);
  const fail = (why) => {
    throw new VerificationError('BAD_PROOF', `consistency proof: ${why}`);
  };
  if (first > second) fail('first size is larger than second size');
  if (first === second || first === 0n) {
    if (proof.length !== 0) fail('proof must be empty');
    const expected = first === 0n ? EMPTY_ROOT : Buffer.from(secondRoot);
    if (!Buffer.from(firstRoot).equals(expected)) fail(first === 0n ? 'the empty tree has another root' : 'roots differ at equal sizes');
    return;
  }
  // Step 1.
  if (proof.length === 0) fail('proof is empty');
  // Step 2: a complete first tree is its own first node.
  let path = proof;
  if ((first & (first - 1n)) === 0n) path = [firstRoot, ...proof];
  // Step 3.
  let fn = first - 1n;
  let sn = second - 1n;
  // Step 4.
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  // Step 5.
  let fr = Buffer.from(path[0]);
  let sr = Buffer.from(path[0]);
  // Step 6.
  for (const c of path.slice(1)) {
    if (sn === 0n) fail('proof is too long');
    if ((fn & 1n) === 1n || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  // Step 7.
  if (sn !== 0n) fail('proof is too short');
  if (!fr.equals(Buffer.from(firstRoot))) fail('does not lead to the first root');
  if (!sr.equals(Buffer.from(secondRoot))) fail('does not lead to the second root');
}

module.exports = { leafHash, nodeHash, verifyInclusion, rootFromInclusionProof, verifyConsistency, EMPTY_ROOT };
