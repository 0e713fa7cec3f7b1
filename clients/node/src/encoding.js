'use strict';
/**
 * Strict byte encodings. Node's Buffer.from(s, 'base64') silently skips invalid characters and accepts
 * missing padding and non-zero trailing bits, so two different strings can decode to the same bytes. A
 * verifier must not accept a signature or key under an encoding the issuer could not have produced, so
 * these decoders accept only the one canonical spelling of each byte string.
 */

// (length checked apart: a repeated group over megabytes of text overflowed the regex engine's stack, a RangeError)
const STD_B64 = /^[A-Za-z0-9+/]*={0,2}$/;
const URL_B64 = /^[A-Za-z0-9_-]*$/;
const HEX = /^(?:[0-9a-fA-F]{2})*$/;

/** Error thrown for malformed input of any kind; `code` is stable and meant for programs. */
class VerificationError extends Error {
  /**
   * @param {string} code e.g. 'BAD_SIGNATURE'
   * @param {string} message
   */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = 'VerificationError';
    this.code = code;
  }
}

/**
 * Standard base64 with padding (RFC 4648 section 4), canonical only.
 * @param {string} text
 * @param {string} [what] names the value in errors
 * @param {{anyPadBits?: boolean}} [options] anyPadBits: accept non-zero unused bits in the last
 *   character, for signed-note fields, where Go's note package and the Python verifier accept them
 */
function decodeBase64(text, what = 'base64', options = {}) {
  if (typeof text !== 'string' || text.length % 4 !== 0 || !STD_B64.test(text)) {
    throw new VerificationError('BAD_ENCODING', `${what} is not padded standard base64`);
  }
  const bytes = Buffer.from(text, 'base64');
  if (!options.anyPadBits && bytes.toString('base64') !== text) {
    throw new VerificationError('BAD_ENCODING', `${what} is not canonical base64`);
  }
  return bytes;
}

/** base64url without padding (RFC 4648 section 5), canonical only. */
function decodeBase64Url(text, what = 'base64url') {
  if (typeof text !== 'string' || !URL_B64.test(text) || text.length % 4 === 1) {
    throw new VerificationError('BAD_ENCODING', `${what} is not unpadded base64url`);
  }
  const bytes = Buffer.from(text, 'base64url');
  if (bytes.toString('base64url') !== text) {
    throw new VerificationError('BAD_ENCODING', `${what} is not canonical base64url`);
  }
  return bytes;
}

/** Hex of either case (public keys in a key set); the thumbprint check binds the bytes, not the text. */
function decodeHex(text, what = 'hex') {
  if (typeof text !== 'string' || !HEX.test(text)) {
    throw new VerificationError('BAD_ENCODING', `${what} is not hex`);
  }
  return Buffer.from(text, 'hex');
}

module.exports = { VerificationError, decodeBase64, decodeBase64Url, decodeHex };
