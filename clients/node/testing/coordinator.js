'use strict';
/**
 * A real coordinator (and, on demand, a real Python echo miner) as child processes for the Node tests, from
 * AITBC_VENV_BIN (default <repo>/.venv/bin). `unavailable()` says why they cannot run here (null when they can).
 */
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { REPO_ROOT } = require('./paths');
const { freePort, start, stop } = require('./processes');

const BIN = process.env.AITBC_VENV_BIN ?? path.join(REPO_ROOT, '.venv', 'bin');
const COORDINATOR = path.join(BIN, 'aitbc-coordinator');
const AITBC = path.join(BIN, 'aitbc');

/** Why the Python side cannot run here, or null when it can. */
function unavailable() {
  for (const [cmd, args] of [[COORDINATOR, ['serve', '--help']], [AITBC, ['miner', 'run', '--help']]]) {
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60000 });
    if (r.error || r.status !== 0) {
      const why = r.error ? r.error.message : (r.stderr || r.stdout).trim().split('\n').pop();
      return `${path.basename(cmd)} ${args.join(' ')} does not run (${why})`;
    }
  }
  return null;
}

/** Polls grpc.health.v1 Check until the server answers SERVING; gives up if the process exits. */
async function waitServing(client, proc, deadlineMs) {
  const end = Date.now() + deadlineMs;
  let last;
  while (Date.now() < end) {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
      throw new Error(`${proc.name} exited (code ${proc.child.exitCode}):\n${proc.output()}`);
    }
    try {
      last = await client.checkHealth('', 1000);
      if (last === 'SERVING') return;
    } catch (err) {
      last = err.message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`coordinator not SERVING after ${deadlineMs} ms (last: ${last})`);
}

/**
 * Starts a coordinator with client key `client-key-1` (alice) and miner key `miner-key-1` (m1) on a free
 * port and a temporary SQLite file; stopped (and the files removed) after test t.
 * @param {object} [options]
 * @param {Object<string,string>} [options.keys] the *_API_KEYS settings instead (e.g. those of .env.example)
 * @param {string} [options.minerKey] the key startMiner's miner uses (default `miner-key-1`)
 * @param {string[]} [options.minerArgs] more `aitbc miner run` arguments (e.g. `--price 0.5`)
 * @returns {Promise<{port: number, address: string, tmp: string, startMiner: () => object}>}
 */
async function startCoordinator(t, makeClient, options = {}) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'aitbc-node-'));
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const procs = [];
  t.after(async () => {
    await Promise.all(procs.map((p) => stop(p)));
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  const keys = options.keys ?? { CLIENT_API_KEYS: 'alice:client-key-1', MINER_API_KEYS: 'm1:miner-key-1', ADMIN_API_KEYS: 'ops:admin-key-1' };
  const env = { ...process.env, ...keys };
  const coordinator = start('coordinator', COORDINATOR, ['serve', '--host', '127.0.0.1', '--port', String(port), '--database', `sqlite:///${tmp}/c.db`], { cwd: tmp, env });
  procs.push(coordinator);
  const probe = makeClient(address);
  try {
    await waitServing(probe, coordinator, 60000);
  } finally {
    probe.close();
  }
  const startMiner = () => {
    const miner = start('miner', AITBC, ['miner', 'run', '--address', address, '--api-key', options.minerKey ?? 'miner-key-1', '--runner', 'echo', ...(options.minerArgs ?? [])], { cwd: tmp, env: process.env });
    procs.push(miner);
    return miner;
  };
  return { port, address, tmp, startMiner };
}

module.exports = { unavailable, waitServing, startCoordinator, COORDINATOR, AITBC };
