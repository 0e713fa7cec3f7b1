'use strict';
/**
 * Receipt envelopes under a signature policy (spec sections 1-5).
 *
 * The order matters: the envelope's JSON is parsed strictly, the payload must be canonical and complete
 * (its issued_at decides which keys were valid), then signatures are checked and counted per role.
 * Nothing is ever re-serialised for a signature check: PAE covers the payload bytes exactly as received.
 *
 * The verdicts follow the Python verifier (clients/python/aitbc/receipts/verify.py) rule for rule, since
 * a receipt must not verify in one language and fail in the other:
 *   - a signature by an unknown key id is ignored and satisfies nothing;
 *   - a signature by a known key must verify, by a key whose id is its thumbprint, valid at issued_at;
 *     otherwise the receipt is rejected (not merely the signature discounted);
 *   - each required role needs its own distinct key: the same key twice counts once.
 */
const ed25519 = require('./ed25519');
const { pae, parseEnvelope } = require('./dsse');
const { VerificationError, decodeBase64 } = require('./encoding');
const { parseCanonical, hasExactly } = require('./json');
const { checkKeyUsable } = require('./keys');
const { parseRfc3339 } = require('./time');

const RECEIPT_PAYLOAD_TYPE = 'application/vnd.aitbc.receipt.v1+json';
const MINER_REPORT_PAYLOAD_TYPE = 'application/vnd.aitbc.miner-report.v1+json';
/** Roles whose keys sign the envelope itself; the miner signs its report instead. */
const ENVELOPE_ROLES = new Set(['coordinator', 'attestation']);
const POLICY_ROLES = new Set([...ENVELOPE_ROLES, 'miner']);
const MAX_ATTEMPT = 2 ** 32 - 1; // the contract's attempt is a uint32

