'use strict';
/**
 * The README's examples as an integrator runs them: its client program (`node example.js`) and its offline
 * verification (the `aitbc receipts` commands, then `node verify-receipt.js`), extracted from README.md and
 * run as written against a REAL coordinator (the keys of .env.example) and a REAL Python miner started with
 * the README's own `aitbc miner run` line. Only the address, JOB_ID and the vectors' path are substituted.
 * The examples run in a temporary directory whose `src` links to this package's (so `require('./src/...')`
 * resolves as it does beside src/). The first example used to be top-level `await` in a CommonJS file:
 * node refused it (SyntaxError).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { CoordinatorClient, loadContract } = require('../src/client');
const { NODE_ROOT, REPO_ROOT, VECTORS_DIR } = require('../testing/paths');
const { unavailable, startCoordinator, AITBC } = require('../testing/coordinator');
const { start, stop } = require('../testing/processes');

const README = fs.readFileSync(path.join(NODE_ROOT, 'README.md'), 'utf8');
const README_ADDRESS = '127.0.0.1:50051';

const reason = unavailable();
const skip = reason && process.env.AITBC_REQUIRE_INTEGRATION !== '1' ? reason : false;

/** The README's fenced blocks of a language. */
function blocks(language) {
  return [...README.matchAll(new RegExp('```' + language + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1]);
}

/** The one block of a language containing marker. */
function theBlock(language, marker) {
  const found = blocks(language).filter((b) => b.includes(marker));
  assert.equal(found.length, 1, `one ${language} block with ${marker}`);
  return found[0];
}

/** .env.example's *_API_KEYS settings, as the README's examples use them. */
function exampleKeys() {
  const keys = {};
  for (const line of fs.readFileSync(path.join(REPO_ROOT, '.env.example'), 'utf8').split('\n')) {
    const m = /^([A-Z_]+_API_KEYS)=([^#\s]*)/.exec(line);
    if (m) keys[m[1]] = m[2];
  }
  return keys;
}

/** A command line through bash in cwd (async: the miner's output keeps flowing); its exit status and output. */
function run(line, cwd, env) {
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', line], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => { out += c; });
    child.stderr.on('data', (c) => { err += c; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 120000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal, out, err });
    });
  });
}

/** The lines of stdout that start with a word, split on spaces. */
const linesOf = (out, word) => out.split('\n').filter((l) => l.startsWith(`${word} `)).map((l) => l.split(' '));

test('the README names a client method for every JobService and ReceiptService RPC, and each exists', () => {
  const v1 = loadContract();
  for (const service of ['JobService', 'ReceiptService']) {
    for (const method of Object.values(v1[service].service).map((d) => d.originalName)) {
      assert.equal(typeof CoordinatorClient.prototype[method], 'function', `CoordinatorClient lacks ${method} (${service})`);
      assert.ok(README.includes(`${method}(`), `README does not name ${method}`);
    }
  }
});

