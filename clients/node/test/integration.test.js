'use strict';
/**
 * End to end against a REAL coordinator and a REAL Python miner, both child processes: submit a job,
 * watch it complete, fetch its receipt and the signing keys, and verify the bundle in JavaScript, offline.
 *
 * The Python side is taken from AITBC_VENV_BIN (default <repo>/.venv/bin). When its commands are not
 * installed yet the test is skipped, and says why; set AITBC_REQUIRE_INTEGRATION=1 to make that a failure.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { CoordinatorClient, verifyReceiptResponse, receiptToBundle } = require('../src/client');
const v = require('../src/verify');
const { freePort, start, stop, failOnExit } = require('../testing/processes');
const { unavailable, waitServing, COORDINATOR, AITBC } = require('../testing/coordinator');

const reason = unavailable();
const skip = reason && process.env.AITBC_REQUIRE_INTEGRATION !== '1' ? reason : false;

/** Watches a job to its end (a stream cut on the way is resumed by the client). */
async function watchToEnd(t, client, jobId, seen = []) {
  return client.watchJob(jobId, (j) => seen.push(j.state), { timeoutMs: 90000 });
}

const sha256hex = (b) => crypto.createHash('sha256').update(b).digest('hex');
/** PKCS#8 DER prefix of an Ed25519 private key (RFC 8410): the 32-byte seed follows. */
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

