'use strict';
/**
 * Tampering cases built in JavaScript: every case starts from a receipt that verifies (checked first), then
 * changes one thing and expects the rule that guards it to fail, by its error code.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const v = require('../src/verify');
const issuer = require('../testing/issuer');
const { mth, inclusionPath, consistencyProof } = require('../testing/tree');

/** A scene plus one receipt signed by the given keys and appended to the log; returns its bundle. */
function issue({ signers, fields = {}, scene = issuer.scene(), bytes } = {}) {
  const p = issuer.payload(fields);
  const body = bytes ?? issuer.payloadBytes(p);
  const env = issuer.envelope(body, signers ? signers(scene.keys) : [{ key: scene.keys.coordinator }]);
  const index = scene.log.append(env);
  for (let i = 0; i < 3; i++) scene.log.append(Buffer.from(`later receipt ${i}`));
  return { ...scene, payload: p, env, index, bundle: scene.log.bundle(index), keySet: v.loadKeySet(scene.keySetJson) };
}

/** The bundle with its envelope replaced (and the proof left as it was). */
function withEnvelope(bundle, env) {
  return { ...bundle, envelope: Buffer.from(env).toString('base64') };
}

/** Envelope JSON of a bundle, as an object to edit. */
function envelopeOf(bundle) {
  return JSON.parse(Buffer.from(bundle.envelope, 'base64').toString('utf8'));
}

function reencode(obj) {
  return Buffer.from(JSON.stringify(obj));
}

test('a well-formed receipt bundle verifies (the baseline of every case below)', () => {
  const s = issue();
  const r = v.verifyBundle(s.bundle, s.keySet);
  assert.deepEqual(r.roles, ['coordinator']);
  assert.deepEqual(r.keyIds, [s.keys.coordinator.keyId]);
  assert.equal(r.payload.job_id, s.payload.job_id);
  assert.equal(r.checkpoint.treeSize, BigInt(s.log.leaves.length));
  assert.deepEqual(r.checkpoint.keyIds, [s.keys.log.keyId]);
  // The same bundle as JSON text (what `aitbc receipts get` writes).
  v.verifyBundle(JSON.stringify(s.bundle), s.keySet);
});

test('changed payload rejects', () => {
  const s = issue();
  const env = envelopeOf(s.bundle);
  const changed = issuer.payloadBytes({ ...s.payload, units: '100' });
  env.payload = changed.toString('base64');
  assert.throws(() => v.verifyBundle(withEnvelope(s.bundle, reencode(env)), s.keySet), { code: 'BAD_SIGNATURE' });
  // And a changed envelope is another leaf: even with a good signature the inclusion proof fails.
  const s2 = issue();
  const fresh = issuer.envelope(changed, [{ key: s2.keys.coordinator }]);
  assert.throws(() => v.verifyBundle(withEnvelope(s2.bundle, fresh), s2.keySet), { code: 'BAD_PROOF' });
});

test('changed payload type rejects, and a signature over another type does not count', () => {
  const s = issue();
  const env = envelopeOf(s.bundle);
  env.payloadType = 'application/vnd.aitbc.receipt.v2+json';
  assert.throws(() => v.verifyReceiptEnvelope(reencode(env), s.keySet), { code: 'WRONG_PAYLOAD_TYPE' });
  const other = issuer.envelope(issuer.payloadBytes(s.payload), [{ key: s.keys.coordinator }], { signedType: 'application/json' });
  assert.throws(() => v.verifyReceiptEnvelope(other, s.keySet), { code: 'BAD_SIGNATURE' });
});

test('changed signature rejects; a non-canonical base64 spelling of it too', () => {
  const s = issue();
  const env = envelopeOf(s.bundle);
  const sig = Buffer.from(env.signatures[0].sig, 'base64');
  sig[40] ^= 0x01;
  env.signatures[0].sig = sig.toString('base64');
  assert.throws(() => v.verifyReceiptEnvelope(reencode(env), s.keySet), { code: 'BAD_SIGNATURE' });
  const good = envelopeOf(s.bundle);
  good.signatures[0].sig = good.signatures[0].sig.replace(/==$/, '');
  assert.throws(() => v.verifyReceiptEnvelope(reencode(good), s.keySet), { code: 'BAD_ENCODING' });
});

