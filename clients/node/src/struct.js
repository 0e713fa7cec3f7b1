'use strict';
/**
 * google.protobuf.Struct <-> plain JSON values. proto-loader hands Struct over in its wire shape
 * ({fields: {k: {stringValue: ...}}}); integrators think in JSON, so the client converts at its edge.
 */

/**
 * An object JSON.stringify would not write as its own fields: a Map, a Set or binary data (written `{}` or as
 * index keys), refused rather than sent so; null for any other.
 */
function notJson(v) {
  if (v instanceof Map) return 'Map';
  if (v instanceof Set) return 'Set';
  if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return v.constructor?.name ?? 'binary data';
  return null;
}

/**
 * A JSON value as a google.protobuf.Value message object. An object with toJSON (a Date, say) is converted
 * as JSON.stringify writes it (a Date went as an empty Struct).
 */
function toValue(v) {
  const kind = v !== null && typeof v === 'object' ? notJson(v) : null;
  if (kind) throw new TypeError(`a ${kind} is not a JSON value (convert it to an object, array or string)`);
  if (v !== null && typeof v === 'object' && typeof v.toJSON === 'function') v = v.toJSON();
  if (v === null) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new TypeError('Struct numbers must be finite');
    return { numberValue: v };
  }
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  if (typeof v === 'object') return { structValue: toStruct(v) };
  throw new TypeError(`a ${typeof v} is not a JSON value`);
}

/** A plain JSON object as a google.protobuf.Struct message object. */
function toStruct(obj) {
  if (obj !== null && typeof obj === 'object' && !notJson(obj) && typeof obj.toJSON === 'function') obj = obj.toJSON();
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj) || notJson(obj)) throw new TypeError('a Struct is a JSON object');
  const fields = {};
  for (const [k, v] of Object.entries(obj)) fields[k] = toValue(v);
  return { fields };
}

/** A google.protobuf.Value message object (decoded with oneofs: true) as a JSON value. */
function fromValue(value) {
  if (!value) return null;
  switch (value.kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'listValue':
      return (value.listValue?.values ?? []).map(fromValue);
    case 'structValue':
      return fromStruct(value.structValue);
    default:
      return null;
  }
}

/** A google.protobuf.Struct message object as a plain JSON object. */
function fromStruct(struct) {
  const out = {};
  for (const [k, v] of Object.entries(struct?.fields ?? {})) out[k] = fromValue(v);
  return out;
}

module.exports = { toStruct, fromStruct, toValue, fromValue };
