'use strict';
/**
 * The Node client across a coordinator that is DOWN for a while (review round, helper client-review): a REAL
 * coordinator process stopped (its port closed), then a new one started on the same SQLite file and port.
 * Calls and watches give up only at their deadline (a cap of 5 tries gave up about 3 s into an outage, however
 * long the caller had said it would wait); a watch whose deadline passes says which job, its last state seen
 * and the cut it was waiting out (it threw the bare UNAVAILABLE of its last try); a cancel repeated after its
 * answer was lost reads the job back within the cancel's own deadline (it read with a fresh 30 s).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { CoordinatorClient } = require('../src/client');
const { Relay } = require('../testing/relay');
const { freePort, start, stop, failOnExit } = require('../testing/processes');
const { unavailable, waitServing, COORDINATOR, AITBC } = require('../testing/coordinator');

const reason = unavailable();
const skip = reason && process.env.AITBC_REQUIRE_INTEGRATION !== '1' ? reason : false;
/** Twice what the capped policy (5 tries, 200 ms doubling, jittered) waited out at most. */
const OUTAGE_MS = 6000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A coordinator process on a fixed port and SQLite file that the test stops and starts again (a new
 * process each time), and clients closed after test t.
 */
async function coordinatorOnAPort(t) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'aitbc-node-outage-'));
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const env = { ...process.env, CLIENT_API_KEYS: 'alice:client-key-1', MINER_API_KEYS: 'm1:miner-key-1' };
  const procs = [];
  const clients = [];
  let current = null;
  t.after(async () => {
    clients.forEach((c) => c.close());
    await Promise.all(procs.map((p) => stop(p)));
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  const client = (options = {}) => {
    const c = new CoordinatorClient(address, { apiKey: 'client-key-1', ...options });
    clients.push(c);
    return c;
  };
  const up = async () => {
    current = start('coordinator', COORDINATOR, ['serve', '--host', '127.0.0.1', '--port', String(port), '--database', `sqlite:///${tmp}/c.db`], { cwd: tmp, env });
    procs.push(current);
    const probe = new CoordinatorClient(address, { apiKey: 'client-key-1' });
    try {
      await waitServing(probe, current, 60000);
    } finally {
      probe.close();
    }
  };
  const down = () => stop(current);
  const startMiner = () => {
    const miner = start('miner', AITBC, ['miner', 'run', '--address', address, '--api-key', 'miner-key-1', '--runner', 'echo'], { cwd: tmp, env: process.env });
    procs.push(miner);
    return miner;
  };
  await up();
  return { port, address, up, down, client, startMiner };
}

test('a watch, a waiting getJobResult and a keyed submit outlast a coordinator down for seconds', { skip, timeout: 180000 }, async (t) => {
  if (reason) assert.fail(reason);
  const coord = await coordinatorOnAPort(t);
  // the default retry policy; the deadline of the watch and the result for the keyed submit too: with the default
  // 30 s it had to get through by ~25 s (its pauses reach 5 s), after the 6 s outage, the coordinator's start
  // and the channel's reconnect backoff (1, 1.6, 2.6, 4.1, 6.6, 10.5 s...): a loaded host's slow start fails it
  const client = coord.client({ timeoutMs: 120000 });
  const job = await client.submitJob({ n: 1 });
  const seen = [];
  let first;
  const started = new Promise((r) => { first = r; });
  const settled = new Set();
  const track = (name, p) => { p.then(() => settled.add(name), () => settled.add(name)); return p; };
  const watching = track('watch', client.watchJob(job.job_id, (j, event, sequence) => { seen.push([sequence, j.state]); first(); }, { timeoutMs: 120000 }));
  const result = track('result', client.getJobResult(job.job_id, { wait: true, timeoutMs: 120000 }));
  await started;
  await coord.down();
  const keyed = track('submit', client.submitJob({ n: 2 }, { idempotencyKey: 'during-the-outage' }));
  await sleep(OUTAGE_MS);
  assert.deepEqual([...settled], [], 'nothing gave up during the outage (with a cap of 5 tries: all did)');
  await coord.up();
  const miner = coord.startMiner();
  const [done, res, second] = await Promise.race([Promise.all([watching, result, keyed]), failOnExit(miner)]);
  assert.equal(done.state, 'JOB_STATE_COMPLETED');
  assert.equal(res.job.state, 'JOB_STATE_COMPLETED');
  const sequences = seen.map(([s]) => s);
  assert.deepEqual(sequences, Array.from({ length: sequences.length }, (_, i) => i + 1), 'none missed, none twice');
  assert.equal(seen.at(-1)[1], 'JOB_STATE_COMPLETED');
  const again = await client.submitJob({ n: 2 }, { idempotencyKey: 'during-the-outage' });
  assert.equal(again.job_id, second.job_id);
  assert.equal(again.created, false);
  const { jobs } = await client.listJobs({ pageSize: 1000 });
  assert.equal(jobs.length, 2, 'one job for the key');
});

test('a watch whose deadline passes while the coordinator is down says so, with what it saw', { skip, timeout: 120000 }, async (t) => {
  if (reason) assert.fail(reason);
  const coord = await coordinatorOnAPort(t);
  const client = coord.client({ retry: { backoffMs: 50, backoffMaxMs: 100 } });
  const job = await client.submitJob({ n: 1 });
  let first;
  const started = new Promise((r) => { first = r; });
  // (the deadline outlasts the coordinator's own stop, during which the stream stays open)
  const watching = client.watchJob(job.job_id, () => first(), { timeoutMs: 20000 });
  const outcome = watching.then(() => null, (err) => err);
  await started;
  await coord.down();
  const err = await outcome;
  assert.ok(err, 'the watch ended without the job');
  assert.equal(err.code, 4, err.message); // (with the cap: 14, its fifth try's, within a second of the stop)
  assert.match(err.message, new RegExp(`^4 DEADLINE_EXCEEDED: job ${job.job_id} not terminal within 20 s \\(last seen QUEUED, sequence 1\\); last cut: 14 UNAVAILABLE`), err.message);
  assert.equal(err.lastJob.job_id, job.job_id);
  assert.equal(err.cause.code, 14);
});

test('a cancel repeated after its answer was lost reads the job back within the cancel\'s deadline', { skip, timeout: 120000 }, async (t) => {
  if (reason) assert.fail(reason);
  const coord = await coordinatorOnAPort(t);
  const direct = coord.client();
  const relay = new Relay(coord.port);
  const relayPort = await relay.start();
  t.after(() => relay.close());
  const through = new CoordinatorClient(`127.0.0.1:${relayPort}`, { apiKey: 'client-key-1', timeoutMs: 5000, retry: { backoffMs: 1000, backoffMaxMs: 1000 } });
  t.after(() => through.close());
  await through.listJobs();
  const job = await direct.submitJob({ n: 1 });
  const tries = [];
  const unaryOnce = through.unaryOnce.bind(through);
  through.unaryOnce = (stub, method, request, deadline) => { // notes each try's deadline (observation only)
    tries.push([method, deadline]);
    return unaryOnce(stub, method, request, deadline);
  };
  relay.arm(async () => (await direct.getJob(job.job_id)).state === 'JOB_STATE_CANCELED');
  const canceled = await through.cancelJob(job.job_id, 'not needed');
  assert.ok(relay.fired);
  assert.equal(canceled.state, 'JOB_STATE_CANCELED');
  assert.deepEqual(tries.map(([m]) => m), ['CancelJob', 'CancelJob', 'GetJob']);
  const [[, cancelDeadline], , [, readDeadline]] = tries;
  assert.ok(readDeadline <= cancelDeadline, `the read's deadline ${readDeadline} is past the cancel's ${cancelDeadline}`);
});

test('a call the coordinator\'s process ended without a gRPC status is a cut: tried again, as UNAVAILABLE is', { timeout: 60000 }, async (t) => {
  // A peer that ends each stream with RST_STREAM(NO_ERROR) and no trailers, as a coordinator process going
  // away did now and then (grpc-js: INTERNAL "Received RST_STREAM with code 0"): the watch threw it and gave up.
  const http2 = require('node:http2');
  let streams = 0;
  const server = http2.createServer();
  server.on('stream', (stream) => {
    streams += 1;
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
    stream.close(http2.constants.NGHTTP2_NO_ERROR);
  });
  const sessions = new Set();
  server.on('session', (session) => sessions.add(session));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const client = new CoordinatorClient(`127.0.0.1:${server.address().port}`, { apiKey: 'k', retry: { attempts: 3, backoffMs: 10, backoffMaxMs: 10 } });
  t.after(() => {
    client.close();
    sessions.forEach((s) => s.destroy());
    return new Promise((r) => server.close(r));
  });
  await assert.rejects(client.getJob('01234567-89ab-7def-8123-456789abcdef'), (err) => {
    assert.equal(err.code, 13, err.message);
    assert.match(err.details, /^Received RST_STREAM with code 0/);
    return true;
  });
  assert.equal(streams, 3, 'tried as often as the policy allows');
});