test('wrong key: a key outside the key set satisfies nothing, and cannot borrow a known key id', () => {
  const s = issuer.scene();
  const stranger = issuer.newKey('coordinator');
  const body = issuer.payloadBytes(issuer.payload());
  const keySet = v.loadKeySet(s.keySetJson);
  // Under its own key id: unknown, ignored, so the coordinator role is missing.
  const own = issuer.envelope(body, [{ key: stranger }]);
  assert.throws(() => v.verifyReceiptEnvelope(own, keySet), { code: 'MISSING_SIGNATURE' });
  // Under the coordinator's key id: checked against the coordinator key, and fails.
  const borrowed = issuer.envelope(body, [{ key: stranger, keyid: s.keys.coordinator.keyId }]);
  assert.throws(() => v.verifyReceiptEnvelope(borrowed, keySet), { code: 'BAD_SIGNATURE' });
  // Unknown signers are ignored, not fatal, next to a good one.
  const r = v.verifyReceiptEnvelope(issuer.envelope(body, [{ key: stranger }, { key: s.keys.coordinator }]), keySet);
  assert.deepEqual(r.keyIds, [s.keys.coordinator.keyId]);
  // A known key's bad signature rejects even next to a good one (as the Python verifier rules).
  const withBad = issuer.envelope(body, [{ key: s.keys.coordinator }, { key: stranger, keyid: s.keys.attestation.keyId }]);
  assert.throws(() => v.verifyReceiptEnvelope(withBad, keySet), { code: 'BAD_SIGNATURE' });
});

test('key id pointing to the wrong key: an entry whose key_id is not its key\'s thumbprint rejects on use', () => {
  const s = issuer.scene();
  const body = issuer.payloadBytes(issuer.payload());
  // The coordinator's key id, but the attestation key's bytes: a signature by either key is refused.
  const swapped = structuredClone(s.keySetJson);
  swapped.keys[0].public_key = s.keys.attestation.entry.public_key;
  const keySet = v.loadKeySet(swapped);
  for (const key of [s.keys.coordinator, s.keys.attestation]) {
    const env = issuer.envelope(body, [{ key, keyid: s.keys.coordinator.keyId }]);
    assert.throws(() => v.verifyReceiptEnvelope(env, keySet), { code: 'KEY_ID_MISMATCH' });
  }
  // Receipts that do not use the bad entry are unaffected.
  v.verifyReceiptEnvelope(issuer.envelope(body, [{ key: s.keys.attestation }]), keySet, { roles: ['attestation'] });
  // A signature filed under another key's id is checked against that key, and fails.
  const misfiled = issuer.envelope(body, [{ key: s.keys.coordinator, keyid: s.keys.attestation.keyId }]);
  assert.throws(() => v.verifyReceiptEnvelope(misfiled, v.loadKeySet(s.keySetJson)), { code: 'BAD_SIGNATURE' });
});

test('key set JSON: missing, unknown and mistyped fields reject the set', () => {
  const s = issuer.scene();
  const edit = (f) => {
    const ks = structuredClone(s.keySetJson);
    f(ks.keys[0]);
    return ks;
  };
  v.loadKeySet(JSON.stringify(s.keySetJson));
  for (const [name, ks] of Object.entries({
    'no role': edit((k) => delete k.role),
    'unknown field': edit((k) => (k.comment = 'x')),
    'number time': edit((k) => (k.valid_from = 0)),
    'bad role': edit((k) => (k.role = 'admin')),
    'short key': edit((k) => (k.public_key = k.public_key.slice(2))),
    'bad time': edit((k) => (k.valid_from = '2020-02-30T00:00:00Z')),
  })) {
    assert.throws(() => v.loadKeySet(ks), { code: /BAD_KEY_SET|BAD_ENCODING|BAD_TIME/ }, name);
  }
});

test('two roles required: one present rejects, both present verifies', () => {
  const policy = { roles: ['coordinator', 'attestation'] };
  const one = issue();
  assert.throws(() => v.verifyBundle(one.bundle, one.keySet, { policy }), { code: 'MISSING_SIGNATURE', message: /attestation/ });
  const both = issue({ signers: (k) => [{ key: k.coordinator }, { key: k.attestation }] });
  const r = v.verifyBundle(both.bundle, both.keySet, { policy });
  assert.deepEqual(r.roles, ['attestation', 'coordinator']);
  assert.throws(() => v.verifyBundle(both.bundle, both.keySet, { policy: { roles: ['log'] } }), TypeError);
});

