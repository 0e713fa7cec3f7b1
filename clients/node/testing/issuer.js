'use strict';
/**
 * A miniature receipt issuer for tests: keys, key sets, signed envelopes, a log with signed checkpoints
 * and bundles, all made with node's crypto, so each tampering case starts from a receipt that verifies
 * and changes one thing.
 */
const crypto = require('node:crypto');
const { keyId, pae, rawFromPublicKey, formatVerifierKey, canonicalize, makeBundle, RECEIPT_PAYLOAD_TYPE, MINER_REPORT_PAYLOAD_TYPE } = require('../src/verify');
const { mth, inclusionPath, consistencyProof } = require('./tree');

/** A fresh Ed25519 key with its key set entry. */
function newKey(role, { validFrom = '2020-01-01T00:00:00.000000Z', validUntil, status = 'active', owner, origin } = {}) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519');
  const raw = rawFromPublicKey(publicKey);
  const entry = { key_id: keyId(raw), role, status, public_key: raw.toString('hex'), valid_from: validFrom };
  if (validUntil) entry.valid_until = validUntil;
  if (owner) entry.owner = owner;
  if (origin) entry.note_verifier_key = formatVerifierKey(origin, raw);
  return { privateKey, raw, keyId: entry.key_id, entry };
}

/** Ed25519 signature with a node private KeyObject. */
function sign(privateKey, message) {
  return crypto.sign(null, message, privateKey);
}

const sha256hex = (b) => crypto.createHash('sha256').update(b).digest('hex');

/** A complete, valid receipt payload; fields may be overridden or (with undefined) removed. */
function payload(overrides = {}) {
  const result = Buffer.from('{"prompt":"hello"}');
  const p = {
    version: '1.0',
    receipt_id: '01890a5d-ac96-774b-bcce-b302099a8057',
    job_id: '01890a5d-ac96-774b-bcce-b302099a8000',
    attempt: 1,
    provider: 'm1',
    client: 'alice',
    units: '1.9',
    unit_type: 'gpu_seconds',
    price: '2',
    cost: '3.8',
    started_at: '2026-11-26T22:46:58.000001Z',
    completed_at: '2026-11-26T22:46:59.123456Z',
    issued_at: '2026-11-26T22:46:59.223456Z',
    artifact_hash: `sha256:${sha256hex(result)}`,
    result_sha256: sha256hex(result),
    input_sha256: sha256hex(Buffer.from('{"prompt":"hello"}')),
    coordinator_id: 'coord-test',
    nonce: '0123456789abcdef0123456789abcdef',
    chain_id: 'aitbc-test',
  };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined) delete p[k];
    else p[k] = v;
  }
  return p;
}

/** Canonical payload bytes. */
function payloadBytes(p) {
  return Buffer.from(canonicalize(p), 'utf8');
}

/** The miner's report and signature fields for a payload (spec section 3). */
function minerFields(p, minerKey, overrides = {}) {
  const report = Buffer.from(canonicalize({
    attempt: p.attempt, job_id: p.job_id, result_sha256: p.result_sha256, unit_type: p.unit_type, units: p.units, ...overrides,
  }));
  const sig = sign(minerKey.privateKey, pae(MINER_REPORT_PAYLOAD_TYPE, report));
  return { miner_report: report.toString('base64'), miner_signature: { keyid: minerKey.keyId, sig: sig.toString('base64') } };
}

/**
 * Envelope JSON bytes.
 * @param {Uint8Array} body payload bytes
 * @param {{key: object, keyid?: string}[]} signers keyid defaults to the key's own id
 * @param {{payloadType?: string, signedType?: string}} [opts] signedType: the type put into PAE
 */
function envelope(body, signers, { payloadType = RECEIPT_PAYLOAD_TYPE, signedType = payloadType } = {}) {
  const signatures = signers.map(({ key, keyid = key.keyId }) => ({
    keyid,
    sig: sign(key.privateKey, pae(signedType, body)).toString('base64'),
  }));
  return Buffer.from(JSON.stringify({ payload: Buffer.from(body).toString('base64'), payloadType, signatures }));
}

/** A C2SP signed note over `text` by `key` named `name`. */
function signNote(text, name, key) {
  const hash = crypto.createHash('sha256').update(`${name}\n`).update(Buffer.of(1)).update(key.raw).digest().subarray(0, 4);
  const sig = sign(key.privateKey, Buffer.from(text, 'utf8'));
  return `${text}\n\u2014 ${name} ${Buffer.concat([hash, sig]).toString('base64')}\n`;
}

/** An append-only log of envelopes with checkpoints signed by a log key. */
class Log {
  constructor(origin, logKey) {
    this.origin = origin;
    this.key = logKey;
    this.leaves = [];
  }
  append(data) {
    this.leaves.push(Buffer.from(data));
    return this.leaves.length - 1;
  }
  checkpointText(size = this.leaves.length) {
    return `${this.origin}\n${size}\n${mth(this.leaves.slice(0, size)).toString('base64')}\n`;
  }
  checkpoint(size = this.leaves.length) {
    return signNote(this.checkpointText(size), this.origin, this.key);
  }
  inclusion(index, size = this.leaves.length) {
    return inclusionPath(index, this.leaves.slice(0, size));
  }
  consistency(first, second = this.leaves.length) {
    return consistencyProof(first, this.leaves.slice(0, second));
  }
  bundle(index, size = this.leaves.length) {
    return makeBundle({ envelope: this.leaves[index], leafIndex: index, treeSize: size, hashes: this.inclusion(index, size), checkpoint: this.checkpoint(size) });
  }
}

/**
 * A whole scene: coordinator, attestation, log and miner keys, their key set, and a log holding a few
 * unrelated receipts so proofs have depth.
 */
function scene() {
  const origin = 'aitbc.coordinator/coord-test';
  const keys = {
    coordinator: newKey('coordinator'),
    attestation: newKey('attestation'),
    log: newKey('log', { origin }),
    miner: newKey('miner', { owner: 'm1' }),
  };
  const keySetJson = { keys: Object.values(keys).map((k) => k.entry) };
  const log = new Log(origin, keys.log);
  for (let i = 0; i < 5; i++) log.append(Buffer.from(`filler receipt ${i}`));
  return { origin, keys, keySetJson, log };
}

module.exports = { newKey, sign, payload, payloadBytes, minerFields, envelope, signNote, Log, scene, sha256hex };
