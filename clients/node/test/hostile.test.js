'use strict';
/**
 * Hostile inputs: whatever a bundle, key set, checkpoint or proof holds, the verifier returns or throws a
 * VerificationError (a verdict with a code), never another exception, and its work is bounded by the key
 * set rather than by the input's size. Every case starts from a bundle that verifies.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const v = require('../src/verify');
const issuer = require('../testing/issuer');

function scene() {
  const s = issuer.scene();
  const env = issuer.envelope(issuer.payloadBytes(issuer.payload()), [{ key: s.keys.coordinator }]);
  const index = s.log.append(env);
  for (let i = 0; i < 3; i++) s.log.append(Buffer.from(`later receipt ${i}`));
  const bundle = s.log.bundle(index);
  const keySet = v.loadKeySet(s.keySetJson);
  v.verifyBundle(bundle, keySet);
  return { ...s, env, bundle, keySet };
}

/** 'OK' or the VerificationError's code; anything else thrown fails the test. */
function verdict(fn) {
  try {
    fn();
    return 'OK';
  } catch (err) {
    if (err instanceof v.VerificationError) return err.code;
    throw err;
  }
}

test('a checkpoint note holding a lone surrogate is malformed (its UTF-8 bytes would be another text)', () => {
  const s = scene();
  const [text, sigs] = s.bundle.checkpoint.split('\n\n');
  const notes = {
    origin: `\ud800${text}\n\n${sigs}`,
    'size line': `${text.replace('\n', '\n\ud800')}\n\n${sigs}`,
    'unknown signer name': `${s.bundle.checkpoint}\u2014 \udc00 AAAAAAAA\n`,
  };
  // A log key without a published verifier key is named by the origin: the signature then covers the
  // U+FFFD Buffer.from writes for the surrogate, and verified.
  const bare = structuredClone(s.keySetJson);
  delete bare.keys.find((k) => k.role === 'log').note_verifier_key;
  const origin = '\ud800x';
  const t2 = `${origin}\n${s.log.leaves.length}\n${s.bundle.checkpoint.split('\n')[2]}\n`;
  notes['signed origin'] = issuer.signNote(t2, origin, s.keys.log);
  for (const [where, note] of Object.entries(notes)) {
    for (const keySet of [s.keySet, v.loadKeySet(bare)]) {
      assert.equal(verdict(() => v.verifyCheckpoint(note, keySet)), 'BAD_NOTE', where);
      assert.equal(verdict(() => v.verifyBundle({ ...s.bundle, checkpoint: note }, keySet)), 'BAD_NOTE', where);
    }
  }
});

test('a checkpoint tree size past 2^64-1 (a uint64) is malformed; 2^64-1 parses', () => {
  const s = scene();
  const root = Buffer.alloc(32).toString('base64');
  for (const size of [String(2n ** 64n), '9'.repeat(21), '9'.repeat(4301), '9'.repeat(1_000_000)]) {
    const note = issuer.signNote(`${s.origin}\n${size}\n${root}\n`, s.origin, s.keys.log);
    assert.equal(verdict(() => v.verifyCheckpoint(note, s.keySet)), 'BAD_CHECKPOINT', size.slice(0, 30));
  }
  const max = issuer.signNote(`${s.origin}\n${2n ** 64n - 1n}\n${root}\n`, s.origin, s.keys.log);
  assert.equal(v.verifyCheckpoint(max, s.keySet).treeSize, 2n ** 64n - 1n);
});

test('a signature repeated many times is verified once', () => {
  const s = scene();
  const env = JSON.parse(s.env);
  const data = Buffer.from(JSON.stringify({ ...env, signatures: Array(30_000).fill(env.signatures[0]) })); // ~4.5 MB
  const start = process.cpuUsage();
  assert.deepEqual(v.verifyReceiptEnvelope(data, s.keySet).roles, ['coordinator']);
  const { user, system } = process.cpuUsage(start);
  // ~0.3 ms per Ed25519 verification: 30,000 of them took ~9 s of CPU; once each, about a second.
  assert.ok(user + system < 4_000_000, `${(user + system) / 1e6} s`);
});

const VALUES = [null, 0, -1, 1.5, true, '', 'x', [], {}, [[[]]], 2 ** 64, -(2 ** 64), 2 ** 53, 1e300, '\ud800', { a: 1 }, ['a'], '__proto__'];
const DELETE = Symbol('delete');

function* paths(obj, path = []) {
  yield path;
  if (obj && typeof obj === 'object') {
    for (const k of Object.keys(obj)) yield* paths(obj[k], [...path, Array.isArray(obj) ? Number(k) : k]);
  }
}

function* mutants(obj) {
  for (const path of [...paths(obj)]) {
    for (const value of [...VALUES, DELETE]) {
      if (value === DELETE && (!path.length || typeof path.at(-1) === 'number')) continue;
      if (!path.length) {
        yield value;
        continue;
      }
      const out = structuredClone(obj);
      let cur = out;
      for (const k of path.slice(0, -1)) cur = cur[k];
      if (value === DELETE) delete cur[path.at(-1)];
      else cur[path.at(-1)] = value;
      yield out;
    }
  }
}

