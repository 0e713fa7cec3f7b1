'use strict';
/**
 * The client as an integrator meets it, held to its README and JSDoc (helper 141): values converted as the
 * contract wants them, options that would be ignored refused, errors with the fields the README names.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const grpc = require('@grpc/grpc-js');
const { CoordinatorClient, loadContract } = require('../src/client');
const { toStruct, fromStruct } = require('../src/struct');
const { freePort } = require('../testing/processes');
const { unavailable, startCoordinator } = require('../testing/coordinator');

const reason = unavailable();
const skip = reason && process.env.AITBC_REQUIRE_INTEGRATION !== '1' ? reason : false;

/** A client of a coordinator started for test t. */
async function liveClient(t) {
  const coord = await startCoordinator(t, (address) => new CoordinatorClient(address, { apiKey: 'client-key-1' }));
  const client = new CoordinatorClient(coord.address, { apiKey: 'client-key-1' });
  t.after(() => client.close());
  return client;
}

test('the client against a real coordinator', { skip, timeout: 180000 }, async (t) => {
  if (reason) assert.fail(reason); // only reached with AITBC_REQUIRE_INTEGRATION=1
  const client = await liveClient(t);

  await t.test('a fractional ttl rounding up to a whole second is sent as a valid Duration', async () => {
    // (was {seconds: 1, nanos: 1000000000}, which the coordinator refuses: INVALID_REQUEST)
    const job = await client.submitJob({ a: 1 }, { ttlSeconds: 1.9999999999, executionTimeoutSeconds: 2.9999999999 });
    assert.deepEqual(job.ttl, { seconds: '2', nanos: 0 });
    assert.deepEqual(job.execution_timeout, { seconds: '3', nanos: 0 });
    const half = await client.submitJob({ a: 1 }, { ttlSeconds: 1.5 });
    assert.deepEqual(half.ttl, { seconds: '1', nanos: 500000000 });
    await assert.rejects(client.submitJob({ a: 1 }, { ttlSeconds: 'ten' }), { name: 'TypeError', message: /ttlSeconds/ });
  });

  await t.test('listJobs refuses a state name the contract does not have (it listed every job, unfiltered)', async () => {
    const queued = await client.submitJob({ q: 1 });
    await assert.rejects(client.listJobs({ states: ['COMPLETED'] }), { name: 'TypeError', message: /COMPLETED.*JOB_STATE_COMPLETED/ });
    await assert.rejects(client.listJobs({ states: 'JOB_STATE_QUEUED' }), { name: 'TypeError', message: /array/ });
    const { jobs } = await client.listJobs({ states: ['JOB_STATE_COMPLETED'] });
    assert.ok(!jobs.some((j) => j.job_id === queued.job_id));
    const { jobs: byNumber } = await client.listJobs({ states: [1] }); // (enum numbers, as protobuf takes them)
    assert.ok(byNumber.some((j) => j.job_id === queued.job_id));
  });

  await t.test('constraints and submit options of unknown names are refused, not dropped', async () => {
    // camelCase constraints were dropped without a word: a job with no price cap, a quote over every miner
    await assert.rejects(client.submitJob({ a: 1 }, { constraints: { maxPrice: '0.1' } }),
      { name: 'TypeError', message: /unknown constraint maxPrice.*max_price/ });
    await assert.rejects(client.submitJobs([{ payload: { a: 1 }, options: { constraints: { minVramGb: 80 } } }]),
      { name: 'TypeError', message: /unknown constraint minVramGb/ });
    await assert.rejects(client.quoteCost({ maxPrice: '4' }, '1'), { name: 'TypeError', message: /unknown constraint maxPrice/ });
    // a misspelled option (as the Python SDK refuses, and the constructor does)
    await assert.rejects(client.submitJob({ a: 1 }, { ttl: 60 }), { name: 'TypeError', message: /unknown submit option ttl.*ttlSeconds/ });
    const job = await client.submitJob({ a: 1 }, { constraints: { max_price: '0.1', min_vram_gb: 8 }, maxAttempts: 2, metadata: { k: 'v' } });
    assert.equal(job.constraints.max_price, '0.1');
    assert.equal(job.constraints.min_vram_gb, 8);
    assert.equal((await client.quoteCost({ max_price: '4' }, '1')).eligible_miners, 0);
  });

  await t.test('a watch deadline error carries the README\'s error fields', async () => {
    const job = await client.submitJob({ w: 1 }); // no miner: stays QUEUED
    await assert.rejects(client.watchJob(job.job_id, undefined, { timeoutMs: 1500 }), (err) => {
      assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED);
      assert.equal(err.lastJob.state, 'JOB_STATE_QUEUED');
      assert.deepEqual([err.reason, err.violations, err.retryAfterMs, err.errorMetadata], ['', [], null, {}]);
      return true;
    });
  });

  await t.test('watchJob with its options in place of onUpdate fails at once, saying so', async () => {
    const job = await client.submitJob({ w: 2 });
    // (was "onUpdate is not a function" from the stream's listener, the timeoutMs given ignored)
    await assert.rejects(client.watchJob(job.job_id, { timeoutMs: 1000 }),
      { name: 'TypeError', message: /watchJob\(jobId, onUpdate, options\): onUpdate must be a function/ });
    assert.equal(client.streams.size, 0);
  });

  await t.test('a Date in a JSON payload goes as JSON.stringify writes it (it went as {})', async () => {
    const job = await client.submitJob({ when: new Date(0), list: [null, [1, { a: null }], {}] });
    const stored = await client.getJob(job.job_id);
    assert.deepEqual(stored.payload_json, { when: '1970-01-01T00:00:00.000Z', list: [null, [1, { a: null }], {}] });
  });
});

