'use strict';
/**
 * HMAC request signing, version 1: the scheme of docs/security.md ("Request signing"), as the Python SDK
 * implements it (clients/python/aitbc/signing.py). A signed call carries three metadata entries:
 *
 *   x-aitbc-timestamp   unix seconds as sent ("1718000000.250")
 *   x-aitbc-nonce       unique per call (32 random hex digits here)
 *   x-aitbc-signature   lowercase hex HMAC-SHA256(secret, stringToSign)
 *
 * The body digest is over the request bytes exactly as they travel: the client serializes each request
 * once, signs those bytes and sends the same bytes (no second serialization that could differ).
 */
const crypto = require('node:crypto');

const SCHEME = 'AITBC-HMAC-SHA256';
const TIMESTAMP = 'x-aitbc-timestamp';
const NONCE = 'x-aitbc-nonce';
const SIGNATURE = 'x-aitbc-signature';

/** The signed text: scheme, method path, timestamp, nonce and body digest, one per line. */
function stringToSign(method, timestamp, nonce, bodySha256) {
  return `${SCHEME}\n${method}\n${timestamp}\n${nonce}\n${bodySha256}`;
}

/** Lowercase hex HMAC-SHA256 of stringToSign. */
function signature(secret, method, timestamp, nonce, bodySha256) {
  return crypto.createHmac('sha256', secret).update(stringToSign(method, timestamp, nonce, bodySha256)).digest('hex');
}

/**
 * The three metadata entries that sign one call.
 * @param {string|Buffer} secret the key's signing secret
 * @param {string} method full gRPC path, e.g. '/aitbc.coordinator.v1.JobService/SubmitJob'
 * @param {Buffer|null} body the serialized request as sent; null for a call whose requests are a stream
 * @param {{timestamp?: number, nonce?: string}} [fixed] for tests: the time (unix seconds) and nonce to use
 * @returns {Array<[string, string]>}
 */
function signingEntries(secret, method, body, fixed = {}) {
  const timestamp = (fixed.timestamp ?? Date.now() / 1000).toFixed(3);
  const nonce = fixed.nonce ?? crypto.randomBytes(16).toString('hex');
  const digest = body == null ? '' : crypto.createHash('sha256').update(body).digest('hex');
  return [[TIMESTAMP, timestamp], [NONCE, nonce], [SIGNATURE, signature(secret, method, timestamp, nonce, digest)]];
}

module.exports = { SCHEME, TIMESTAMP, NONCE, SIGNATURE, stringToSign, signature, signingEntries };