test('the same key twice counts once: one key listed under two roles cannot satisfy both', () => {
  const s = issuer.scene();
  // The key set lists the coordinator key a second time, as the attestation key.
  s.keySetJson.keys.push({ ...s.keys.coordinator.entry, role: 'attestation' });
  const policy = { roles: ['coordinator', 'attestation'] };
  const twice = issue({ scene: s, signers: (k) => [{ key: k.coordinator }, { key: k.coordinator }] });
  assert.deepEqual(v.verifyBundle(twice.bundle, twice.keySet).roles, ['attestation', 'coordinator']);
  assert.throws(() => v.verifyBundle(twice.bundle, twice.keySet, { policy }), { code: 'SAME_KEY_TWO_ROLES' });
  // With the real attestation key next to it, each role has its own key.
  const s2 = issuer.scene();
  s2.keySetJson.keys.push({ ...s2.keys.coordinator.entry, role: 'attestation' });
  const two = issue({ scene: s2, signers: (k) => [{ key: k.coordinator }, { key: k.attestation }] });
  v.verifyBundle(two.bundle, two.keySet, { policy });
});

test('validity window: a key counts only for receipts issued inside it', () => {
  const issuedAt = issuer.payload().issued_at; // 2026-11-26T22:46:59.223456Z
  const cases = [
    [{ validFrom: '2026-11-26T22:46:59.223457Z' }, 'KEY_NOT_VALID'], // one microsecond too late
    [{ validFrom: '2020-01-01T00:00:00Z', validUntil: '2026-11-26T22:46:59.223455Z', status: 'retired' }, 'KEY_NOT_VALID'],
    [{ validFrom: issuedAt }, null], // bounds included
    [{ validFrom: '2020-01-01T00:00:00Z', validUntil: issuedAt, status: 'retired' }, null],
    [{ validFrom: '2026-11-26T23:46:59.223456+01:00' }, null], // same instant, another offset
  ];
  for (const [window, code] of cases) {
    const key = issuer.newKey('coordinator', window);
    const keySet = v.loadKeySet({ keys: [key.entry] });
    const env = issuer.envelope(issuer.payloadBytes(issuer.payload()), [{ key }]);
    if (code) assert.throws(() => v.verifyReceiptEnvelope(env, keySet), { code }, JSON.stringify(window));
    else v.verifyReceiptEnvelope(env, keySet);
  }
});

test('duplicate JSON keys reject: in the payload, the envelope, the key set and the bundle', () => {
  const s = issuer.scene();
  const keySet = v.loadKeySet(s.keySetJson);
  const canonical = issuer.payloadBytes(issuer.payload()).toString('utf8');
  // A payload with "client" twice, properly signed: JSON.parse would silently keep the second.
  const dupPayload = Buffer.from(canonical.replace('"client":"alice"', '"client":"alice","client":"mallory"'));
  assert.throws(() => v.verifyReceiptEnvelope(issuer.envelope(dupPayload, [{ key: s.keys.coordinator }]), keySet), { code: 'DUPLICATE_KEY' });
  // Escaped spelling of the same key is the same key.
  const escaped = Buffer.from(canonical.replace('"nonce":', '"nonce":"00000000000000000000000000000000","n\\u006fnce":'));
  assert.throws(() => v.verifyReceiptEnvelope(issuer.envelope(escaped, [{ key: s.keys.coordinator }]), keySet), { code: 'DUPLICATE_KEY' });
  // Envelope with two payloads.
  const env = issuer.envelope(Buffer.from(canonical), [{ key: s.keys.coordinator }]).toString('utf8');
  const dupEnv = env.replace('{"payload":', '{"payload":"e30=","payload":');
  assert.throws(() => v.verifyReceiptEnvelope(dupEnv, keySet), { code: 'DUPLICATE_KEY' });
  v.verifyReceiptEnvelope(env, keySet);
  // Key set and bundle text.
  const ks = JSON.stringify(s.keySetJson).replace('"role":"coordinator"', '"role":"log","role":"coordinator"');
  assert.throws(() => v.loadKeySet(ks), { code: 'DUPLICATE_KEY' });
  const b = issue();
  const text = JSON.stringify(b.bundle).replace('"leaf_index":', '"leaf_index":0,"leaf_index":');
  assert.throws(() => v.verifyBundle(text, b.keySet), { code: 'DUPLICATE_KEY' });
});

