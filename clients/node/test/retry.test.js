'use strict';
/**
 * The Node client over a network that fails, against a REAL coordinator (and a real Python miner) through a
 * TCP relay (review round 33): calls safe to repeat are made again after UNAVAILABLE, a submit only with an
 * idempotency key (one job, whatever happened to the first try; never two without one); a cancel whose
 * answer was lost answers the canceled job; every call has a deadline; errors carry their google.rpc details;
 * a cut watch resumes after its last sequence, missing and repeating nothing. (The client made each call
 * once and lost a cut watch; errors showed no reason.)
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { CoordinatorClient } = require('../src/client');
const { Relay } = require('../testing/relay');
const { unavailable, startCoordinator } = require('../testing/coordinator');
const { failOnExit } = require('../testing/processes');

const reason = unavailable();
const skip = reason && process.env.AITBC_REQUIRE_INTEGRATION !== '1' ? reason : false;
const FAST_RETRY = { attempts: 200, backoffMs: 50, backoffMaxMs: 200 };

/** A coordinator, a direct client and a client through a relay; all closed after t. */
async function setUp(t, options = {}) {
  const made = [];
  const client = (address, opts = {}) => {
    const c = new CoordinatorClient(address, { apiKey: 'client-key-1', ...opts });
    made.push(c);
    return c;
  };
  const coord = await startCoordinator(t, (address) => new CoordinatorClient(address, { apiKey: 'client-key-1' }));
  const relay = new Relay(coord.port);
  const relayPort = await relay.start();
  t.after(async () => {
    made.forEach((c) => c.close());
    await relay.close();
  });
  const direct = client(coord.address);
  const through = client(`127.0.0.1:${relayPort}`, { retry: FAST_RETRY, ...options });
  // the relayed connection is up; under a deadline of its own, not the client's (500 ms in one test, which the
  // connection's set-up and a just-started coordinator's first answer had to fit in, on a loaded host too)
  await through.checkHealth('', 60000);
  const jobsStored = async () => (await direct.listJobs({ pageSize: 1000 })).jobs.length;
  return { coord, relay, direct, through, jobsStored };
}

test('a keyed submit whose answer was lost is made again and gives the one job; without a key (none generated) it is not', { skip, timeout: 120000 }, async (t) => {
  const { relay, through, jobsStored } = await setUp(t, { generateIdempotencyKeys: false });
  relay.arm(async () => (await jobsStored()) === 1);
  await assert.rejects(through.submitJob({ n: 1 }), (err) => err.code === 14);
  assert.ok(relay.fired);
  assert.equal(await jobsStored(), 1, 'an unkeyed submit is never repeated');

  relay.arm(async () => (await jobsStored()) === 2);
  const job = await through.submitJob({ n: 2 }, { idempotencyKey: 'order-2' });
  assert.ok(relay.fired);
  assert.equal(job.idempotency_key, 'order-2');
  assert.equal(await jobsStored(), 2);

  relay.arm(async () => (await jobsStored()) === 4);
  const batch = await through.submitJobs([3, 4].map((n) => ({ payload: { n }, options: { idempotencyKey: `batch-${n}` } })));
  assert.deepEqual(batch.map((j) => j.idempotency_key), ['batch-3', 'batch-4']);
  assert.equal(await jobsStored(), 4);
});

test('a batch with a key on some entries only (none generated), its answer lost, is not made again', { skip, timeout: 120000 }, async (t) => {
  const { relay, through, jobsStored } = await setUp(t, { generateIdempotencyKeys: false });
  relay.arm(async () => (await jobsStored()) === 2);
  const entries = [{ payload: { n: 1 }, options: { idempotencyKey: 'part-1' } }, { payload: { n: 2 } }];
  await assert.rejects(through.submitJobs(entries), (err) => err.code === 14);
  assert.ok(relay.fired);
  await new Promise((r) => setTimeout(r, 300)); // time for a wrongful repeat to land
  assert.equal(await jobsStored(), 2, 'the unkeyed entry would be stored twice');
});

test('a cancel whose answer was lost answers the canceled job, not JOB_TERMINAL', { skip, timeout: 120000 }, async (t) => {
  const { relay, direct, through } = await setUp(t);
  const job = await direct.submitJob({ n: 1 });
  relay.arm(async () => (await direct.getJob(job.job_id)).state === 'JOB_STATE_CANCELED');
  const canceled = await through.cancelJob(job.job_id, 'not needed');
  assert.ok(relay.fired);
  assert.equal(canceled.state, 'JOB_STATE_CANCELED');
  assert.equal(canceled.terminal_message, 'not needed');
});

