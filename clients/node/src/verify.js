'use strict';
/**
 * The offline receipt verifier: one entry point over the small modules that implement docs/receipts.md.
 * Nothing here touches the network or needs Python; everything needed is the bundle and a key set.
 *
 * Every check throws a VerificationError whose `code` says which rule failed (e.g. BAD_SIGNATURE,
 * DUPLICATE_KEY, BAD_PROOF); a function that returns has verified.
 */
const ed25519 = require('./ed25519');
const { pae, parseEnvelope } = require('./dsse');
const { VerificationError, decodeBase64, decodeBase64Url, decodeHex } = require('./encoding');
const { parseStrict, parseCanonical, canonicalize, canonicalStruct } = require('./json');
const { keyId, loadKeySet, KeySet, isValidAt } = require('./keys');
const merkle = require('./merkle');
const note = require('./note');
const receipt = require('./receipt');
const bundle = require('./bundle');
const legacy = require('./legacy');
const { parseRfc3339, formatRfc3339 } = require('./time');

module.exports = {
  // Ed25519, strict as libsodium
  verifyEd25519: ed25519.verify,
  publicKeyFromRaw: ed25519.publicKeyFromRaw,
  rawFromPublicKey: ed25519.rawFromPublicKey,
  // DSSE
  pae,
  parseEnvelope,
  // JSON
  parseStrict,
  parseCanonical,
  canonicalize,
  canonicalStruct,
  // keys
  keyId,
  loadKeySet,
  KeySet,
  isValidAt,
  // Merkle log
  leafHash: merkle.leafHash,
  nodeHash: merkle.nodeHash,
  verifyInclusion: merkle.verifyInclusion,
  rootFromInclusionProof: merkle.rootFromInclusionProof,
  verifyConsistency: merkle.verifyConsistency,
  EMPTY_ROOT: merkle.EMPTY_ROOT,
  // signed notes and checkpoints
  noteKeyHash: note.noteKeyHash,
  parseVerifierKey: note.parseVerifierKey,
  formatVerifierKey: note.formatVerifierKey,
  openNote: note.openNote,
  parseCheckpointText: note.parseCheckpointText,
  verifyCheckpoint: note.verifyCheckpoint,
  // receipts and bundles
  verifyReceiptEnvelope: receipt.verifyReceiptEnvelope,
  parseReceiptPayload: receipt.parseReceiptPayload,
  RECEIPT_PAYLOAD_TYPE: receipt.RECEIPT_PAYLOAD_TYPE,
  MINER_REPORT_PAYLOAD_TYPE: receipt.MINER_REPORT_PAYLOAD_TYPE,
  verifyBundle: bundle.verifyBundle,
  parseBundle: bundle.parseBundle,
  makeBundle: bundle.makeBundle,
  verifyCheckpointConsistency: bundle.verifyCheckpointConsistency,
  // legacy AITBC v1
  verifyLegacyReceipt: legacy.verifyLegacyReceipt,
  legacyCanonical: legacy.legacyCanonical,
  // helpers
  VerificationError,
  decodeBase64,
  decodeBase64Url,
  decodeHex,
  parseRfc3339,
  formatRfc3339,
};
