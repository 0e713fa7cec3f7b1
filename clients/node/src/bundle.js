'use strict';
/**
 * Receipt bundles (spec section 7): a receipt with everything needed to check it offline, namely its
 * envelope, its inclusion proof and the signed checkpoint the proof is for.
 */
const { VerificationError, decodeBase64 } = require('./encoding');
const { parseStrict, hasExactly } = require('./json');
const { leafHash, verifyInclusion, verifyConsistency } = require('./merkle');
const { verifyCheckpoint } = require('./note');
const { verifyReceiptEnvelope } = require('./receipt');

/**
 * @typedef {object} Bundle
 * @property {string} envelope base64 of the exact envelope bytes
 * @property {number} leaf_index
 * @property {{tree_size: number, hashes: string[]}} inclusion_proof hashes in hex
 * @property {string} checkpoint the signed note text
 */

function isCount(v) {
  return Number.isSafeInteger(v) && v >= 0;
}

/**
 * Reads a bundle (JSON text/bytes, parsed strictly, or an object) and checks its shape.
 * @param {string|Uint8Array|Bundle} source
 * @returns {{envelope: Buffer, leafIndex: number, treeSize: number, hashes: Buffer[], checkpoint: string}}
 */
function parseBundle(source) {
  const b = typeof source === 'string' || source instanceof Uint8Array ? parseStrict(source) : source;
  const bad = (why) => new VerificationError('BAD_BUNDLE', why);
  if (!hasExactly(b, ['envelope', 'leaf_index', 'inclusion_proof', 'checkpoint'])) {
    throw bad('a bundle has exactly envelope, leaf_index, inclusion_proof, checkpoint');
  }
  if (typeof b.envelope !== 'string') throw bad('envelope must be a base64 string');
  if (!isCount(b.leaf_index)) throw bad('leaf_index must be a non-negative integer');
  const proof = b.inclusion_proof;
  if (!hasExactly(proof, ['tree_size', 'hashes']) || !isCount(proof.tree_size) || !Array.isArray(proof.hashes)) {
    throw bad('inclusion_proof is {"tree_size":N,"hashes":[...]}');
  }
  if (typeof b.checkpoint !== 'string') throw bad('checkpoint must be the note text');
  const hashes = proof.hashes.map((h, i) => {
    if (typeof h !== 'string' || !/^[0-9a-f]{64}$/.test(h)) throw bad(`inclusion_proof.hashes[${i}] is not 64 lower-case hex digits`);
    return Buffer.from(h, 'hex');
  });
  return {
    envelope: decodeBase64(b.envelope, 'envelope'),
    leafIndex: b.leaf_index,
    treeSize: proof.tree_size,
    hashes,
    checkpoint: b.checkpoint,
  };
}

/**
 * Verifies that a newer checkpoint extends an older one: both signed by a log key of the key set, same
 * origin, and an RFC 9162 consistency proof between them (spec section 7, step 5).
 * @param {string} olderNote
 * @param {string} newerNote
 * @param {Uint8Array[]} proof
 * @param {import('./keys').KeySet} keySet
 */
function verifyCheckpointConsistency(olderNote, newerNote, proof, keySet) {
  const older = verifyCheckpoint(olderNote, keySet);
  const newer = verifyCheckpoint(newerNote, keySet);
  if (older.origin !== newer.origin) throw new VerificationError('BAD_CHECKPOINT', 'the checkpoints are of different logs');
  if (older.treeSize > newer.treeSize) throw new VerificationError('BAD_PROOF', 'the older checkpoint is larger (a rollback)');
  verifyConsistency(older.treeSize, newer.treeSize, older.rootHash, newer.rootHash, proof);
  return { older, newer };
}

/**
 * Verifies a bundle, steps 1-4 of spec section 7, and step 5 when an older checkpoint is given.
 * Throws VerificationError on the first failed check.
 * @param {string|Uint8Array|Bundle} source
 * @param {import('./keys').KeySet} keySet
 * @param {object} [options]
 * @param {import('./receipt').Policy} [options.policy]
 * @param {{checkpoint: string, consistencyProof: Uint8Array[]}} [options.previous] an older checkpoint and
 *   the consistency proof from its size to the bundle checkpoint's size
 */
function verifyBundle(source, keySet, options = {}) {
  const bundle = parseBundle(source);
  // Steps 1 and 2: signatures under the policy; canonical, complete payload.
  const receipt = verifyReceiptEnvelope(bundle.envelope, keySet, options.policy);
  // Step 3: the checkpoint is signed by a log key.
  const checkpoint = verifyCheckpoint(bundle.checkpoint, keySet);
  // Step 4: the envelope is a leaf of the tree the checkpoint commits to.
  if (BigInt(bundle.treeSize) !== checkpoint.treeSize) {
    throw new VerificationError('BAD_PROOF', `proof is for size ${bundle.treeSize}, checkpoint for ${checkpoint.treeSize}`);
  }
  verifyInclusion(bundle.leafIndex, checkpoint.treeSize, leafHash(bundle.envelope), bundle.hashes, checkpoint.rootHash);
  // Step 5: the log did not fork since an older checkpoint the caller trusts.
  if (options.previous) {
    verifyCheckpointConsistency(options.previous.checkpoint, bundle.checkpoint, options.previous.consistencyProof, keySet);
  }
  return { ...receipt, checkpoint, leafIndex: bundle.leafIndex, envelope: bundle.envelope };
}

/**
 * Builds a bundle object (the JSON the CLI writes) from its parts.
 * @param {{envelope: Uint8Array, leafIndex: number, treeSize: number, hashes: Uint8Array[], checkpoint: string}} parts
 * @returns {Bundle}
 */
function makeBundle({ envelope, leafIndex, treeSize, hashes, checkpoint }) {
  const count = (v, what) => {
    const n = Number(v);
    if (!isCount(n) || String(n) !== String(v)) throw new VerificationError('BAD_BUNDLE', `${what} ${v} is not a safe integer`);
    return n;
  };
  return {
    envelope: Buffer.from(envelope).toString('base64'),
    leaf_index: count(leafIndex, 'leaf_index'),
    inclusion_proof: { tree_size: count(treeSize, 'tree_size'), hashes: hashes.map((h) => Buffer.from(h).toString('hex')) },
    checkpoint,
  };
}

module.exports = { verifyBundle, parseBundle, makeBundle, verifyCheckpointConsistency };