test('a payload that is not canonical or not complete rejects, even when signed', () => {
  const s = issuer.scene();
  const keySet = v.loadKeySet(s.keySetJson);
  const signed = (bytes) => issuer.envelope(Buffer.from(bytes), [{ key: s.keys.coordinator }]);
  const p = issuer.payload();
  assert.throws(() => v.verifyReceiptEnvelope(signed(JSON.stringify(p, null, 1)), keySet), { code: 'NOT_CANONICAL' });
  assert.throws(() => v.verifyReceiptEnvelope(signed(JSON.stringify(p)), keySet), { code: 'NOT_CANONICAL' }); // unsorted
  const withFloat = issuer.payloadBytes(p).toString().replace('"attempt":1', '"attempt":1.5');
  assert.throws(() => v.verifyReceiptEnvelope(signed(withFloat), keySet), { code: 'NOT_CANONICAL' });
  const withNull = issuer.payloadBytes(p).toString().replace('"attempt":1', '"attempt":1,"b":null');
  assert.throws(() => v.verifyReceiptEnvelope(signed(withNull), keySet), { code: 'NOT_CANONICAL' });
  assert.throws(() => v.verifyReceiptEnvelope(signed(issuer.payloadBytes(issuer.payload({ cost: undefined }))), keySet), { code: 'BAD_RECEIPT' });
  assert.throws(() => v.verifyReceiptEnvelope(signed(issuer.payloadBytes(issuer.payload({ units: 1.9 }))), keySet), { code: 'NOT_CANONICAL' });
  assert.throws(() => v.verifyReceiptEnvelope(signed(issuer.payloadBytes(issuer.payload({ artifact_hash: `sha256:${'0'.repeat(64)}` }))), keySet), { code: 'BAD_RECEIPT' });
});

test('miner report: verifies for the miner role, and every forgery rejects', () => {
  const s = issuer.scene();
  const keySet = v.loadKeySet(s.keySetJson);
  const base = issuer.payload();
  const signed = (p) => issuer.envelope(issuer.payloadBytes(p), [{ key: s.keys.coordinator }]);
  const policy = { roles: ['coordinator', 'miner'] };
  const good = { ...base, ...issuer.minerFields(base, s.keys.miner) };
  const r = v.verifyReceiptEnvelope(signed(good), keySet, policy);
  assert.deepEqual(r.roles, ['coordinator', 'miner']);
  assert.deepEqual(r.keyIds, [s.keys.coordinator.keyId, s.keys.miner.keyId]);
  // No report at all: the miner role is missing.
  assert.throws(() => v.verifyReceiptEnvelope(signed(base), keySet, policy), { code: 'MISSING_SIGNATURE', message: /miner/ });
  // The report says other units than the receipt.
  const lying = { ...base, ...issuer.minerFields(base, s.keys.miner, { units: '99' }) };
  assert.throws(() => v.verifyReceiptEnvelope(signed(lying), keySet), { code: 'BAD_MINER_REPORT' });
  // A miner key owned by someone else than the provider.
  const otherMiner = issuer.newKey('miner', { owner: 'm2' });
  const ks2 = v.loadKeySet({ keys: [...s.keySetJson.keys, otherMiner.entry] });
  const foreign = { ...base, ...issuer.minerFields(base, otherMiner) };
  assert.throws(() => v.verifyReceiptEnvelope(signed(foreign), ks2, policy), { code: 'MINER_NOT_PROVIDER' });
  v.verifyReceiptEnvelope(signed(foreign), ks2); // not asked for: the coordinator's word stands
  // The report signature by a key other than the one named.
  const forged = { ...base, ...issuer.minerFields(base, otherMiner) };
  forged.miner_signature = { ...forged.miner_signature, keyid: s.keys.miner.keyId };
  assert.throws(() => v.verifyReceiptEnvelope(signed(forged), keySet), { code: 'BAD_MINER_SIGNATURE' });
  // Report without signature.
  const half = { ...good };
  delete half.miner_signature;
  assert.throws(() => v.verifyReceiptEnvelope(signed(half), keySet), { code: 'BAD_MINER_REPORT' });
});