test('an error without google.rpc details has reason "", violations [], retryAfterMs null, errorMetadata {}', async () => {
  const port = await freePort(); // nothing listens there
  const client = new CoordinatorClient(`127.0.0.1:${port}`, { apiKey: 'k', timeoutMs: 1000 });
  try {
    await assert.rejects(client.checkHealth(), (err) => {
      assert.equal(err.code, grpc.status.UNAVAILABLE);
      // (were all undefined: `err.violations.length` threw, `err.retryAfterMs !== null` read as a delay)
      assert.deepEqual([err.reason, err.violations, err.retryAfterMs, err.errorMetadata], ['', [], null, {}]);
      return true;
    });
    // a call ended by close() while it waits to try again
    const waiting = client.getUsage();
    setTimeout(() => client.close(), 300);
    await assert.rejects(waiting, (err) => {
      assert.equal(err.code, grpc.status.CANCELLED);
      assert.deepEqual([err.reason, err.violations, err.retryAfterMs, err.errorMetadata], ['', [], null, {}]);
      return true;
    });
  } finally {
    client.close();
  }
});

test('retry options given as undefined keep their defaults (a NaN backoff retried in a busy loop)', () => {
  const client = new CoordinatorClient('127.0.0.1:9', { apiKey: 'k', retry: { attempts: undefined, backoffMs: undefined, backoffMaxMs: undefined } });
  try {
    const err = Object.assign(new Error('14 UNAVAILABLE: down'), { code: grpc.status.UNAVAILABLE, metadata: new grpc.Metadata() });
    const pause = client.retryPause(err, true, 1);
    assert.ok(pause >= 100 && pause <= 200, `paused ${pause} ms`);
    assert.deepEqual(client.retry, { attempts: Infinity, backoffMs: 200, backoffMaxMs: 5000 });
  } finally {
    client.close();
  }
});

