'use strict';
/**
 * DSSE v1 envelopes (https://github.com/secure-systems-lab/dsse, protocol.md and envelope.md).
 *
 * Signatures cover PAE(payloadType, payload), never the envelope JSON, so the payload type is bound to the
 * payload and no JSON re-serialisation is ever involved.
 */
const { VerificationError, decodeBase64 } = require('./encoding');
const { parseStrict, hasExactly } = require('./json');

/**
 * Pre-authentication encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths in ASCII
 * decimal of the byte lengths.
 * @param {string} payloadType
 * @param {Uint8Array} payload
 * @returns {Buffer}
 */
function pae(payloadType, payload) {
  const type = Buffer.from(payloadType, 'utf8');
  const body = Buffer.from(payload);
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${type.length} `, 'ascii'),
    type,
    Buffer.from(` ${body.length} `, 'ascii'),
    body,
  ]);
}

/**
 * @typedef {object} Envelope
 * @property {string} payloadType
 * @property {Buffer} payload the decoded payload bytes
 * @property {{keyid: string, sig: Buffer}[]} signatures
 */

/**
 * Parses envelope JSON bytes strictly (duplicate keys and non-canonical base64 refuse).
 * @param {Uint8Array|string} bytes
 * @returns {Envelope}
 */
function parseEnvelope(bytes) {
  const env = parseStrict(bytes);
  if (env === null || typeof env !== 'object' || Array.isArray(env)) {
    throw new VerificationError('BAD_ENVELOPE', 'an envelope is a JSON object');
  }
  // Unknown fields are refused, not ignored: the log hashes envelope bytes, so one receipt, one text.
  if (!hasExactly(env, ['payload', 'payloadType', 'signatures'])) {
    throw new VerificationError('BAD_ENVELOPE', 'the envelope fields are payload, payloadType, signatures');
  }
  if (typeof env.payloadType !== 'string') throw new VerificationError('BAD_ENVELOPE', 'payloadType must be a string');
  if (!Array.isArray(env.signatures) || env.signatures.length === 0) {
    throw new VerificationError('BAD_ENVELOPE', 'signatures must be a non-empty array');
  }
  const signatures = env.signatures.map((s, i) => {
    if (!hasExactly(s, ['keyid', 'sig']) || typeof s.keyid !== 'string') {
      throw new VerificationError('BAD_ENVELOPE', `signatures[${i}] is {"keyid":"...","sig":"..."}`);
    }
    return { keyid: s.keyid, sig: decodeBase64(s.sig, `signatures[${i}].sig`) };
  });
  return { payloadType: env.payloadType, payload: decodeBase64(env.payload, 'payload'), signatures };
}

module.exports = { pae, parseEnvelope };
