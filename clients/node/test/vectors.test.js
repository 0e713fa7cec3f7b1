'use strict';
/**
 * Every published vector in ../shared/vectors (relative to the repository root). These pin the verifier
 * to independent data: if any primitive drifts, a vector fails.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const v = require('../src/verify');
const ed25519 = require('../src/ed25519');
const { VECTORS_DIR, vector } = require('../testing/paths');
const { mth } = require('../testing/tree');

const hex = (s) => Buffer.from(s, 'hex');

test('the vectors directory is ../shared/vectors of the repository root', () => {
  assert.ok(fs.existsSync(path.join(VECTORS_DIR, 'README.md')), `no vectors at ${VECTORS_DIR}`);
});

test('RFC 8032 section 7.1: signing reproduces each signature, verification accepts it', () => {
  const { vectors } = vector('rfc8032_ed25519.json');
  assert.equal(vectors.length, 3);
  for (const t of vectors) {
    const pub = hex(t.public_key_hex);
    const msg = hex(t.message_hex);
    const sig = hex(t.signature_hex);
    const privateKey = crypto.createPrivateKey({
      key: { kty: 'OKP', crv: 'Ed25519', d: hex(t.secret_key_hex).toString('base64url'), x: pub.toString('base64url') },
      format: 'jwk',
    });
    assert.equal(crypto.sign(null, msg, privateKey).toString('hex'), t.signature_hex, t.name);
    assert.equal(v.rawFromPublicKey(crypto.createPublicKey(privateKey)).toString('hex'), t.public_key_hex, t.name);
    assert.equal(v.verifyEd25519(pub, msg, sig), true, t.name);
    assert.equal(v.verifyEd25519(pub, Buffer.concat([msg, Buffer.of(0)]), sig), false, `${t.name}, extended message`);
    const bent = Buffer.from(sig);
    bent[10] ^= 1;
    assert.equal(v.verifyEd25519(pub, msg, bent), false, `${t.name}, changed signature`);
  }
});

test('RFC 8037 appendix A.3: JWK thumbprint of the RFC 8032 TEST 1 key', () => {
  const { vectors } = vector('rfc8032_ed25519.json');
  assert.equal(v.keyId(hex(vectors[0].public_key_hex)), 'kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k');
});

test('CCTV Ed25519 edge cases: exactly the 43 listed vectors verify, the other 871 do not', () => {
  const cases = vector('ed25519_edge_cases_cctv.json');
  const expected = vector('ed25519_edge_cases_expected.json');
  assert.equal(cases.length, 914);
  const accepted = cases
    .filter((t) => v.verifyEd25519(hex(t.key), Buffer.from(t.msg, 'utf8'), hex(t.sig)))
    .map((t) => t.number);
  assert.deepEqual(accepted, expected.accepted_numbers);
  assert.equal(cases.length - accepted.length, expected.rejected_count);
});

test('the small-order blocklist holds only points of order dividing 8', () => {
  // Order-8 points have y^2 = (-1 ± sqrt(1+d))/d, i.e. d*y^4 + 2*y^2 - 1 = 0; the others have y in {0, ±1}.
  const { P } = ed25519;
  const mod = (a) => ((a % P) + P) % P;
  const pow = (b, e) => {
    let r = 1n;
    b = mod(b);
    for (; e > 0n; e >>= 1n, b = mod(b * b)) if (e & 1n) r = mod(r * b);
    return r;
  };
  const d = mod(-121665n * pow(121666n, P - 2n));
  for (const y0 of ed25519.SMALL_ORDER_Y) {
    const y = mod(y0);
    const isLowOrder = y === 0n || y === 1n || y === P - 1n || mod(d * y ** 4n + 2n * y * y - 1n) === 0n;
    assert.ok(isLowOrder, `0x${y0.toString(16)} is not the y of a small-order point`);
  }
});

test('DSSE v1 PAE example', () => {
  const t = vector('dsse_pae.json');
  assert.equal(v.pae(t.payload_type, Buffer.from(t.payload_utf8, 'utf8')).toString('utf8'), t.pae_utf8);
});

test('RFC 6962 Merkle roots of the first n reference leaves, and the empty tree', () => {
  const t = vector('rfc6962_merkle_roots.json');
  const leaves = t.leaves_hex.map(hex);
  assert.equal(mth([]).toString('hex'), t.empty_tree_root_hex);
  assert.equal(v.EMPTY_ROOT.toString('hex'), t.empty_tree_root_hex);
  assert.equal(Object.keys(t.roots_hex_by_size).length, 8);
  for (const [n, root] of Object.entries(t.roots_hex_by_size)) {
    assert.equal(mth(leaves.slice(0, Number(n))).toString('hex'), root, `size ${n}`);
  }
});

test('RFC 6962 reference tree: inclusion proofs of the verifier lead to each listed root', () => {
  const t = vector('rfc6962_merkle_roots.json');
  const leaves = t.leaves_hex.map(hex);
  const { inclusionPath } = require('../testing/tree');
  for (const [n, root] of Object.entries(t.roots_hex_by_size)) {
    for (let i = 0; i < Number(n); i++) {
      v.verifyInclusion(i, Number(n), v.leafHash(leaves[i]), inclusionPath(i, leaves.slice(0, Number(n))), hex(root));
    }
  }
});

test('C2SP signed note example verifies; any changed character of the text does not', () => {
  const t = vector('c2sp_signed_note_example.json');
  const verifier = v.parseVerifierKey(t.verifier_key);
  assert.equal(v.formatVerifierKey(verifier.name, verifier.publicKey), t.verifier_key);
  const opened = v.openNote(t.note, [verifier]);
  assert.equal(opened.text, t.signed_text);
  assert.equal(opened.verifiedBy.length, 1);
  for (let i = 0; i < t.signed_text.length - 1; i++) {
    const c = t.note[i] === 'x' ? 'y' : 'x';
    const changed = t.note.slice(0, i) + c + t.note.slice(i + 1);
    assert.throws(() => v.openNote(changed, [verifier]), { code: 'BAD_NOTE_SIGNATURE' }, `changed at ${i}`);
  }
  // The signature line: another key id, or another key name, is an unknown signer.
  const otherName = t.note.replace('\u2014 example.com/foo ', '\u2014 example.com/bar ');
  assert.throws(() => v.openNote(otherName, [verifier]), { code: 'UNKNOWN_NOTE_SIGNER' });
  // A verifier key whose hash does not match its key is refused.
  assert.throws(() => v.parseVerifierKey(t.verifier_key.replace('+530d903a+', '+530d903b+')), { code: 'BAD_NOTE_KEY' });
});

test('AITBC v1 sample: canonical form, signature accepted, every changed field rejected', () => {
  const t = vector('aitbc_v1_receipt_sample.json');
  const key = hex(t.verify_key_hex);
  assert.equal(v.legacyCanonical(t.payload), t.canonical);
  const text = fs.readFileSync(path.join(VECTORS_DIR, 'aitbc_v1_receipt_sample.json'));
  const fromText = v.verifyLegacyReceipt(text, key);
  assert.equal(fromText.keyId, t.signature.key_id);
  assert.deepEqual(fromText.payload, t.payload);
  assert.deepEqual(v.verifyLegacyReceipt({ payload: t.payload, signature: t.signature }, [key]).payload, t.payload);
  // Nulls are dropped from the canonical form, so an added null field changes nothing.
  v.verifyLegacyReceipt({ payload: { ...t.payload, extra: null }, signature: t.signature }, key);

  for (const field of Object.keys(t.payload)) {
    const value = t.payload[field];
    const changed = typeof value === 'number' ? value + 1 : `${value}x`;
    assert.throws(
      () => v.verifyLegacyReceipt({ payload: { ...t.payload, [field]: changed }, signature: t.signature }, key),
      { code: 'BAD_SIGNATURE' },
      `changed ${field}`,
    );
    const without = { ...t.payload };
    delete without[field];
    assert.throws(() => v.verifyLegacyReceipt({ payload: without, signature: t.signature }, key), { code: 'BAD_SIGNATURE' }, `removed ${field}`);
  }
  // A float written as an integer is another payload in Python's eyes (12345 vs 12345.0).
  const asFloat = text.toString('utf8').replace('"chain_id": 12345', '"chain_id": 12345.0');
  assert.notEqual(asFloat, text.toString('utf8'));
  assert.throws(() => v.verifyLegacyReceipt(asFloat, key), { code: 'BAD_SIGNATURE' });
  // The signature binds the key: another trusted key, or a wrong algorithm, does not verify.
  const other = crypto.generateKeyPairSync('ed25519').publicKey;
  assert.throws(() => v.verifyLegacyReceipt({ payload: t.payload, signature: t.signature }, v.rawFromPublicKey(other)), { code: 'UNKNOWN_KEY' });
  assert.throws(() => v.verifyLegacyReceipt({ payload: t.payload, signature: { ...t.signature, alg: 'EdDSA' } }, key), { code: 'UNSUPPORTED_ALG' });
  // The coordinator keys of a key set are trusted keys too.
  const keySet = v.loadKeySet({ keys: [{ key_id: v.keyId(key), role: 'coordinator', status: 'active', public_key: t.verify_key_hex, valid_from: '2020-01-01T00:00:00Z' }] });
  v.verifyLegacyReceipt(text, keySet);
});
