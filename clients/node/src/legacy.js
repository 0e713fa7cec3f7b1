'use strict';
/**
 * Legacy AITBC v1 receipts (spec section 8): `{payload, signature: {alg: "Ed25519", key_id, sig}}`, the
 * signature (base64url, unpadded) over the canonical JSON of the payload; key_id is the base64url of the
 * raw public key.
 *
 * The v1 signer was Python (`json.dumps(..., sort_keys=True, separators=(",", ":"))` with nulls dropped),
 * so numbers are written the way Python writes them: integers exactly, floats in repr() form (`4.2`,
 * `2.0`, `1e+16`), and text with json.dumps' default ensure_ascii (`"Z\u00fcrich"`). Give the receipt as JSON text to keep `2.0` apart from `2`; a parsed object cannot.
 */
const ed25519 = require('./ed25519');
const { VerificationError, decodeBase64Url } = require('./encoding');
const { parseStrict, compareKeys, hasExactly, JsonNumber } = require('./json');

/**
 * Python's repr() of a float: the shortest round-trip digits, fixed notation for exponents -4..15,
 * scientific with a signed two-digit exponent otherwise.
 * @param {number} x
 * @returns {string}
 */
function pythonFloatRepr(x) {
  if (!Number.isFinite(x)) throw new VerificationError('NOT_CANONICAL', 'NaN and infinities are not JSON');
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const sign = x < 0 ? '-' : '';
  const [mantissa, exponent] = Math.abs(x).toExponential().split('e');
  const digits = mantissa.replace('.', '');
  const e = Number(exponent);
  if (e >= -4 && e < 16) {
    if (e < 0) return `${sign}0.${'0'.repeat(-e - 1)}${digits}`;
    const whole = digits.padEnd(e + 1, '0').slice(0, e + 1);
    return `${sign}${whole}.${digits.slice(e + 1) || '0'}`;
  }
  const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  return `${sign}${m}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
}

/** Python's json.dumps of a number: an integer (lexeme or JS integer) exactly, a float as repr(). */
function pythonNumber(n) {
  if (n instanceof JsonNumber) {
    if (n.isInteger) return n.text === '-0' ? '0' : n.text;
    return pythonFloatRepr(Number(n.text));
  }
  return Number.isInteger(n) ? String(n) : pythonFloatRepr(n);
}

/**
 * Python's json.dumps of a string with its default ensure_ascii: JSON.stringify's escapes (the same ones
 * for `"`, `\\`, control characters), then everything past `~` as lowercase \uXXXX, one per UTF-16 unit
 * (so a character beyond U+FFFF becomes its surrogate pair, as Python writes it).
 * @param {string} text
 * @returns {string}
 */
function pythonAsciiString(text) {
  return JSON.stringify(text).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Null or absent: what the v1 signer dropped from objects and from arrays alike. */
const isNone = (v) => v === null || v === undefined;

/**
 * The v1 canonical JSON of a payload, as the v1 signer (Python's aitbc_crypto) wrote it: sorted keys, no
 * whitespace, nulls dropped from objects and arrays, non-ASCII text escaped (\u00fc, never raw UTF-8).
 * @param {*} value
 * @returns {string}
 */
function legacyCanonical(value) {
  if (typeof value === 'number' || value instanceof JsonNumber) return pythonNumber(value);
  if (typeof value === 'string') return pythonAsciiString(value);
  if (typeof value === 'boolean') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.filter((v) => !isNone(v)).map(legacyCanonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value).filter((k) => !isNone(value[k])).sort(compareKeys);
    return `{${keys.map((k) => `${pythonAsciiString(k)}:${legacyCanonical(value[k])}`).join(',')}}`;
  }
  throw new VerificationError('NOT_CANONICAL', `a ${value === null ? 'null' : typeof value} has no JSON form`);
}

/** A parsed value with its JsonNumbers turned into plain numbers, for the caller. */
function plainNumbers(value) {
  if (value instanceof JsonNumber) return Number(value.text);
  if (Array.isArray(value)) return value.map(plainNumbers);
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plainNumbers(v)]));
  return value;
}

/**
 * The public keys a verifier trusts for v1 receipts: raw keys, or the coordinator keys of a key set
 * (v1 carried one signature, the coordinator's).
 * @param {Uint8Array|Uint8Array[]|import('./keys').KeySet} trusted
 * @returns {Buffer[]}
 */
function trustedLegacyKeys(trusted) {
  if (trusted instanceof Uint8Array) return [Buffer.from(trusted)];
  if (Array.isArray(trusted)) return trusted.map((k) => Buffer.from(k));
  return trusted.withRole('coordinator').filter((k) => k.keyIdMatches).map((k) => k.publicKey);
}

/**
 * Verifies a legacy v1 receipt against trusted public keys; throws VerificationError unless it holds.
 * Non-ASCII text is signed as \u escapes, as the v1 signer's json.dumps wrote it.
 * @param {string|Uint8Array|object} source the receipt as JSON text/bytes (parsed strictly) or an object
 * @param {Uint8Array|Uint8Array[]|import('./keys').KeySet} trustedKeys raw 32-byte public keys or a key set
 * @returns {{payload: object, keyId: string}}
 */
function verifyLegacyReceipt(source, trustedKeys) {
  const receipt = typeof source === 'string' || source instanceof Uint8Array ? parseStrict(source, { lossless: true }) : source;
  if (!receipt || typeof receipt !== 'object' || !receipt.payload || typeof receipt.payload !== 'object' || Array.isArray(receipt.payload)) {
    throw new VerificationError('BAD_RECEIPT', 'a v1 receipt is {"payload":{...},"signature":{...}}');
  }
  const sig = receipt.signature;
  if (!hasExactly(sig, ['alg', 'key_id', 'sig']) || typeof sig.key_id !== 'string') {
    throw new VerificationError('BAD_RECEIPT', 'signature must be {"alg":"Ed25519","key_id":...,"sig":...}');
  }
  if (sig.alg !== 'Ed25519') throw new VerificationError('UNSUPPORTED_ALG', `algorithm ${JSON.stringify(sig.alg)}`);
  const signature = decodeBase64Url(sig.sig, 'signature.sig');
  const key = trustedLegacyKeys(trustedKeys).find((k) => k.toString('base64url') === sig.key_id);
  if (!key) throw new VerificationError('UNKNOWN_KEY', `key_id ${sig.key_id} is not a trusted key`);
  if (!ed25519.verify(key, Buffer.from(legacyCanonical(receipt.payload), 'utf8'), signature)) {
    throw new VerificationError('BAD_SIGNATURE', 'the v1 receipt signature does not verify');
  }
  return { payload: plainNumbers(receipt.payload), keyId: sig.key_id };
}

module.exports = { verifyLegacyReceipt, legacyCanonical, pythonFloatRepr };
