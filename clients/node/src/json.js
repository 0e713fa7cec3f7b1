'use strict';
/**
 * Strict JSON (RFC 8259) parsing and the canonical JSON of the receipt spec.
 *
 * Why not JSON.parse: it keeps the last of two duplicate keys, so `{"job_id":"a","job_id":"b"}` would mean
 * one thing to this verifier and possibly another to a different parser. Receipts with duplicate keys are
 * invalid by spec, and a signature over ambiguous bytes proves nothing; this parser refuses them (after
 * unescaping, so "a" and "\u0061" are the same key). It also refuses a byte order mark, invalid UTF-8,
 * lone surrogates and anything RFC 8259 does not allow.
 */
const { VerificationError } = require('./encoding');

const MAX_DEPTH = 256;
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A number kept as its source text, for formats whose canonical form depends on how it was written. */
class JsonNumber {
  /** @param {string} text the number's lexeme, e.g. "1.90" */
  constructor(text) {
    this.text = text;
  }
  /** True when the lexeme has no fraction or exponent (an integer in Python's eyes). */
  get isInteger() {
    return !/[.eE]/.test(this.text);
  }
}

function fail(message) {
  throw new VerificationError('BAD_JSON', message);
}

/**
 * Parses JSON text strictly.
 * @param {string|Uint8Array} input UTF-8 bytes or a string
 * @param {{lossless?: boolean}} [options] lossless: numbers become JsonNumber (exact source text)
 * @returns {*} the value; objects are plain objects
 */
function parseStrict(input, options = {}) {
  let text;
  if (typeof input === 'string') {
    text = input;
  } else if (input instanceof Uint8Array) {
    try {
      text = utf8.decode(input);
    } catch {
      fail('not valid UTF-8');
    }
  } else {
    throw new TypeError('parseStrict takes a string or bytes');
  }
  if (text.charCodeAt(0) === 0xfeff) fail('byte order mark');
  const parser = new Parser(text, Boolean(options.lossless));
  parser.skipWhitespace();
  const value = parser.value(0);
  parser.skipWhitespace();
  if (parser.pos !== text.length) fail(`trailing data at ${parser.pos}`);
  return value;
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

class Parser {
  constructor(text, lossless) {
    this.text = text;
    this.pos = 0;
    this.lossless = lossless;
  }

  skipWhitespace() {
    const t = this.text;
    while (this.pos < t.length) {
      const c = t[this.pos];
      if (c !== ' ' && c !== '\t' && c !== '\n' && c !== '\r') break;
      this.pos++;
    }
  }

  value(depth) {
    if (depth > MAX_DEPTH) fail('nested too deeply');
    const c = this.text[this.pos];
    if (c === '{') return this.object(depth);
    if (c === '[') return this.array(depth);
    if (c === '"') return this.string();
    if (c === '-' || (c >= '0' && c <= '9')) return this.number();
    for (const [word, val] of [['true', true], ['false', false], ['null', null]]) {
      if (this.text.startsWith(word, this.pos)) {
        this.pos += word.length;
        return val;
      }
    }
    return fail(`unexpected ${c === undefined ? 'end of input' : JSON.stringify(c)} at ${this.pos}`);
  }

  expect(ch) {
    if (this.text[this.pos] !== ch) fail(`expected ${ch} at ${this.pos}`);
    this.pos++;
  }

  object(depth) {
    this.expect('{');
    const out = {};
    const seen = new Set();
    this.skipWhitespace();
    if (this.text[this.pos] === '}') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipWhitespace();
      if (this.text[this.pos] !== '"') fail(`expected a key at ${this.pos}`);
      const key = this.string();
      if (seen.has(key)) throw new VerificationError('DUPLICATE_KEY', `duplicate key ${JSON.stringify(key)}`);
      seen.add(key);
      this.skipWhitespace();
      this.expect(':');
      this.skipWhitespace();
      // defineProperty: a key named "__proto__" must become data, not the object's prototype.
      Object.defineProperty(out, key, { value: this.value(depth + 1), enumerable: true, writable: true, configurable: true });
      this.skipWhitespace();
      if (this.text[this.pos] === ',') {
        this.pos++;
        continue;
      }
      this.expect('}');
      return out;
    }
  }

  array(depth) {
    this.expect('[');
    const out = [];
    this.skipWhitespace();
    if (this.text[this.pos] === ']') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.skipWhitespace();
      out.push(this.value(depth + 1));
      this.skipWhitespace();
      if (this.text[this.pos] === ',') {
        this.pos++;
        continue;
      }
      this.expect(']');
      return out;
    }
  }

  number() {
    NUMBER.lastIndex = this.pos;
    const m = NUMBER.exec(this.text);
    if (!m) fail(`bad number at ${this.pos}`);
    this.pos += m[0].length;
    if (this.lossless) return new JsonNumber(m[0]);
    const n = Number(m[0]);
    if (!Number.isFinite(n)) fail(`number out of range at ${this.pos}`);
    return n;
  }

  string() {
    this.expect('"');
    const t = this.text;
    let out = '';
    for (;;) {
      if (this.pos >= t.length) fail('unterminated string');
      const c = t.charCodeAt(this.pos);
      if (c === 0x22) {
        this.pos++;
        return out;
      }
      if (c < 0x20) fail(`control character in string at ${this.pos}`);
      if (c === 0x5c) {
        const e = t[this.pos + 1];
        if (e === 'u') {
          out += this.unicodeEscape();
        } else if (e !== undefined && Object.hasOwn(ESCAPES, e)) {
          out += ESCAPES[e];
          this.pos += 2;
        } else {
          fail(`bad escape at ${this.pos}`);
        }
        continue;
      }
      if (c >= 0xd800 && c <= 0xdfff) {
        // A raw surrogate can only come from a string input; UTF-8 input cannot carry one.
        const d = t.charCodeAt(this.pos + 1);
        if (c > 0xdbff || !(d >= 0xdc00 && d <= 0xdfff)) fail(`lone surrogate at ${this.pos}`);
        out += t[this.pos] + t[this.pos + 1];
        this.pos += 2;
        continue;
      }
      out += t[this.pos];
      this.pos++;
    }
  }

  /** One \uXXXX escape, or a surrogate pair of two; a lone surrogate is refused. */
  unicodeEscape() {
    const hex4 = (at) => {
      const h = this.text.slice(at, at + 4);
      if (!/^[0-9a-fA-F]{4}$/.test(h)) fail(`bad \\u escape at ${at}`);
      return parseInt(h, 16);
    };
    const hi = hex4(this.pos + 2);
    this.pos += 6;
    if (hi < 0xd800 || hi > 0xdfff) return String.fromCharCode(hi);
    if (hi > 0xdbff || this.text[this.pos] !== '\\' || this.text[this.pos + 1] !== 'u') fail('lone surrogate escape');
    const lo = hex4(this.pos + 2);
    if (lo < 0xdc00 || lo > 0xdfff) fail('lone surrogate escape');
    this.pos += 6;
    return String.fromCharCode(hi, lo);
  }
}

