'use strict';
/**
 * A watch resumed after a cut and refused by its key's rate limit (helper h2): after an outage every watch of
 * an application resumes at once, and the key's read budget may refuse some (RESOURCE_EXHAUSTED, RetryInfo:
 * when a token is back). The watch, which the client resumes by itself, waits that delay and goes on, missing
 * and repeating nothing, as the Python SDK's does. (It threw RESOURCE_EXHAUSTED.)
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { CoordinatorClient } = require('../src/client');
const { Relay } = require('../testing/relay');
const { unavailable, startCoordinator } = require('../testing/coordinator');

const reason = unavailable();
const skip = reason && process.env.AITBC_REQUIRE_INTEGRATION !== '1' ? reason : false;
const FAST_RETRY = { attempts: 200, backoffMs: 50, backoffMaxMs: 200 };

test('a watch resume refused by a rate limit waits its RetryInfo delay and misses nothing', { skip, timeout: 120000 }, async (t) => {
  process.env.RATE_LIMITS = 'read=0.2/s:burst=1'; // (read by the coordinator this test starts)
  t.after(() => delete process.env.RATE_LIMITS);
  const coord = await startCoordinator(t, (address) => new CoordinatorClient(address, { apiKey: 'client-key-1' }));
  const relay = new Relay(coord.port);
  const relayPort = await relay.start();
  const client = new CoordinatorClient(`127.0.0.1:${relayPort}`, { apiKey: 'client-key-1', retry: FAST_RETRY });
  t.after(async () => {
    client.close();
    await relay.close();
  });
  const job = await client.submitJob({ prompt: 'watched' }); // (the submit group: no read token spent)
  const seen = [];
  let first;
  const started = new Promise((r) => { first = r; });
  const watching = client.watchJob(job.job_id, (j, event, sequence) => {
    seen.push(sequence);
    first();
  }, { timeoutMs: 90000 }); // the key's one read token
  await started;
  relay.cut(); // resumed at once, with no token left for 5 s
  coord.startMiner();
  const done = await watching;
  assert.equal(done.state, 'JOB_STATE_COMPLETED');
  assert.deepEqual(seen, [1, 2, 3, 4]);
});