test('real coordinator and miner: a job completes and its receipt verifies in JavaScript', { skip, timeout: 180000 }, async (t) => {
  if (reason) assert.fail(reason); // only reached with AITBC_REQUIRE_INTEGRATION=1
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'aitbc-node-it-'));
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const procs = [];
  t.after(async () => {
    await Promise.all(procs.map((p) => stop(p)));
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  // cwd is the temporary directory, so no developer's .env is picked up.
  const env = { ...process.env, CLIENT_API_KEYS: 'alice:client-key-1,carol:client-key-3;hmac=carol-hmac-secret-0001', MINER_API_KEYS: 'm1:miner-key-1', ADMIN_API_KEYS: 'ops:admin-key-1' };
  const coordinator = start('coordinator', COORDINATOR, ['serve', '--host', '127.0.0.1', '--port', String(port), '--database', `sqlite:///${tmp}/c.db`], { cwd: tmp, env });
  procs.push(coordinator);
  const client = new CoordinatorClient(address, { apiKey: 'client-key-1' });
  t.after(() => client.close());
  const alive = (promise, ...ps) => Promise.race([promise, ...ps.map(failOnExit)]);

  await waitServing(client, coordinator, 60000);
  const miner = start('miner', AITBC, ['miner', 'run', '--address', address, '--api-key', 'miner-key-1', '--runner', 'echo'], { cwd: tmp, env: process.env });
  procs.push(miner);

  try {
    // One job, start to finish.
    const job = await client.submitJob({ prompt: 'hello' });
    assert.equal(job.created, true);
    assert.equal(job.client_id, 'alice');
    assert.deepEqual(job.payload_json, { prompt: 'hello' });
    const seen = [];
    const done = await alive(watchToEnd(t, client, job.job_id, seen), coordinator, miner);
    assert.equal(done.state, 'JOB_STATE_COMPLETED', `states seen: ${seen.join(' ')}`);
    assert.equal(done.miner_id, 'm1');
    const { result } = await client.getJobResult(job.job_id);
    assert.deepEqual(result.result_json, { prompt: 'hello' }); // the echo runner

    // Keys and receipt; the key set goes through its JSON text, as a verifier would store it.
    const keySetJson = await client.getSigningKeys();
    const keySet = v.loadKeySet(JSON.stringify(keySetJson));
    assert.ok(keySet.withRole('coordinator').length >= 1, 'a coordinator key');
    assert.ok(keySet.withRole('log').length >= 1, 'a log key');
    const receipt = await client.getReceipt(job.job_id);
    assert.ok(Buffer.isBuffer(receipt.envelope));
    const minerKeyed = keySet.withRole('miner').some((k) => k.owner === 'm1');
    const policy = { roles: minerKeyed ? ['coordinator', 'miner'] : ['coordinator'] };
    const verified = verifyReceiptResponse(receipt, keySet, { policy });
    assert.ok(verified.roles.includes('coordinator'));
    t.diagnostic(`verified roles ${verified.roles.join(',')} at leaf ${receipt.leafIndex} of ${receipt.checkpoint.tree_size}`);
    assert.equal(verified.payload.job_id, job.job_id);
    assert.equal(verified.payload.client, 'alice');
    assert.equal(verified.payload.provider, 'm1');
    assert.equal(verified.payload.receipt_id, result.receipt_id);
    assert.equal(verified.payload.result_sha256, Buffer.from(result.result_sha256).toString('hex'));
    assert.equal(verified.payload.result_sha256, sha256hex('{"prompt":"hello"}'));
    assert.equal(verified.payload.result_sha256, sha256hex(v.canonicalStruct(result.result_json)));
    assert.equal(verified.payload.input_sha256, sha256hex(v.canonicalStruct(job.payload_json)));
    assert.equal(verified.checkpoint.origin, receipt.checkpoint.origin);
    assert.equal(verified.checkpoint.treeSize, BigInt(receipt.checkpoint.tree_size));
    assert.ok(verified.checkpoint.rootHash.equals(receipt.checkpoint.root_hash));
    assert.ok(verified.checkpoint.keyIds.length >= 1);
    // The bundle written as JSON text verifies the same way.
    v.verifyBundle(JSON.stringify(receiptToBundle(receipt)), keySet, { policy });

    // Tampering: a changed payload field, a flipped signature byte, a wrong proof.
    const env = JSON.parse(receipt.envelope.toString('utf8'));
    const payload = Buffer.from(env.payload, 'base64').toString('utf8').replace('"client":"alice"', '"client":"mallory"');
    assert.notEqual(payload, Buffer.from(env.payload, 'base64').toString('utf8'));
    const forged = Buffer.from(JSON.stringify({ ...env, payload: Buffer.from(payload).toString('base64') }));
    assert.throws(() => verifyReceiptResponse({ ...receipt, envelope: forged }, keySet), { code: 'BAD_SIGNATURE' });
    const sig = Buffer.from(env.signatures[0].sig, 'base64');
    sig[0] ^= 0x80;
    const badSig = Buffer.from(JSON.stringify({ ...env, signatures: [{ ...env.signatures[0], sig: sig.toString('base64') }, ...env.signatures.slice(1)] }));
    assert.throws(() => verifyReceiptResponse({ ...receipt, envelope: badSig }, keySet), { code: 'BAD_SIGNATURE' });
    const flipped = Buffer.from(receipt.envelope);
    flipped[flipped.length - 3] ^= 0x01; // inside the last signature's base64: no longer the logged leaf
    assert.throws(() => verifyReceiptResponse({ ...receipt, envelope: flipped }, keySet));
    const wrongIndex = { ...receipt, leafIndex: String(Number(receipt.leafIndex) + 1) };
    assert.throws(() => verifyReceiptResponse(wrongIndex, keySet), { code: 'BAD_PROOF' });

    // A second job grows the log; the newer checkpoint must extend the one we verified against.
    const second = await client.submitJob({ prompt: 'again' });
    const done2 = await alive(watchToEnd(t, client, second.job_id), coordinator, miner);
    assert.equal(done2.state, 'JOB_STATE_COMPLETED');
    const receipt2 = await client.getReceipt(second.job_id);
    const older = receipt.checkpoint;
    const proof = await client.getConsistencyProof(older.tree_size, receipt2.checkpoint.tree_size);
    assert.ok(BigInt(receipt2.checkpoint.tree_size) > BigInt(older.tree_size));
    verifyReceiptResponse(receipt2, keySet, { policy, previous: { checkpoint: older.note, consistencyProof: proof.hashes } });
    if (proof.hashes.length) {
      const bent = proof.hashes.map((h, i) => (i === 0 ? Buffer.alloc(32, 1) : h));
      assert.throws(() => verifyReceiptResponse(receipt2, keySet, { policy, previous: { checkpoint: older.note, consistencyProof: bent } }), { code: 'BAD_PROOF' });
    }

    // A key that signs its calls (HMAC): every call signed over the bytes it sends, WatchJob included;
    // an unsigned call, or one signed with another secret, is refused.
    const carol = new CoordinatorClient(address, { apiKey: 'client-key-3', hmacSecret: 'carol-hmac-secret-0001' });
    const unsigned = new CoordinatorClient(address, { apiKey: 'client-key-3' });
    const wrongSecret = new CoordinatorClient(address, { apiKey: 'client-key-3', hmacSecret: 'not-the-secret-of-carol' });
    t.after(() => [carol, unsigned, wrongSecret].forEach((c) => c.close()));
    const signedJob = await carol.submitJob({ prompt: 'signed call' });
    assert.equal(signedJob.client_id, 'carol');
    const signedDone = await alive(watchToEnd(t, carol, signedJob.job_id), coordinator, miner);
    assert.equal(signedDone.state, 'JOB_STATE_COMPLETED');
    assert.deepEqual((await carol.getJobResult(signedJob.job_id)).result.result_json, { prompt: 'signed call' });
    await assert.rejects(unsigned.getJob(signedJob.job_id), (err) => err.code === 16 && /signs its calls/.test(err.details));
    await assert.rejects(wrongSecret.getJob(signedJob.job_id), (err) => err.code === 16 && /does not match/.test(err.details));

    // The miner again, now with a receipt key (the same command plus --signing-key-hex): the miner signs
    // its report in Python, the receipt carries it, and the miner role verifies here.
    await stop(miner);
    const seed = crypto.randomBytes(32);
    const minerKey = crypto.createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' });
    const minerKeyId = v.keyId(v.rawFromPublicKey(crypto.createPublicKey(minerKey)));
    const signing = start('miner (signing)', AITBC, ['miner', 'run', '--address', address, '--api-key', 'miner-key-1', '--runner', 'echo', '--signing-key-hex', seed.toString('hex')], { cwd: tmp, env: process.env });
    procs.push(signing);
    const third = await client.submitJob({ prompt: 'signed' });
    const done3 = await alive(watchToEnd(t, client, third.job_id), coordinator, signing);
    assert.equal(done3.state, 'JOB_STATE_COMPLETED');
    assert.equal(client.streams.size, 0, 'finished watches are closed');
    const keys3 = v.loadKeySet(JSON.stringify(await client.getSigningKeys()));
    assert.deepEqual(keys3.entries(minerKeyId).map((k) => [k.role, k.owner]), [['miner', 'm1']]);
    const receipt3 = await client.getReceipt(third.job_id);
    const withMiner = verifyReceiptResponse(receipt3, keys3, { policy: { roles: ['coordinator', 'miner'] } });
    assert.deepEqual(withMiner.roles, ['coordinator', 'miner']);
    assert.ok(withMiner.keyIds.includes(minerKeyId));
    // A receipt without a miner report does not satisfy the miner role.
    assert.throws(() => verifyReceiptResponse(receipt, keys3, { policy: { roles: ['coordinator', 'miner'] } }), { code: 'MISSING_SIGNATURE' });
  } catch (err) {
    for (const p of procs) {
      t.diagnostic(`--- ${p.name} output ---`);
      for (const line of p.output().split('\n')) t.diagnostic(line);
    }
    throw err;
  }
});