test('every field of a bundle, its envelope, its payload and the key set mistyped: a verdict each', () => {
  const s = scene();
  for (const b of mutants(JSON.parse(JSON.stringify(s.bundle)))) {
    verdict(() => v.verifyBundle(JSON.stringify(b), s.keySet));
    verdict(() => v.verifyBundle(b, s.keySet));
  }
  for (const e of mutants(JSON.parse(s.env))) {
    const bytes = Buffer.from(JSON.stringify(e));
    verdict(() => v.verifyReceiptEnvelope(bytes, s.keySet));
    verdict(() => v.verifyBundle({ ...s.bundle, envelope: bytes.toString('base64') }, s.keySet));
  }
  for (const p of mutants(issuer.payload())) {
    let body;
    try {
      body = issuer.payloadBytes(p);
    } catch {
      body = Buffer.from(JSON.stringify(p) ?? 'null');
    }
    verdict(() => v.verifyReceiptEnvelope(issuer.envelope(body, [{ key: s.keys.coordinator }]), s.keySet));
  }
  for (const k of mutants(s.keySetJson)) {
    if (verdict(() => v.loadKeySet(JSON.stringify(k))) === 'OK') verdict(() => v.verifyBundle(s.bundle, v.loadKeySet(JSON.stringify(k))));
  }
  const legacy = { payload: { a: 1, b: [1, null] }, signature: { alg: 'Ed25519', key_id: s.keys.coordinator.raw.toString('base64url'), sig: 'AA' } };
  for (const l of mutants(legacy)) verdict(() => v.verifyLegacyReceipt(JSON.stringify(l), s.keySet));
});

test('nesting, long proofs, sizes near 2^64 and big notes: a verdict each', () => {
  const s = scene();
  const [text] = s.bundle.checkpoint.split('\n\n');
  for (const d of [256, 257, 100_000]) {
    const deep = '['.repeat(d) + ']'.repeat(d);
    assert.equal(verdict(() => v.verifyBundle(`{"envelope":${deep}}`, s.keySet)), d > 256 ? 'BAD_JSON' : 'BAD_BUNDLE');
    verdict(() => v.verifyLegacyReceipt(`{"payload":{"x":${deep}},"signature":{}}`, s.keySet));
    verdict(() => v.loadKeySet(`{"keys":${deep}}`));
  }
  const long = Array(10_000).fill('00'.repeat(32));
  assert.equal(verdict(() => v.verifyBundle({ ...s.bundle, inclusion_proof: { ...s.bundle.inclusion_proof, hashes: long } }, s.keySet)), 'BAD_PROOF');
  assert.equal(verdict(() => v.verifyBundle({ ...s.bundle, leaf_index: s.bundle.inclusion_proof.tree_size }, s.keySet)), 'BAD_PROOF');
  assert.equal(verdict(() => v.verifyBundle(`{"envelope":"","leaf_index":18446744073709551615,"inclusion_proof":{"tree_size":18446744073709551616,"hashes":[]},"checkpoint":""}`, s.keySet)), 'BAD_BUNDLE');
  assert.equal(verdict(() => v.verifyCheckpoint(`${'a'.repeat(5_000_000)}\n\n\u2014 x AAAAAAAA\n`, s.keySet)), 'UNKNOWN_NOTE_SIGNER');
  assert.equal(verdict(() => v.verifyCheckpoint(`${text}\n\n${'\u2014 x AAAAAAAA\n'.repeat(200_000)}`, s.keySet)), 'BAD_NOTE');
  assert.equal(verdict(() => v.verifyBundle(Buffer.from([0x7b, 0xff, 0x7d]), s.keySet)), 'BAD_JSON');
  const older = s.log.checkpoint(6);
  for (const proof of [Array(10_000).fill(Buffer.alloc(32)), [Buffer.alloc(31)], [null], ['x']]) {
    assert.equal(verdict(() => v.verifyBundle(s.bundle, s.keySet, { previous: { checkpoint: older, consistencyProof: proof } })), 'BAD_PROOF');
  }
});

test('megabytes of base64 in a field are BAD_ENCODING or a verdict, never a RangeError from the regex engine', () => {
  // (a repeated 4-character group over ~5 MB overflowed the engine's stack: an uncaught RangeError)
  const { decodeBase64 } = require('../src/encoding');
  const big = 'A'.repeat(6 << 20);
  assert.equal(decodeBase64(big).length, (6 << 20) / 4 * 3);
  assert.equal(verdict(() => decodeBase64(`${big}A`)), 'BAD_ENCODING');
  const s = scene();
  assert.equal(typeof s.bundle.envelope, 'string'); // (the envelope's bytes, base64)
  assert.notEqual(verdict(() => v.verifyBundle({ ...s.bundle, envelope: big }, s.keySet)), 'OK');
  for (const text of ['', 'AA==', 'AAA=', 'AAAA']) assert.equal(verdict(() => decodeBase64(text)), 'OK');
  for (const text of ['A===', 'A=A=', '====', 'AAAAA', 'AA=', '=AAA']) assert.equal(verdict(() => decodeBase64(text)), 'BAD_ENCODING');
});