test('inclusion proof: truncated, extended, wrong index and wrong size reject', () => {
  const s = issue();
  const b = s.bundle;
  assert.ok(b.inclusion_proof.hashes.length >= 3);
  const variants = {
    truncated: [{ ...b, inclusion_proof: { ...b.inclusion_proof, hashes: b.inclusion_proof.hashes.slice(0, -1) } }, /too short/],
    extended: [{ ...b, inclusion_proof: { ...b.inclusion_proof, hashes: [...b.inclusion_proof.hashes, b.inclusion_proof.hashes[0]] } }, /too long/],
    'wrong index': [{ ...b, leaf_index: b.leaf_index + 1 }, /root/],
    'index past the end': [{ ...b, leaf_index: s.log.leaves.length }, /not below tree size/],
    'wrong size': [{ ...b, inclusion_proof: { ...b.inclusion_proof, tree_size: b.inclusion_proof.tree_size - 1 } }, /checkpoint for/],
    'changed hash': [{ ...b, inclusion_proof: { ...b.inclusion_proof, hashes: ['00'.repeat(32), ...b.inclusion_proof.hashes.slice(1)] } }, /root/],
  };
  for (const [name, [bundle, message]] of Object.entries(variants)) {
    assert.throws(() => v.verifyBundle(bundle, s.keySet), { code: 'BAD_PROOF', message }, name);
  }
  // A proof for a smaller tree than the checkpoint's: size mismatch, even though the path is right for it.
  const smaller = { ...b, inclusion_proof: { tree_size: s.index + 1, hashes: s.log.inclusion(s.index, s.index + 1).map((h) => h.toString('hex')) } };
  assert.throws(() => v.verifyBundle(smaller, s.keySet), { code: 'BAD_PROOF' });
});

test('inclusion proofs agree with the RFC 9162 definition for every leaf of trees up to 33', () => {
  const leaves = Array.from({ length: 33 }, (_, i) => Buffer.from(`leaf ${i}`));
  for (let n = 1; n <= leaves.length; n++) {
    const tree = leaves.slice(0, n);
    const root = mth(tree);
    for (let i = 0; i < n; i++) {
      const path = inclusionPath(i, tree);
      v.verifyInclusion(i, n, v.leafHash(leaves[i]), path, root);
      if (n > 1) {
        assert.throws(() => v.verifyInclusion((i + 1) % n, n, v.leafHash(leaves[i]), path, root), { code: 'BAD_PROOF' });
      }
      // An index outside the claimed size, and a size that needs one more level, both fail. (A size with
      // the same path shape cannot be told apart by the proof alone: that is why the bundle's size must
      // equal the signed checkpoint's.)
      assert.throws(() => v.verifyInclusion(i, i, v.leafHash(leaves[i]), path, root), { code: 'BAD_PROOF' });
      assert.throws(() => v.verifyInclusion(i, 2 ** 40, v.leafHash(leaves[i]), path, root), { code: 'BAD_PROOF' });
    }
  }
  assert.throws(() => v.verifyInclusion(0, 0, v.leafHash(leaves[0]), [], v.EMPTY_ROOT), { code: 'BAD_PROOF' });
});

test('consistency proofs agree with the RFC 9162 definition; a forked log rejects', () => {
  const leaves = Array.from({ length: 20 }, (_, i) => Buffer.from(`leaf ${i}`));
  const forked = leaves.map((l, i) => (i === 2 ? Buffer.from('forged leaf') : l));
  for (let n = 1; n <= leaves.length; n++) {
    for (let m = 1; m <= n; m++) {
      const proof = consistencyProof(m, leaves.slice(0, n));
      v.verifyConsistency(m, n, mth(leaves.slice(0, m)), mth(leaves.slice(0, n)), proof);
      if (m > 2) {
        // The old tree held the forged leaf 2; the new one does not extend it.
        assert.throws(() => v.verifyConsistency(m, n, mth(forked.slice(0, m)), mth(leaves.slice(0, n)), proof), { code: 'BAD_PROOF' }, `${m}->${n}`);
      }
      if (m < n) {
        assert.throws(() => v.verifyConsistency(m, n, mth(leaves.slice(0, m)), mth(leaves.slice(0, n)), proof.slice(0, -1)), { code: 'BAD_PROOF', message: /too short|empty/ });
        assert.throws(() => v.verifyConsistency(m, n, mth(leaves.slice(0, m)), mth(leaves.slice(0, n)), [...proof, proof[0]]), { code: 'BAD_PROOF' });
      }
    }
  }
  assert.throws(() => v.verifyConsistency(5, 4, mth(leaves.slice(0, 5)), mth(leaves.slice(0, 4)), []), { code: 'BAD_PROOF' });
  // The empty tree is a prefix of every tree, but only with its own root and an empty proof.
  v.verifyConsistency(0, 7, v.EMPTY_ROOT, mth(leaves.slice(0, 7)), []);
  assert.throws(() => v.verifyConsistency(0, 7, mth(leaves.slice(0, 1)), mth(leaves.slice(0, 7)), []), { code: 'BAD_PROOF' });
  assert.throws(() => v.verifyConsistency(0, 7, v.EMPTY_ROOT, mth(leaves.slice(0, 7)), [v.EMPTY_ROOT]), { code: 'BAD_PROOF' });
});