const STRING = (v) => typeof v === 'string' && v !== '';
const DECIMAL = (v) => typeof v === 'string' && /^(?:0|[1-9][0-9]*)(?:\.[0-9]+)?$/.test(v);
const TIME = (v) => typeof v === 'string' && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/.test(v);
const HEX64 = (v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
const ATTEMPT = (v) => Number.isSafeInteger(v) && v >= 0 && v <= MAX_ATTEMPT;

/** The fields spec section 1 requires, each with the shape it must have. Extra fields are allowed. */
const REQUIRED_FIELDS = {
  version: (v) => v === '1.0',
  receipt_id: (v) => typeof v === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(v),
  job_id: STRING,
  attempt: ATTEMPT,
  provider: STRING,
  client: STRING,
  units: DECIMAL,
  unit_type: STRING,
  price: DECIMAL,
  cost: DECIMAL,
  started_at: TIME,
  completed_at: TIME,
  issued_at: TIME,
  artifact_hash: (v) => typeof v === 'string' && /^sha256:[0-9a-f]{64}$/.test(v),
  result_sha256: HEX64,
  input_sha256: HEX64,
  coordinator_id: STRING,
  nonce: (v) => typeof v === 'string' && /^[0-9a-f]{32}$/.test(v),
  chain_id: STRING,
};

/** The miner report's fields (spec section 3); each must equal the receipt's field of that name. */
const MINER_REPORT_FIELDS = {
  attempt: ATTEMPT,
  job_id: STRING,
  result_sha256: HEX64,
  unit_type: STRING,
  units: DECIMAL,
};

/** parseCanonical, with the failure named after what was being parsed. */
function parseCanonicalObject(bytes, what) {
  let value;
  try {
    value = parseCanonical(bytes);
  } catch (err) {
    if (err.code === 'DUPLICATE_KEY' || err.code === 'NOT_CANONICAL' || err.code === 'BAD_JSON') {
      throw new VerificationError(err.code, `${what}: ${err.message}`);
    }
    throw err;
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new VerificationError('BAD_RECEIPT', `${what} is not a JSON object`);
  }
  return value;
}

/**
 * The miner report and signature a payload carries, checked in form and against the receipt's fields
 * (but not yet the signature, which needs the key set). Null when the receipt carries none.
 * @returns {{report: Buffer, keyid: string, sig: Buffer}|null}
 */
function minerReportOf(payload) {
  const hasReport = Object.hasOwn(payload, 'miner_report');
  if (hasReport !== Object.hasOwn(payload, 'miner_signature')) {
    throw new VerificationError('BAD_MINER_REPORT', 'miner_report and miner_signature come together');
  }
  if (!hasReport) return null;
  const ms = payload.miner_signature;
  if (!hasExactly(ms, ['keyid', 'sig']) || typeof ms.keyid !== 'string') {
    throw new VerificationError('BAD_MINER_REPORT', 'miner_signature is {"keyid":...,"sig":...}');
  }
  const sig = decodeBase64(ms.sig, 'miner_signature.sig');
  const report = decodeBase64(payload.miner_report, 'miner_report');
  const fields = parseCanonicalObject(report, 'miner report');
  if (!hasExactly(fields, Object.keys(MINER_REPORT_FIELDS))) {
    throw new VerificationError('BAD_MINER_REPORT', 'the report has other fields than attempt, job_id, result_sha256, unit_type, units');
  }
  for (const [f, ok] of Object.entries(MINER_REPORT_FIELDS)) {
    if (!ok(fields[f])) throw new VerificationError('BAD_MINER_REPORT', `report field ${f} has a bad value`);
    if (fields[f] !== payload[f]) throw new VerificationError('BAD_MINER_REPORT', `report field ${f} differs from the receipt`);
  }
  return { report, keyid: ms.keyid, sig };
}

/**
 * Parses and checks a receipt payload: canonical JSON, no duplicate keys, every required field in shape,
 * the two digests of the result agreeing, and a carried miner report agreeing with the receipt.
 * @param {Uint8Array} bytes
 * @returns {object}
 */
function parseReceiptPayload(bytes) {
  const payload = parseCanonicalObject(bytes, 'receipt payload');
  for (const [field, ok] of Object.entries(REQUIRED_FIELDS)) {
    if (!Object.hasOwn(payload, field)) throw new VerificationError('BAD_RECEIPT', `missing field ${field}`);
    if (!ok(payload[field])) throw new VerificationError('BAD_RECEIPT', `field ${field} has a bad value`);
  }
  // Both name the digest of the same result bytes; disagreement means a broken or lying issuer.
  if (payload.artifact_hash !== `sha256:${payload.result_sha256}`) {
    throw new VerificationError('BAD_RECEIPT', 'artifact_hash and result_sha256 name different bytes');
  }
  minerReportOf(payload);
  return payload;
}

/**
 * Whether every required role can be given its own key (a small bipartite matching): a key listed under
 * two roles must not satisfy both, or one key would stand in for the independent co-signature asked for.
 * @param {string[]} roles
 * @param {Map<string, Set<string>>} candidates role -> public keys (hex) with a valid signature
 */
function assignDistinctKeys(roles, candidates) {
  const owner = new Map(); // public key -> role it serves
  const place = (role, seen) => {
    for (const key of [...(candidates.get(role) ?? [])].sort()) {
      if (seen.has(key)) continue;
      seen.add(key);
      if (!owner.has(key) || place(owner.get(key), seen)) {
        owner.set(key, role);
        return true;
      }
    }
    return false;
  };
  return [...roles].sort().every((role) => place(role, new Set()));
}

/**
 * @typedef {object} Policy
 * @property {string[]} [roles] roles whose valid signature is required (default ['coordinator']): any of
 *   'coordinator', 'attestation', 'miner' ('miner': a valid miner report by a miner key the key set says
 *   belongs to the receipt's provider)
 */

/**
 * @typedef {object} ReceiptVerification
 * @property {object} payload the parsed receipt payload
 * @property {Buffer} payloadBytes the exact payload bytes
 * @property {string[]} roles the roles with a valid signature
 * @property {string[]} keyIds key ids whose signatures verified
 */

/**
 * Verifies a receipt envelope under a policy and a key set; throws VerificationError unless it holds.
 * @param {Uint8Array|string} envelopeBytes the envelope exactly as served
 * @param {import('./keys').KeySet} keySet
 * @param {Policy} [policy]
 * @returns {ReceiptVerification}
 */
function verifyReceiptEnvelope(envelopeBytes, keySet, policy = {}) {
  const roles = policy.roles ?? ['coordinator'];
  for (const role of roles) {
    if (!POLICY_ROLES.has(role)) throw new TypeError(`a policy cannot require role ${role}`);
  }
  const envelope = parseEnvelope(envelopeBytes);
  if (envelope.payloadType !== RECEIPT_PAYLOAD_TYPE) {
    throw new VerificationError('WRONG_PAYLOAD_TYPE', `payload type ${JSON.stringify(envelope.payloadType)}`);
  }
  const payload = parseReceiptPayload(envelope.payload);
  const issuedAt = parseRfc3339(payload.issued_at);
  const message = pae(envelope.payloadType, envelope.payload);

  const candidates = new Map(); // role -> Set of public keys (hex)
  const addCandidate = (role, key) => {
    if (!candidates.has(role)) candidates.set(role, new Set());
    candidates.get(role).add(key.publicKey.toString('hex'));
  };
  const keyIds = [];
  const checked = new Set(); // [keyid, sig] already verified
  for (const { keyid, sig } of envelope.signatures) {
    const entries = keySet.entries(keyid);
    const pair = JSON.stringify([keyid, sig.toString('base64')]);
    if (entries.length === 0 || checked.has(pair)) continue; // unknown key: ignored; repeated: verified once
    checked.add(pair);
    for (const key of entries) {
      checkKeyUsable(key, issuedAt);
      if (!ed25519.verify(key.publicKey, message, sig)) {
        throw new VerificationError('BAD_SIGNATURE', `signature by ${keyid} does not verify`);
      }
      if (ENVELOPE_ROLES.has(key.role)) addCandidate(key.role, key);
    }
    if (entries.length && !keyIds.includes(keyid)) keyIds.push(keyid);
  }

  let minerOwnerMismatch = false;
  const carried = minerReportOf(payload);
  if (carried) {
    for (const key of keySet.entries(carried.keyid).filter((k) => k.role === 'miner')) {
      checkKeyUsable(key, issuedAt);
      if (!ed25519.verify(key.publicKey, pae(MINER_REPORT_PAYLOAD_TYPE, carried.report), carried.sig)) {
        throw new VerificationError('BAD_MINER_SIGNATURE', 'the miner report signature does not verify');
      }
      if (key.owner === payload.provider) {
        addCandidate('miner', key);
        if (!keyIds.includes(key.keyId)) keyIds.push(key.keyId);
      } else {
        minerOwnerMismatch = true;
      }
    }
  }

  for (const role of [...roles].sort()) {
    if (candidates.get(role)?.size) continue;
    if (role === 'miner' && minerOwnerMismatch) {
      throw new VerificationError('MINER_NOT_PROVIDER', 'the miner key does not belong to the receipt provider');
    }
    throw new VerificationError('MISSING_SIGNATURE', `no valid ${role} signature`);
  }
  if (!assignDistinctKeys(roles, candidates)) {
    throw new VerificationError('SAME_KEY_TWO_ROLES', 'one key cannot sign for two required roles');
  }
  return { payload, payloadBytes: envelope.payload, roles: [...candidates.keys()].sort(), keyIds };
}

module.exports = {
  verifyReceiptEnvelope,
  parseReceiptPayload,
  RECEIPT_PAYLOAD_TYPE,
  MINER_REPORT_PAYLOAD_TYPE,
  REQUIRED_FIELDS,
};
