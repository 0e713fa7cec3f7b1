'use strict';
/**
 * RFC 3339 timestamps as exact integers. Receipts carry microseconds; Date keeps milliseconds only, so
 * comparing through Date could call a receipt issued one microsecond after a key's valid_until "inside"
 * the window. Everything here is BigInt nanoseconds, truncated to whole microseconds: the precision of
 * receipts, and what the Python verifier does with longer fractions, so both decide validity alike.
 */
const { VerificationError } = require('./encoding');

/** 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range of times the Python verifier takes. */
const MIN_MS = -62135596800000;
const MAX_MS = 253402300799000;
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/**
 * Parses an RFC 3339 date-time (with `Z` or an offset) into nanoseconds since the Unix epoch, digits
 * beyond microseconds dropped.
 * @param {string} text
 * @returns {bigint}
 */
function parseRfc3339(text) {
  const m = typeof text === 'string' ? RFC3339.exec(text) : null;
  if (!m) throw new VerificationError('BAD_TIME', `not an RFC 3339 time: ${JSON.stringify(text)}`);
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day); // (Date.UTC would read years 0-99 as 1900-1999)
  const ms = date.getTime() + ((hour * 60 + minute) * 60 + second) * 1000;
  if (
    year < 1 || date.getUTCFullYear() !== year || date.getUTCMonth() !== month - 1 || date.getUTCDate() !== day ||
    hour > 23 || minute > 59 || second > 59
  ) {
    throw new VerificationError('BAD_TIME', `no such time: ${text}`);
  }
  let offsetMinutes = 0;
  if (!m[8]) {
    if (Number(m[10]) > 23 || Number(m[11]) > 59) throw new VerificationError('BAD_TIME', `no such offset: ${text}`);
    offsetMinutes = (m[9] === '-' ? -1 : 1) * (Number(m[10]) * 60 + Number(m[11]));
  }
  const utcMs = ms - offsetMinutes * 60000;
  if (utcMs < MIN_MS || utcMs > MAX_MS) throw new VerificationError('BAD_TIME', `out of range (years 1-9999 UTC): ${text}`);
  const micros = BigInt((m[7] ?? '').slice(0, 6).padEnd(6, '0'));
  return BigInt(utcMs) * 1000000n + micros * 1000n;
}

/**
 * Formats seconds + nanos (a protobuf Timestamp) as RFC 3339 UTC with `Z`: microseconds as the spec writes
 * them, or nanoseconds when the value has sub-microsecond precision (so nothing is rounded away).
 * @param {bigint|number|string} seconds
 * @param {number} nanos
 * @returns {string}
 */
function formatRfc3339(seconds, nanos = 0) {
  const date = new Date(Number(BigInt(seconds)) * 1000);
  const base = date.toISOString().slice(0, 19);
  const frac = String(nanos).padStart(9, '0');
  return `${base}.${nanos % 1000 === 0 ? frac.slice(0, 6) : frac}Z`;
}

module.exports = { parseRfc3339, formatRfc3339 };