test('bundle with an older checkpoint: an extension verifies, a fork rejects', () => {
  const s = issue();
  const older = s.log.checkpoint(3);
  const proof = s.log.consistency(3);
  v.verifyBundle(s.bundle, s.keySet, { previous: { checkpoint: older, consistencyProof: proof } });
  // The same log key signed a different tree of size 3 (a split view).
  const fork = new issuer.Log(s.origin, s.keys.log);
  for (const leaf of s.log.leaves.slice(0, 3)) fork.append(leaf);
  fork.leaves[1] = Buffer.from('rewritten history');
  const forkedOlder = fork.checkpoint(3);
  assert.throws(() => v.verifyBundle(s.bundle, s.keySet, { previous: { checkpoint: forkedOlder, consistencyProof: proof } }), { code: 'BAD_PROOF' });
});

test('verifier keys whose base64 holds a "+" parse (the name never does)', () => {
  let key;
  do key = issuer.newKey('log'); while (!v.formatVerifierKey('log.example/a', key.raw).split('+').slice(2).join('+').includes('+'));
  const vkey = v.formatVerifierKey('log.example/a', key.raw);
  assert.ok(v.parseVerifierKey(vkey).publicKey.equals(key.raw));
  const note = issuer.signNote('log.example/a\n1\n' + Buffer.alloc(32).toString('base64') + '\n', 'log.example/a', key);
  v.openNote(note, [v.parseVerifierKey(vkey)]);
});

test('checkpoint: signed by a log key of the set only, and its text must be exact', () => {
  const s = issue();
  const text = s.log.checkpointText();
  const stranger = issuer.newKey('log');
  const strangerNote = issuer.signNote(text, s.origin, stranger);
  assert.throws(() => v.verifyBundle({ ...s.bundle, checkpoint: strangerNote }, s.keySet), { code: 'UNKNOWN_NOTE_SIGNER' });
  // The coordinator key is in the set, but not as a log key.
  const coordNote = issuer.signNote(text, s.origin, s.keys.coordinator);
  assert.throws(() => v.verifyBundle({ ...s.bundle, checkpoint: coordNote }, s.keySet), { code: 'UNKNOWN_NOTE_SIGNER' });
  // The log key signing under another name than the origin.
  const renamed = issuer.signNote(text, 'another.log/name', s.keys.log);
  const ksNoVkey = structuredClone(s.keySetJson);
  delete ksNoVkey.keys.find((k) => k.role === 'log').note_verifier_key;
  assert.throws(() => v.verifyBundle({ ...s.bundle, checkpoint: renamed }, v.loadKeySet(ksNoVkey)), { code: 'UNKNOWN_NOTE_SIGNER' });
  // Without a published verifier key the log key is named by the origin, and verifies.
  v.verifyBundle(s.bundle, v.loadKeySet(ksNoVkey));
  // Another root under the right key: the proof no longer leads to it.
  const otherRoot = `${s.origin}\n${s.log.leaves.length}\n${Buffer.alloc(32, 7).toString('base64')}\n`;
  assert.throws(() => v.verifyBundle({ ...s.bundle, checkpoint: issuer.signNote(otherRoot, s.origin, s.keys.log) }, s.keySet), { code: 'BAD_PROOF' });
  // A changed size in a signed note fails the note signature.
  const bumped = s.bundle.checkpoint.replace(`\n${s.log.leaves.length}\n`, `\n${s.log.leaves.length + 1}\n`);
  assert.throws(() => v.verifyBundle({ ...s.bundle, checkpoint: bumped }, s.keySet), { code: 'BAD_NOTE_SIGNATURE' });
  // An extra line in the checkpoint text.
  const extra = issuer.signNote(`${text}extension\n`, s.origin, s.keys.log);
  assert.throws(() => v.verifyBundle({ ...s.bundle, checkpoint: extra }, s.keySet), { code: 'BAD_CHECKPOINT' });
  // A log key whose published verifier key holds another key is not used.
  const lying = structuredClone(s.keySetJson);
  lying.keys.find((k) => k.role === 'log').note_verifier_key = v.formatVerifierKey(s.origin, stranger.raw);
  assert.throws(() => v.verifyBundle(s.bundle, v.loadKeySet(lying)), { code: 'UNKNOWN_NOTE_SIGNER' });
  assert.throws(() => v.verifyBundle({ ...s.bundle, checkpoint: strangerNote }, v.loadKeySet(lying)), { code: 'UNKNOWN_NOTE_SIGNER' });
  // A known key's bad signature next to a good one rejects the note.
  const sigLine = (note) => note.slice(note.lastIndexOf('\n\n') + 2);
  const bent = Buffer.from(sigLine(s.bundle.checkpoint).split(' ')[2], 'base64');
  bent[10] ^= 1;
  const twoLines = `${s.bundle.checkpoint}\u2014 ${s.origin} ${bent.toString('base64')}\n`;
  assert.throws(() => v.verifyBundle({ ...s.bundle, checkpoint: twoLines }, s.keySet), { code: 'BAD_NOTE_SIGNATURE' });
  // A log key published under another name than the origin: its signature is no checkpoint signature.
  const elsewhere = structuredClone(s.keySetJson);
  elsewhere.keys.find((k) => k.role === 'log').note_verifier_key = v.formatVerifierKey('other.log/name', s.keys.log.raw);
  const otherNamed = issuer.signNote(text, 'other.log/name', s.keys.log);
  assert.throws(() => v.verifyBundle({ ...s.bundle, checkpoint: otherNamed }, v.loadKeySet(elsewhere)), { code: 'BAD_CHECKPOINT' });
  // Extra fields in a bundle, or upper-case hex, are not the bundle format.
  assert.throws(() => v.verifyBundle({ ...s.bundle, note: 'x' }, s.keySet), { code: 'BAD_BUNDLE' });
  const upper = { ...s.bundle, inclusion_proof: { ...s.bundle.inclusion_proof, hashes: s.bundle.inclusion_proof.hashes.map((h) => h.toUpperCase()) } };
  assert.throws(() => v.verifyBundle(upper, s.keySet), { code: 'BAD_BUNDLE' });
});

