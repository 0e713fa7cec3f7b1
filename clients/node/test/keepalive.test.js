'use strict';
/**
 * Channel keepalive (helper client-polish): a coordinator host gone silent (half-open: every packet dropped,
 * nothing closed) held a watch until its deadline, grpc-js channels sending no pings. The client pings as
 * the Python SDK does (20 s, 10 s to answer); here shortened to 6 s (the coordinator takes pings every 5 s or
 * more: below that it answers GOAWAY too_many_pings) and 2 s, through a TCP relay that stalls, in front of a
 * REAL coordinator: the watch's stream fails UNAVAILABLE while the relay is silent, the watch resumes once
 * traffic passes again and follows the job to its end, nothing missed or repeated.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { CoordinatorClient, keepaliveOptions, DEFAULT_KEEPALIVE } = require('../src/client');
const { Relay } = require('../testing/relay');
const { unavailable, startCoordinator } = require('../testing/coordinator');
const { failOnExit } = require('../testing/processes');

const reason = unavailable();
const skip = reason && process.env.AITBC_REQUIRE_INTEGRATION !== '1' ? reason : false;
const KEEPALIVE = { timeMs: 6000, timeoutMs: 2000 };
/** Far more than keepalive + timeout (8 s); far less than the watch's deadline, where it ended without. */
const CUT_WITHIN_MS = 40000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test('a watch through a connection gone silent fails UNAVAILABLE by keepalive and resumes once traffic passes', { skip, timeout: 180000 }, async (t) => {
  if (reason) assert.fail(reason);
  const coord = await startCoordinator(t, (address) => new CoordinatorClient(address, { apiKey: 'client-key-1' }));
  const relay = new Relay(coord.port);
  const relayPort = await relay.start();
  const direct = new CoordinatorClient(coord.address, { apiKey: 'client-key-1' });
  const through = new CoordinatorClient(`127.0.0.1:${relayPort}`, { apiKey: 'client-key-1', keepalive: KEEPALIVE, retry: { backoffMs: 100, backoffMaxMs: 500 } });
  t.after(async () => {
    direct.close();
    through.close();
    await relay.close();
  });
  const job = await direct.submitJob({ n: 1 });
  const cuts = [];
  const watchOnce = through.watchOnce.bind(through);
  through.watchOnce = (...args) => watchOnce(...args).catch((err) => { // notes each stream's failure (observation only)
    cuts.push({ code: err.code, whileStalled: relay.stalled });
    throw err;
  });
  const seen = [];
  let first;
  const started = new Promise((r) => { first = r; });
  const watching = through.watchJob(job.job_id, (j, event, sequence) => { seen.push(sequence); first(); }, { timeoutMs: 150000 });
  await started;
  relay.stall(); // the coordinator's host goes silent: nothing flows, nothing is closed
  for (let waited = 0; cuts.length === 0 && waited < CUT_WITHIN_MS; waited += 100) await sleep(100);
  assert.ok(cuts.length > 0, `the watch's stream was still open ${CUT_WITHIN_MS / 1000} s into the silence (no keepalive)`);
  assert.deepEqual(cuts[0], { code: 14, whileStalled: true });
  relay.resume();
  const miner = coord.startMiner();
  const done = await Promise.race([watching, failOnExit(miner)]);
  assert.equal(done.state, 'JOB_STATE_COMPLETED');
  assert.deepEqual(seen, Array.from({ length: seen.length }, (_, i) => i + 1), 'none missed, none twice');
});

test('keepalive options: the defaults as the Python SDK\'s, and none the coordinator would refuse', () => {
  assert.deepEqual(DEFAULT_KEEPALIVE, { timeMs: 20000, timeoutMs: 10000 });
  assert.deepEqual(keepaliveOptions(DEFAULT_KEEPALIVE), {
    'grpc.keepalive_time_ms': 20000, 'grpc.keepalive_timeout_ms': 10000, 'grpc.keepalive_permit_without_calls': 1,
  });
  assert.throws(() => new CoordinatorClient('127.0.0.1:9', { keepalive: { timeMs: 5000 } }), RangeError);
  assert.throws(() => new CoordinatorClient('127.0.0.1:9', { keepalive: { timeoutMs: 0 } }), RangeError);
});