test('README examples run as written against a real coordinator and miner', { skip, timeout: 240000 }, async (t) => {
  if (reason) assert.fail(reason); // only reached with AITBC_REQUIRE_INTEGRATION=1
  const keys = exampleKeys();
  const coord = await startCoordinator(t, (address) => new CoordinatorClient(address, { apiKey: 'unused' }), { keys });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'aitbc-node-readme-'));
  t.after(() => fs.rmSync(work, { recursive: true, force: true }));
  fs.symlinkSync(path.join(NODE_ROOT, 'src'), path.join(work, 'src'));
  const here = (text) => text.replaceAll(README_ADDRESS, coord.address);

  // The miner, as the README starts it.
  const minerLine = /`(aitbc miner run --address 127\.0\.0\.1:50051 [^`]*)`/.exec(README)[1];
  const minerArgs = here(minerLine).split(/\s+/).slice(1);
  const miner = start('miner', AITBC, minerArgs, { cwd: work, env: process.env });
  t.after(() => stop(miner));
  // (as the README's reader would: the miner logs `connected to the coordinator` once in)
  for (let i = 0; i < 600 && !miner.output().includes('connected to the coordinator'); i++) {
    if (miner.child.exitCode !== null) assert.fail(`miner exited:\n${miner.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }

  const env = { ...process.env, PATH: `${path.dirname(AITBC)}${path.delimiter}${process.env.PATH}` };
  try {
    // The client program: node example.js
    fs.writeFileSync(path.join(work, 'example.js'), here(theBlock('js', 'new CoordinatorClient(')));
    const ex = await run('node example.js', work, env);
    assert.equal(ex.code, 0, `example.js failed:\n${ex.err}\n${ex.out}`);
    const [quote] = linesOf(ex.out, 'quote');
    assert.deepEqual(quote.slice(1), ['1', '5', '5'], 'one miner at 0.5 per unit: 10 units cost 5');
    const states = ex.out.split('\n').filter((l) => l.startsWith('JOB_STATE_'));
    // (the first message is the job as the watch found it, without an event: COMPLETED already, at times)
    assert.match(states.at(-1) ?? '', /^JOB_STATE_COMPLETED /, states.join('\n'));
    const [result] = linesOf(ex.out, 'result');
    assert.equal(result[1], '{"prompt":"hello"}'); // the echo runner
    assert.equal(result[3], 'coordinator');
    assert.ok(fs.existsSync(path.join(work, 'keys.json')), 'the key set was pinned');
    assert.deepEqual(linesOf(ex.out, 'log')[0].slice(2), ['->', '2', 'consistent']);
    const [error] = linesOf(ex.out, 'error');
    assert.deepEqual(error.slice(0, 3), ['error', '3', 'INVALID_REQUEST']);
    assert.equal(JSON.parse(error.slice(3).join(' '))[0].field, 'priority');
    assert.deepEqual(linesOf(ex.out, 'usage')[0], ['usage', '2', 'alice', linesOf(ex.out, 'usage')[0][3], '2']);
    assert.match(linesOf(ex.out, 'usage')[0][3], /^-\d/, 'a client account is debited');
    const jobId = (await (async () => {
      const c = new CoordinatorClient(coord.address, { apiKey: keys.CLIENT_API_KEYS.split(':')[1] });
      try {
        return (await c.listJobs({ states: ['JOB_STATE_COMPLETED'] })).jobs.find((j) => j.idempotency_key === 'hello-1');
      } finally {
        c.close();
      }
    })()).job_id;

    // Offline verification: the CLI fetches, verify-receipt.js checks.
    fs.writeFileSync(path.join(work, 'verify-receipt.js'),
      theBlock('js', "require('./src/verify')").replaceAll('../../../shared/vectors', VECTORS_DIR));
    const lines = theBlock('sh', 'node verify-receipt.js').split('\n').filter((l) => l.trim());
    let last;
    for (const line of lines) {
      last = await run(here(line).replaceAll('JOB_ID', jobId).replace(/^export /, 'true; export '), work, env);
      if (line.startsWith('export ')) {
        // (each line runs in a shell of its own: the exports go into the next ones' environment)
        for (const [k, val] of here(line).slice('export '.length).split(/\s+/).map((w) => w.split('='))) env[k] = val;
      }
      assert.equal(last.code, 0, `${line}\n${last.err}\n${last.out}`);
    }
    const [ok] = linesOf(last.out, 'OK');
    assert.equal(ok[2], jobId);
    assert.equal(ok[3], 'coordinator');
    assert.equal(ok[4], 'aitbc.coordinator/coord-local');
    const [legacy] = linesOf(last.out, 'v1');
    assert.equal(legacy[1], 'rcpt-20250926-000123');
  } catch (err) {
    for (const p of [miner]) {
      t.diagnostic(`--- ${p.name} output ---`);
      for (const line of p.output().split('\n')) t.diagnostic(line);
    }
    throw err;
  }
});
