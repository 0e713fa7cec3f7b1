'use strict';
/**
 * Submits safe to retry by default (helper client-polish): a job submitted without an `idempotencyKey` gets
 * one of the client's (`auto-` and a UUIDv7) made once per call, so that a submit whose answer was lost is
 * made again, against a REAL coordinator through a TCP relay, and gives the ONE job (a keyless submit failed
 * at its first UNAVAILABLE, whether or not the job had been stored). RetryInfo delays are jittered upwards:
 * the clients one STORE_UNAVAILABLE answered (1 s) no longer all come back at the same instant.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const { CoordinatorClient, newIdempotencyKey, RETRY_INFO_JITTER } = require('../src/client');
const { Relay } = require('../testing/relay');
const { unavailable, startCoordinator } = require('../testing/coordinator');

const reason = unavailable();
const skip = reason && process.env.AITBC_REQUIRE_INTEGRATION !== '1' ? reason : false;
const GENERATED = /^auto-[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** A coordinator, a direct client and one through a relay (keys generated, the default); closed after t. */
async function setUp(t) {
  const coord = await startCoordinator(t, (address) => new CoordinatorClient(address, { apiKey: 'client-key-1' }));
  const relay = new Relay(coord.port);
  const relayPort = await relay.start();
  const direct = new CoordinatorClient(coord.address, { apiKey: 'client-key-1' });
  const through = new CoordinatorClient(`127.0.0.1:${relayPort}`, { apiKey: 'client-key-1', retry: { backoffMs: 50, backoffMaxMs: 200 } });
  t.after(async () => {
    direct.close();
    through.close();
    await relay.close();
  });
  await through.listJobs(); // the relayed connection is up
  const jobs = async () => (await direct.listJobs({ pageSize: 1000 })).jobs;
  return { relay, direct, through, jobs };
}

test('a submit without a key whose answer was lost is made again and gives the one job', { skip, timeout: 120000 }, async (t) => {
  if (reason) assert.fail(reason);
  const { relay, through, jobs } = await setUp(t);
  relay.arm(async () => (await jobs()).length === 1);
  const job = await through.submitJob({ n: 1 });
  assert.ok(relay.fired, 'the answer of the first try was lost');
  assert.deepEqual((await jobs()).map((j) => [j.job_id, j.idempotency_key]), [[job.job_id, job.idempotency_key]]);
  assert.match(job.idempotency_key, GENERATED);
  assert.equal(job.created, true, 'the job is this call\'s, though the repeat answered created: false');
  assert.equal((await through.getJob(job.job_id)).idempotency_key, job.idempotency_key, 'GetJob shows the key');
});

test('a batch without keys whose answer was lost is made again with a key per job', { skip, timeout: 120000 }, async (t) => {
  if (reason) assert.fail(reason);
  const { relay, through, jobs } = await setUp(t);
  relay.arm(async () => (await jobs()).length === 3);
  const entries = [{ payload: { n: 1 } }, { payload: { n: 1 } }, { payload: { n: 2 }, options: { idempotencyKey: 'k2' } }];
  const batch = await through.submitJobs(entries);
  assert.ok(relay.fired);
  assert.equal((await jobs()).length, 3, 'three jobs, not six');
  const keys = batch.map((j) => j.idempotency_key);
  assert.match(keys[0], GENERATED);
  assert.match(keys[1], GENERATED);
  assert.notEqual(keys[0], keys[1]);
  assert.equal(keys[2], 'k2');
  assert.deepEqual(batch.map((j) => j.created), [true, true, false], 'k2 was stored by the lost try: the server says so');
  assert.equal(entries[0].options, undefined, 'the caller\'s entries are left as given');
  const again = await through.submitJobs(entries.slice(0, 2)); // another call: new keys, new jobs
  assert.equal(new Set([...batch, ...again].map((j) => j.job_id)).size, 5);
});

test('generated keys are UUIDv7, time-ordered, distinct and within the coordinator\'s 128 characters', () => {
  const before = Date.now();
  const keys = Array.from({ length: 200 }, () => newIdempotencyKey());
  assert.ok(keys.every((k) => GENERATED.test(k) && k.length <= 128));
  assert.equal(new Set(keys).size, keys.length);
  const ms = keys.map((k) => parseInt(k.slice(5, 18).replace('-', ''), 16));
  assert.deepEqual(ms, [...ms].sort((a, b) => a - b));
  assert.ok(ms[0] >= before && ms.at(-1) <= Date.now());
});

test('RetryInfo delays are jittered up to a fifth, never shortened', () => {
  // a google.rpc.Status with RetryInfo 1 s, as the coordinator answers STORE_UNAVAILABLE
  const field = (n, value) => (typeof value === 'number' ? Buffer.from([n * 8, value])
    : Buffer.concat([Buffer.from([n * 8 + 2, value.length]), Buffer.from(value)]));
  const any = (type, body) => field(3, Buffer.concat([field(1, `type.googleapis.com/google.rpc.${type}`), field(2, body)]));
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', Buffer.concat([field(1, 14), any('RetryInfo', field(1, field(1, 1)))]));
  const err = { code: 14, details: 'the store is out', metadata };
  const client = new CoordinatorClient('127.0.0.1:9', { apiKey: 'k' });
  try {
    const pauses = Array.from({ length: 2000 }, () => client.retryPause(err, true, 1));
    assert.equal(RETRY_INFO_JITTER, 1.2);
    assert.ok(pauses.every((p) => p >= 1000 && p <= 1200), `out of [1000, 1200]: ${pauses.find((p) => p < 1000 || p > 1200)}`);
    // spread over the whole range (each fails with odds 0.9 ** 2000), not bunched (a tenth holds ~200)
    assert.ok(Math.min(...pauses) < 1020 && Math.max(...pauses) > 1180);
    const tenths = Array.from({ length: 10 }, (_, i) => pauses.filter((p) => p >= 1000 + 20 * i && p < 1020 + 20 * i).length);
    assert.ok(Math.max(...tenths) < 400, String(tenths));
  } finally {
    client.close();
  }
});