test('every call has a deadline: a coordinator that never answers ends it DEADLINE_EXCEEDED', { skip, timeout: 120000 }, async (t) => {
  const { relay, through } = await setUp(t, { timeoutMs: 500 });
  relay.stall();
  await assert.rejects(through.listJobs(), (err) => err.code === 4);
});

test('errors carry their google.rpc details: reason, field violations', { skip, timeout: 120000 }, async (t) => {
  const { direct } = await setUp(t);
  await assert.rejects(direct.getJob('01234567-89ab-7def-8123-456789abcdef'),
    (err) => err.code === 5 && err.reason === 'JOB_NOT_FOUND' && /^5 NOT_FOUND \(JOB_NOT_FOUND\): /.test(err.message));
  await assert.rejects(direct.submitJob({}, { priority: 99 }),
    (err) => err.reason === 'INVALID_REQUEST' && err.violations.some((v) => v.field === 'priority'));
});

test('a watch cut while the job moves on resumes after its last sequence: nothing missed, nothing twice', { skip, timeout: 120000 }, async (t) => {
  const { coord, relay, direct, through } = await setUp(t);
  const job = await direct.submitJob({ prompt: 'watched' });
  const seen = [];
  let first;
  const started = new Promise((r) => { first = r; });
  const watching = through.watchJob(job.job_id, (j, event, sequence) => {
    seen.push([sequence, j.state, event ? event.to_state : null]);
    first();
  }, { timeoutMs: 90000 });
  await started;
  relay.accepting = false;
  relay.cut(); // the watch is cut and cannot come back for now
  const miner = coord.startMiner();
  const done = await Promise.race([direct.watchJob(job.job_id), failOnExit(miner)]);
  assert.equal(done.state, 'JOB_STATE_COMPLETED');
  relay.accepting = true;
  const resumed = await watching;
  assert.equal(resumed.state, 'JOB_STATE_COMPLETED');
  assert.deepEqual(seen, [
    [1, 'JOB_STATE_QUEUED', null],
    [2, 'JOB_STATE_ASSIGNED', 'JOB_STATE_ASSIGNED'],
    [3, 'JOB_STATE_RUNNING', 'JOB_STATE_RUNNING'],
    [4, 'JOB_STATE_COMPLETED', 'JOB_STATE_COMPLETED'],
  ]);
});

/** Resolves once cond() holds (polled every 20 ms). */
async function until(cond) {
  while (!cond()) await new Promise((r) => setTimeout(r, 20));
}

test('close() ends a call waiting to try again, and one in flight, CANCELLED at once (not tried again)', { skip, timeout: 120000 }, async (t) => {
  const { relay, direct, through } = await setUp(t, { retry: { attempts: 5, backoffMs: 60000, backoffMaxMs: 60000 }, timeoutMs: 300000 });
  relay.arm(async () => true); // the next answer is lost: UNAVAILABLE, then a minute's pause
  const listing = through.listJobs();
  await until(() => through.pauses.size === 1);
  const job = await direct.submitJob({ n: 1 }); // no miner: a waiting GetJobResult stays in flight
  const second = new CoordinatorClient(`127.0.0.1:${relay.server.address().port}`, { apiKey: 'client-key-1' });
  t.after(() => second.close());
  await second.listJobs();
  const waiting = second.getJobResult(job.job_id, { wait: true });
  await until(() => second.calls.size === 1);
  through.close();
  second.close();
  await assert.rejects(listing, (err) => err.code === 1);
  await assert.rejects(waiting, (err) => err.code === 1);
  assert.equal(through.pauses.size + second.calls.size, 0);
});

test('close() ends a watch waiting to resume CANCELLED at once', { skip, timeout: 120000 }, async (t) => {
  const { relay, direct, through } = await setUp(t, { retry: { attempts: 5, backoffMs: 60000, backoffMaxMs: 60000 } });
  const job = await direct.submitJob({ n: 1 });
  let first;
  const started = new Promise((r) => { first = r; });
  const watching = through.watchJob(job.job_id, () => first());
  await started;
  relay.cut(); // the watch is cut: UNAVAILABLE, then a minute's pause before it resumes
  await until(() => through.pauses.size === 1);
  through.close();
  await assert.rejects(watching, (err) => err.code === 1);
});