test('Struct conversion: objects with toJSON as JSON.stringify writes them; Map, Set and binary refused', () => {
  const { SubmitJobRequest } = loadContract(); // (through the wire, decoded with the client's loader options)
  const roundTrip = (value) => fromStruct(SubmitJobRequest.deserialize(SubmitJobRequest.serialize({ payload: toStruct(value) })).payload);
  assert.deepEqual(roundTrip({ d: new Date(Date.UTC(1969, 11, 31)), n: [null, [null]], o: { p: null } }),
    { d: '1969-12-31T00:00:00.000Z', n: [null, [null]], o: { p: null } });
  assert.throws(() => toStruct({ m: new Map([['a', 1]]) }), { name: 'TypeError', message: /Map/ });
  assert.throws(() => toStruct({ s: new Set([1]) }), { name: 'TypeError', message: /Set/ });
  assert.throws(() => toStruct({ b: new Uint8Array([1]) }), { name: 'TypeError', message: /Uint8Array/ });
  assert.throws(() => toStruct({ b: [Buffer.from('x')] }), { name: 'TypeError', message: /Buffer/ });
  assert.throws(() => toStruct(new ArrayBuffer(2)), { name: 'TypeError', message: /a Struct is a JSON object/ });
});

test('priority and maxAttempts are integers, and submitJobs takes an array, refused before any call', async () => {
  // (priority 5.5 was sent as 5 without a word; submitJobs({...}) failed with "entries.map is not a function")
  const client = new CoordinatorClient('127.0.0.1:9', { apiKey: 'k', retry: { attempts: 1 } });
  try {
    await assert.rejects(client.submitJob({ a: 1 }, { priority: 5.5 }), { name: 'TypeError', message: /priority is an integer, not 5.5/ });
    await assert.rejects(client.submitJob({ a: 1 }, { maxAttempts: '3' }), { name: 'TypeError', message: /maxAttempts is an integer, not "3"/ });
    await assert.rejects(client.submitJobs({ payload: { a: 1 } }), { name: 'TypeError', message: /submitJobs takes an array/ });
  } finally {
    client.close();
  }
});

test('retry and keepalive settings no timer can take are refused when the client is made', () => {
  // (a NaN backoff retried in a busy loop; Infinity, or any delay past 2^31-1 ms, is a 1 ms timer in Node)
  for (const retry of [{ backoffMs: NaN }, { backoffMaxMs: Infinity }, { backoffMs: '200' }, { attempts: 0 }, { attempts: 1.5 }]) {
    assert.throws(() => new CoordinatorClient('127.0.0.1:9', { retry }), { name: 'RangeError', message: /retry\./ }, JSON.stringify(retry));
  }
  for (const keepalive of [{ timeMs: Infinity }, { timeoutMs: Infinity }, { timeMs: 2 ** 31 }]) {
    assert.throws(() => new CoordinatorClient('127.0.0.1:9', { keepalive }), RangeError, JSON.stringify(keepalive));
  }
  new CoordinatorClient('127.0.0.1:9', { retry: { attempts: Infinity, backoffMs: 1, backoffMaxMs: 2 ** 31 - 1 }, keepalive: { timeMs: 2 ** 31 - 1 } }).close();
});

test('priority and maxAttempts given as null are left unset, as undefined is (the Python SDK takes None)', async () => {
  // (refused as "not an integer" before any call): the call is made, and fails only on the closed port
  const client = new CoordinatorClient('127.0.0.1:9', { apiKey: 'k', timeoutMs: 2000, retry: { attempts: 1 } });
  try {
    await assert.rejects(client.submitJob({ a: 1 }, { priority: null, maxAttempts: null }), (err) => err.code === grpc.status.UNAVAILABLE);
  } finally {
    client.close();
  }
});

test('a watch that ends before its job is terminal fails with the empty detail fields too', async (t) => {
  // (that one error was built without them: err.violations.length threw a TypeError)
  const v1 = loadContract();
  const server = new grpc.Server();
  server.addService(v1.JobService.service, { WatchJob: (call) => call.end() }); // ends OK, the job not terminal
  const port = await new Promise((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  const client = new CoordinatorClient(`127.0.0.1:${port}`, { apiKey: 'k', retry: { attempts: 1 } });
  t.after(() => {
    client.close();
    server.forceShutdown();
  });
  await assert.rejects(client.watchJob('01234567-89ab-7def-8123-456789abcdef', () => {}, { timeoutMs: 5000 }), (err) => {
    assert.equal(err.code, grpc.status.UNAVAILABLE, err.message);
    assert.deepEqual([err.reason, err.violations, err.retryAfterMs, err.errorMetadata], ['', [], null, {}]);
    return true;
  });
});