test('only canonical base64 is accepted: no missing padding, no stray bits, no other alphabet', () => {
  assert.deepEqual(v.decodeBase64('e30='), Buffer.from('{}'));
  for (const bad of ['e31=', 'e30', 'e30==', 'e3-=', ' e30=', 'e3\n0=']) {
    assert.throws(() => v.decodeBase64(bad), { code: 'BAD_ENCODING' }, bad);
  }
  assert.deepEqual(v.decodeBase64Url('e30'), Buffer.from('{}'));
  for (const bad of ['e31', 'e30=', 'e3+', 'e']) assert.throws(() => v.decodeBase64Url(bad), { code: 'BAD_ENCODING' }, bad);
  // In an envelope: the same payload bytes under a second spelling are refused.
  const s = issuer.scene();
  const env = JSON.parse(issuer.envelope(issuer.payloadBytes(issuer.payload()), [{ key: s.keys.coordinator }]));
  // The last character before the padding carries unused low bits; flip the lowest one.
  const data = env.payload.replace(/=+$/, '');
  assert.ok(data.length < env.payload.length, 'the payload length leaves padding');
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const stray = alphabet[alphabet.indexOf(data.at(-1)) ^ 1];
  const respelled = { ...env, payload: data.slice(0, -1) + stray + env.payload.slice(data.length) };
  assert.deepEqual(Buffer.from(respelled.payload, 'base64'), Buffer.from(env.payload, 'base64')); // same bytes
  assert.throws(() => v.verifyReceiptEnvelope(Buffer.from(JSON.stringify(respelled)), v.loadKeySet(s.keySetJson)), { code: 'BAD_ENCODING' });
});

test('Ed25519 scalar check: S must be below the group order L', () => {
  const le = (n) => {
    const b = Buffer.alloc(32);
    for (let i = 0; i < 32; i++, n >>= 8n) b[i] = Number(n & 0xffn);
    return b;
  };
  const { isCanonicalScalar, L } = require('../src/ed25519');
  assert.equal(isCanonicalScalar(le(L - 1n)), true);
  assert.equal(isCanonicalScalar(le(L)), false);
  assert.equal(isCanonicalScalar(le((1n << 256n) - 1n)), false);
});