/** Orders object keys by Unicode code point: UTF-8 byte order is code point order (UTF-16 order is not). */
function compareKeys(a, b) {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * Canonical JSON of the receipt spec (section 1): keys sorted by code point, no whitespace, integers only
 * (exact quantities travel as decimal strings), no nulls. Throws on a value that has no canonical form,
 * rather than silently dropping or rounding it.
 * @param {*} value
 * @returns {string}
 */
function canonicalize(value) {
  if (value === null) throw new VerificationError('NOT_CANONICAL', 'null has no canonical form (omit the field)');
  if (typeof value === 'string' || typeof value === 'boolean') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new VerificationError('NOT_CANONICAL', `number ${value} is not an exact integer`);
    return String(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalize).join(',')}]`;
  if (typeof value === 'object') {
    const keys = Object.keys(value).sort(compareKeys);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalize(value[k])}`).join(',')}}`;
  }
  throw new VerificationError('NOT_CANONICAL', `a ${typeof value} has no JSON form`);
}

/**
 * Canonical JSON of a structured (google.protobuf.Struct) job input or result, the bytes its digest
 * covers (spec section 1): keys sorted by code point, no whitespace, nulls kept, numbers (doubles) in
 * ECMAScript's shortest round-trip form, which is what JSON.stringify writes (2.0 -> `2`, 1e21 -> `1e+21`).
 * @param {*} value
 * @returns {string}
 */
function canonicalStruct(value) {
  if (value === null) return 'null';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new VerificationError('NOT_CANONICAL', 'NaN and infinities are not JSON');
    return JSON.stringify(value);
  }
  if (typeof value === 'string' || typeof value === 'boolean') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalStruct).join(',')}]`;
  if (typeof value === 'object') {
    const keys = Object.keys(value).sort(compareKeys);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalStruct(value[k])}`).join(',')}}`;
  }
  throw new VerificationError('NOT_CANONICAL', `a ${typeof value} has no JSON form`);
}

/**
 * True when `obj` is a JSON object with exactly these fields: the formats (envelope, bundle, miner
 * signature, legacy signature) are closed, so an unknown field is an error rather than something ignored.
 * @param {*} obj
 * @param {string[]} fields
 */
function hasExactly(obj, fields) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) return false;
  const keys = Object.keys(obj);
  return keys.length === fields.length && fields.every((f) => Object.hasOwn(obj, f));
}

/**
 * Parses bytes that must be canonical JSON: strict parse, then the bytes must equal their re-serialisation.
 * @param {Uint8Array} bytes
 * @returns {*} the parsed value
 */
function parseCanonical(bytes) {
  const value = parseStrict(bytes);
  const again = Buffer.from(canonicalize(value), 'utf8');
  if (!again.equals(Buffer.from(bytes))) throw new VerificationError('NOT_CANONICAL', 'JSON is not in canonical form');
  return value;
}

module.exports = { parseStrict, parseCanonical, canonicalize, canonicalStruct, compareKeys, hasExactly, JsonNumber };
