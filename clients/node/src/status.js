'use strict';
/**
 * The google.rpc details of a failed call, read from its `grpc-status-details-bin` trailer: the ErrorInfo
 * reason (the contract's stable name of the error), BadRequest field violations and the RetryInfo delay.
 * A small protobuf wire reader (only the fields these messages use), so that no .proto of google/rpc is needed.
 */

/** Reads the fields of one protobuf message: [fieldNumber, wireType, value] (value: bigint or Buffer). */
function* fields(buf) {
  let pos = 0;
  const varint = () => {
    let result = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (pos >= buf.length) throw new Error('truncated varint');
      const b = buf[pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return result;
    }
  };
  while (pos < buf.length) {
    const key = varint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) yield [field, wire, varint()];
    else if (wire === 2) {
      const len = Number(varint());
      if (pos + len > buf.length) throw new Error('truncated field');
      yield [field, wire, buf.subarray(pos, pos + len)];
      pos += len;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new Error(`unsupported wire type ${wire}`);
  }
}

/** The length-delimited fields of a message by number, as a map of arrays of Buffers (and varints as bigint). */
function parse(buf) {
  const out = new Map();
  for (const [field, , value] of fields(buf)) {
    if (!out.has(field)) out.set(field, []);
    out.get(field).push(value);
  }
  return out;
}

const text = (m, n) => (m.get(n) ? Buffer.from(m.get(n).at(-1)).toString('utf8') : '');
const TYPE_PREFIX = 'type.googleapis.com/google.rpc.';

/**
 * The details of a grpc-js error (its metadata's grpc-status-details-bin), or null when it has none.
 * @param {{metadata?: import('@grpc/grpc-js').Metadata}} err
 * @returns {{reason: string, domain: string, metadata: Object<string,string>, violations: {field: string, description: string}[], retryAfterMs: number|null}|null}
 */
function errorDetails(err) {
  const raw = err && err.metadata && typeof err.metadata.get === 'function' ? err.metadata.get('grpc-status-details-bin') : [];
  if (!raw.length) return null;
  const out = { reason: '', domain: '', metadata: {}, violations: [], retryAfterMs: null };
  try {
    for (const any of parse(Buffer.from(raw[0])).get(3) ?? []) {
      const a = parse(any);
      const type = text(a, 1);
      const body = parse(a.get(2)?.[0] ?? Buffer.alloc(0));
      if (type === `${TYPE_PREFIX}ErrorInfo`) {
        out.reason = text(body, 1);
        out.domain = text(body, 2);
        for (const entry of body.get(3) ?? []) {
          const e = parse(entry);
          out.metadata[text(e, 1)] = text(e, 2);
        }
      } else if (type === `${TYPE_PREFIX}BadRequest`) {
        for (const v of body.get(1) ?? []) {
          const fv = parse(v);
          out.violations.push({ field: text(fv, 1), description: text(fv, 2) });
        }
      } else if (type === `${TYPE_PREFIX}RetryInfo`) {
        const d = parse(body.get(1)?.[0] ?? Buffer.alloc(0));
        out.retryAfterMs = Number(d.get(1)?.[0] ?? 0n) * 1000 + Math.round(Number(d.get(2)?.[0] ?? 0n) / 1e6);
      }
    }
  } catch {
    return null; // not a google.rpc.Status: the code and message are all there is
  }
  return out;
}

/**
 * The detail properties of an error that has none (no grpc-status-details-bin: a connection refused, a deadline
 * the client saw pass, a call close() ended): the same fields, empty, so that `err.violations.length` or
 * `err.retryAfterMs !== null` reads as on any other error.
 */
function noDetails() {
  return { reason: '', violations: [], retryAfterMs: null, errorMetadata: {} };
}

/**
 * The error with its details as properties (`reason`, `violations`, `retryAfterMs`, `errorMetadata`; empty,
 * as noDetails(), when it has none), and its message naming the reason: `5 NOT_FOUND (JOB_NOT_FOUND): job ... not found`.
 */
function withDetails(err) {
  if (err === null || typeof err !== 'object' || err.reason !== undefined) return err;
  const d = errorDetails(err);
  if (!d) return Object.assign(err, noDetails());
  Object.assign(err, { reason: d.reason, violations: d.violations, retryAfterMs: d.retryAfterMs, errorMetadata: d.metadata });
  if (d.reason && typeof err.message === 'string' && !err.message.includes(`(${d.reason})`)) {
    err.message = err.message.replace(/^(\d+ [A-Z_]+)/, `$1 (${d.reason})`);
  }
  return err;
}

module.exports = { errorDetails, withDetails, noDetails };
