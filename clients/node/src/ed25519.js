'use strict';
/**
 * Strict Ed25519 verification: node's OpenSSL-backed `crypto.verify`, plus the checks libsodium's
 * `crypto_sign_verify_detached` makes and OpenSSL does not.
 *
 * Why the extra checks: OpenSSL accepts a public key or R whose y coordinate is encoded non-canonically
 * (y >= p) and accepts small-order keys and R values, so a signature that libsodium (and therefore the
 * Python SDK) refuses would pass here. Receipts must verify identically in every language, so this module
 * refuses exactly what libsodium refuses:
 *   - S must be canonical (S < L). OpenSSL checks this too; we check it first so the rule does not depend
 *     on the OpenSSL build.
 *   - A must be canonical (y < p, sign bit ignored) and A, R must not be one of the small-order points,
 *     in any of their encodings (libsodium compares against a blocklist with the sign bit masked).
 *   - R must be canonical: OpenSSL compares R's bytes with the canonical encoding of [S]B - [k]A, so a
 *     non-canonical R never matches; we still refuse it explicitly for clarity.
 * The equation itself (and the hash over the R and A bytes exactly as given) is OpenSSL's.
 */
const crypto = require('node:crypto');

/** DER prefix of an SPKI structure holding an Ed25519 key (RFC 8410): the raw 32 bytes follow it. */
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/** p = 2^255 - 19 and L = 2^252 + 27742317777372353535851937790883648493. */
const P = (1n << 255n) - 19n;
const L = (1n << 252n) + 27742317777372353535851937790883648493n;

/**
 * The y coordinates (little-endian, sign bit clear) of the eight small-order points, and the non-canonical
 * encodings of those y values that fit in 255 bits (y + p for y = 0 and y = 1). x = 0 points and the two
 * order-4 points share y = 0/1/p-1; the four order-8 points share the two values y8 and p - y8.
 * The test suite checks each value is a root of the curve's small-order polynomials, so a typo fails.
 */
const SMALL_ORDER_Y = [
  0n, // (±sqrt(-1), 0): order 4
  1n, // identity: order 1
  P - 1n, // (0, -1): order 2
  0x05fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826n, // order 8
  0x7a03ac9277fdc74ec6cc392cfa53202a0f67100d760b3cba4fd84d3d706a17c7n, // order 8 (= p - the above)
  P, // 0, non-canonical
  P + 1n, // 1, non-canonical
];

/** Little-endian bytes to BigInt. */
function leToBigInt(bytes) {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]);
  return n;
}

/** The y value of a 32-byte point encoding, sign bit (bit 255) cleared. */
function encodedY(point) {
  const b = Buffer.from(point);
  b[31] &= 0x7f;
  return leToBigInt(b);
}

/** True when the point encoding's y is below p (libsodium's ge25519_is_canonical). */
function isCanonicalPoint(point) {
  return encodedY(point) < P;
}

/** True when the encoding names a point of order 1, 2, 4 or 8, whatever its sign bit. */
function hasSmallOrder(point) {
  const y = encodedY(point);
  return SMALL_ORDER_Y.includes(y);
}

/** True when the 32-byte little-endian scalar is below the group order L. */
function isCanonicalScalar(scalar) {
  return leToBigInt(scalar) < L;
}

/**
 * A node KeyObject for a raw 32-byte Ed25519 public key.
 * @param {Uint8Array} raw
 * @returns {crypto.KeyObject}
 */
function publicKeyFromRaw(raw) {
  if (!(raw instanceof Uint8Array) || raw.length !== 32) {
    throw new TypeError('an Ed25519 public key is 32 bytes');
  }
  return crypto.createPublicKey({
    key: Buffer.concat([SPKI_ED25519_PREFIX, raw]),
    format: 'der',
    type: 'spki',
  });
}

/** The raw 32 bytes of an Ed25519 public KeyObject (the last 32 bytes of its SPKI DER). */
function rawFromPublicKey(keyObject) {
  const der = keyObject.export({ format: 'der', type: 'spki' });
  return Buffer.from(der.subarray(der.length - 32));
}

/**
 * Verifies an Ed25519 signature under the strict policy. Never throws on bad input: malformed keys or
 * signatures simply do not verify.
 * @param {Uint8Array} publicKey raw 32 bytes
 * @param {Uint8Array} message
 * @param {Uint8Array} signature 64 bytes: R || S
 * @returns {boolean}
 */
function verify(publicKey, message, signature) {
  if (!(publicKey instanceof Uint8Array) || publicKey.length !== 32) return false;
  if (!(signature instanceof Uint8Array) || signature.length !== 64) return false;
  const r = signature.subarray(0, 32);
  const s = signature.subarray(32);
  if (!isCanonicalScalar(s)) return false;
  if (!isCanonicalPoint(publicKey) || hasSmallOrder(publicKey)) return false;
  if (!isCanonicalPoint(r) || hasSmallOrder(r)) return false;
  let key;
  try {
    key = publicKeyFromRaw(publicKey);
  } catch {
    return false; // not a point on the curve
  }
  try {
    return crypto.verify(null, message, key, signature);
  } catch {
    return false;
  }
}

module.exports = {
  verify,
  publicKeyFromRaw,
  rawFromPublicKey,
  isCanonicalPoint,
  isCanonicalScalar,
  hasSmallOrder,
  SMALL_ORDER_Y,
  P,
  L,
};
