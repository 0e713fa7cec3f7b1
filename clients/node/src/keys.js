'use strict';
/**
 * Key ids (RFC 7638 thumbprints) and key sets (spec section 4).
 *
 * A key set is the verifier's trust root: which public key may sign for which role, and when. Its shape is
 * checked strictly when loaded. A key whose key_id is not the thumbprint of its public key (a key id
 * "pointing" at another key) is kept but marked, and every use of it rejects: that is the rule of the
 * Python verifier too, so both give the same verdict on the same key set.
 */
const crypto = require('node:crypto');
const { VerificationError, decodeHex } = require('./encoding');
const { parseStrict } = require('./json');
const { parseRfc3339 } = require('./time');

const ROLES = new Set(['coordinator', 'attestation', 'log', 'miner']);
const STATUSES = new Set(['active', 'retired']);

/**
 * RFC 7638 JWK thumbprint of an Ed25519 key: base64url(SHA-256('{"crv":"Ed25519","kty":"OKP","x":"…"}')).
 * The JSON text is fixed by the RFC (required members only, sorted, no whitespace), so it is written out.
 * @param {Uint8Array} publicKey raw 32 bytes
 * @returns {string}
 */
function keyId(publicKey) {
  const x = Buffer.from(publicKey).toString('base64url');
  const jwk = `{"crv":"Ed25519","kty":"OKP","x":"${x}"}`;
  return crypto.createHash('sha256').update(jwk, 'utf8').digest('base64url');
}

/**
 * @typedef {object} Key
 * @property {string} keyId
 * @property {'coordinator'|'attestation'|'log'|'miner'} role
 * @property {'active'|'retired'} status
 * @property {Buffer} publicKey raw 32 bytes
 * @property {bigint} validFrom nanoseconds since the epoch
 * @property {bigint|null} validUntil
 * @property {string|undefined} noteVerifierKey C2SP verifier key (log keys)
 * @property {string|undefined} owner miner identity (miner keys)
 * @property {boolean} keyIdMatches whether keyId is the thumbprint of publicKey
 */

/** A loaded key set. One key id may appear once per role (a key listed as coordinator and attestation). */
class KeySet {
  /** @param {Key[]} keys */
  constructor(keys) {
    /** @type {Key[]} */
    this.keys = keys;
    this.byId = new Map();
    for (const k of keys) {
      if (!this.byId.has(k.keyId)) this.byId.set(k.keyId, []);
      this.byId.get(k.keyId).push(k);
    }
  }

  /** Every entry with this key id (empty when unknown). @returns {Key[]} */
  entries(id) {
    return this.byId.get(id) ?? [];
  }

  /** Keys of one role. */
  withRole(role) {
    return this.keys.filter((k) => k.role === role);
  }
}

/**
 * True when `at` (nanoseconds) lies in the key's validity window, bounds included.
 * @param {Key} key
 * @param {bigint} at
 */
function isValidAt(key, at) {
  return at >= key.validFrom && (key.validUntil === null || at <= key.validUntil);
}

function bad(i, message) {
  return new VerificationError('BAD_KEY_SET', `keys[${i}]: ${message}`);
}

/**
 * Refuses a key that may not be used for a signature made at `at`: a key id that is not its key's
 * thumbprint, or a time outside the key's validity.
 * @param {Key} key
 * @param {bigint} at nanoseconds since the epoch (the receipt's issued_at)
 */
function checkKeyUsable(key, at) {
  if (!key.keyIdMatches) {
    throw new VerificationError('KEY_ID_MISMATCH', `key_id ${key.keyId} is not the thumbprint of its public key`);
  }
  if (!isValidAt(key, at)) throw new VerificationError('KEY_NOT_VALID', `key ${key.keyId} was not valid at issued_at`);
}

const REQUIRED_KEY_FIELDS = ['key_id', 'role', 'status', 'public_key', 'valid_from'];
const KEY_FIELDS = new Set([...REQUIRED_KEY_FIELDS, 'valid_until', 'note_verifier_key', 'owner']);

/**
 * Loads a key set in the spec's JSON format. Every field is a string; missing, unknown or mistyped fields,
 * an unknown role or status, a bad key or time reject the whole set.
 * @param {string|Uint8Array|object} source JSON text/bytes (parsed strictly) or the parsed object
 * @returns {KeySet}
 */
function loadKeySet(source) {
  const doc = typeof source === 'string' || source instanceof Uint8Array ? parseStrict(source) : source;
  if (!doc || typeof doc !== 'object' || !Array.isArray(doc.keys)) {
    throw new VerificationError('BAD_KEY_SET', 'a key set is {"keys":[...]}');
  }
  const keys = doc.keys.map((k, i) => {
    if (!k || typeof k !== 'object' || Array.isArray(k)) throw bad(i, 'not an object');
    for (const f of REQUIRED_KEY_FIELDS) if (!Object.hasOwn(k, f)) throw bad(i, `missing ${f}`);
    for (const [f, value] of Object.entries(k)) {
      if (!KEY_FIELDS.has(f)) throw bad(i, `unknown field ${f}`);
      if (typeof value !== 'string') throw bad(i, `${f} is not a string`);
    }
    if (!ROLES.has(k.role)) throw bad(i, `unknown role ${JSON.stringify(k.role)}`);
    if (!STATUSES.has(k.status)) throw bad(i, `unknown status ${JSON.stringify(k.status)}`);
    const publicKey = decodeHex(k.public_key, `keys[${i}].public_key`);
    if (publicKey.length !== 32) throw bad(i, 'public_key is not 32 bytes');
    const validUntil = k.valid_until === undefined ? null : parseRfc3339(k.valid_until);
    const validFrom = parseRfc3339(k.valid_from);
    if (validUntil !== null && validUntil < validFrom) throw bad(i, 'valid_until is before valid_from');
    return {
      keyId: k.key_id,
      role: k.role,
      status: k.status,
      publicKey,
      validFrom,
      validUntil,
      noteVerifierKey: k.note_verifier_key,
      owner: k.owner,
      keyIdMatches: k.key_id === keyId(publicKey),
    };
  });
  return new KeySet(keys);
}

module.exports = { keyId, loadKeySet, KeySet, isValidAt, checkKeyUsable };
