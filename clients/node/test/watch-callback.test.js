'use strict';
/**
 * A watch whose onUpdate throws (helper h2): the watch ends at once with that error, its stream canceled, not
 * tried again, as a Python consumer's exception ends its watch. (Thrown from the stream's listener, the error
 * was an unhandled rejection, which ends a Node process by default, and the watch ran on to its deadline.)
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { CoordinatorClient } = require('../src/client');
const { unavailable, startCoordinator } = require('../testing/coordinator');

const reason = unavailable();
const skip = reason && process.env.AITBC_REQUIRE_INTEGRATION !== '1' ? reason : false;

test('an onUpdate that throws ends the watch with its error, once, and nothing is left unhandled', { skip, timeout: 120000 }, async (t) => {
  const coord = await startCoordinator(t, (address) => new CoordinatorClient(address, { apiKey: 'client-key-1' }));
  const client = new CoordinatorClient(coord.address, { apiKey: 'client-key-1' });
  const unhandled = [];
  const note = (err) => unhandled.push(err);
  process.on('unhandledRejection', note);
  t.after(() => {
    process.off('unhandledRejection', note);
    client.close();
  });
  const job = await client.submitJob({ n: 1 });
  const boom = new Error('the application failed');
  let calls = 0;
  // (the job stays QUEUED: no miner; the watch's deadline is far off, so only the throw can end it)
  await assert.rejects(client.watchJob(job.job_id, () => {
    calls += 1;
    throw boom;
  }, { timeoutMs: 600000 }), (err) => err === boom);
  await new Promise((resolve) => setTimeout(resolve, 500)); // time for a wrongful resume to call onUpdate again
  assert.equal(calls, 1);
  assert.deepEqual(unhandled, []);
  assert.equal(client.streams.size, 0);
});
