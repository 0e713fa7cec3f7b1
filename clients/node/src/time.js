'use strict';
/**
 * RFC 3339 timestamps as exact integers. Receipts carry microseconds; Date keeps milliseconds only, so
 * comparing through Date could call a receipt issued one microsecond after a key's valid_until "inside"
 * the window. Everything here is BigInt nanoseconds, truncated to whole microseconds: the precision of
 * receipts, and what the Python verifier does with longer fractions, so both decide validity alike.
 */
const { VerificationError } = require('./encoding');

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
  const ms = Date.UTC(year, month - 1, day, hour, minute, second);
  const back = new Date(ms);
  if (
    back.getUTCFullYear() !== year || back.getUTCMonth() !== month - 1 || back.getUTCDate() !== day ||
    hour > 23 || minute > 59 || second > 59
  ) {
    throw new VerificationError('BAD_TIME', `no such time: ${text}`);
  }
  let offsetMinutes = 0;
  if (!m[8]) offsetMinutes = (m[9] === '-' ? -1 : 1) * (Number(m[10]) * 60 + Number(m[11]));
  const micros = BigInt((m[7] ?? '').slice(0, 6).padEnd(6, '0'));
  const nanos = micros * 1000n;
  return (BigInt(ms) - BigInt(offsetMinutes) * 60000n) * 1000000n + nanos;
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