test('legacy v1 numbers are written as Python writes them', () => {
  // Expected strings are Python 3's repr() (and so json.dumps) of the same floats.
  const { pythonFloatRepr } = require('../src/legacy');
  const cases = [[1e16, '1e+16'], [1.5e-5, '1.5e-05'], [0.0001, '0.0001'], [123, '123.0'], [1e15, '1000000000000000.0'],
    [-2.5, '-2.5'], [1 / 3, '0.3333333333333333'], [5e-324, '5e-324'], [1.7976931348623157e308, '1.7976931348623157e+308'], [-0, '-0.0']];
  for (const [x, expected] of cases) assert.equal(pythonFloatRepr(x), expected, String(x));
  // A plain JS number cannot say whether it was a float: integral ones are taken as Python ints.
  assert.equal(v.legacyCanonical(123), '123');
  assert.equal(v.legacyCanonical(4.2), '4.2');
  // Lexemes keep what a parsed object cannot: 2.0 is a float, 2 an int.
  const { JsonNumber } = require('../src/json');
  assert.equal(v.legacyCanonical(new JsonNumber('2.0')), '2.0');
  assert.equal(v.legacyCanonical(new JsonNumber('1E16')), '1e+16');
  assert.equal(v.legacyCanonical(new JsonNumber('-0')), '0');
  // As the v1 signer (aitbc_crypto's canonical_json): nulls dropped from objects and arrays at every depth,
  // keys sorted by code point, text with json.dumps' default ensure_ascii (lowercase \uXXXX, astral
  // characters as surrogate pairs, DEL escaped too).
  assert.equal(v.legacyCanonical({ b: null, a: { y: null, x: [null, 1.0, [null]] } }), '{"a":{"x":[1,[]]}}');
  assert.equal(v.legacyCanonical({ '\uff01': 'Zürich\x7f', 'é': '😀', z: '"\\\n\x1f' }),
    '{"z":"\\"\\\\\\n\\u001f","\\u00e9":"\\ud83d\\ude00","\\uff01":"Z\\u00fcrich\\u007f"}');
});

test('RFC 3339 times: offsets, precision, and impossible dates', () => {
  const t = v.parseRfc3339('2026-11-26T22:46:59.123456Z');
  assert.equal(v.parseRfc3339('2026-11-26T23:46:59.123456+01:00'), t);
  assert.equal(v.parseRfc3339('2026-11-26t22:46:59.123456789z'), t); // beyond microseconds: dropped
  assert.equal(v.parseRfc3339('2026-11-26T22:46:59Z'), t - 123456000n);
  assert.equal(v.formatRfc3339(1795733219, 123456000), '2026-11-26T22:46:59.123456Z');
  for (const bad of ['2026-02-29T00:00:00Z', '2026-01-01T24:00:00Z', '2026-01-01T10:60:00Z', '2026-01-01T10:00:60Z',
    '2026-01-01 10:00:00Z', '2026-01-01T10:00:00', '2026-01-01T10:00:00.Z', '2026-01-01T10:00:00.1234567890Z']) {
    assert.throws(() => v.parseRfc3339(bad), { code: 'BAD_TIME' }, bad);
  }
});

test('strict parser: what RFC 8259 forbids, and what JSON.parse lets through', () => {
  for (const bad of ['{"a":1,}', '[1,]', '01', '{"a":1}x', '\ufeff{}', '"\\ud800"', '{"a":"\u0001"}', "{'a':1}", 'NaN', '']) {
    assert.throws(() => v.parseStrict(bad), { code: 'BAD_JSON' }, JSON.stringify(bad));
  }
  assert.throws(() => v.parseStrict(Buffer.from([0x22, 0xc3, 0x28, 0x22])), { code: 'BAD_JSON' }); // invalid UTF-8
  assert.deepEqual(v.parseStrict('{"a":[1,{"b":"\\u00e9\\ud83d\\ude00"}],"c":-0.5e1}'), { a: [1, { b: 'é😀' }], c: -5 });
  const proto = v.parseStrict('{"__proto__":{"polluted":true}}');
  assert.equal(Object.getPrototypeOf(proto), Object.prototype);
  assert.equal(proto.polluted, undefined);
  // Code point order, not UTF-16 order: U+FFFD sorts before U+1F600 although its UTF-16 unit is larger.
  assert.equal(v.canonicalize({ '\u{1F600}': 1, '\uFFFD': 2 }), '{"\uFFFD":2,"\u{1F600}":1}');
});
