'use strict';
/**
 * Child processes for the integration test: the real coordinator and miner. Every process started here
 * is stopped by stopAll (SIGTERM, then SIGKILL after a grace period), and, as a last resort, killed when
 * the test process exits, so a failing test never leaves a server behind.
 */
const { spawn } = require('node:child_process');
const net = require('node:net');

const running = new Set();
process.on('exit', () => {
  for (const p of running) p.child.kill('SIGKILL');
});

/** A TCP port that was free on 127.0.0.1 a moment ago. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts a process, keeping the tail of its output for diagnostics.
 * @returns {{name: string, child: import('node:child_process').ChildProcess, output: () => string, exited: Promise<{code: number|null, signal: string|null}>}}
 */
function start(name, command, args, options = {}) {
  const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  let tail = '';
  const keep = (chunk) => {
    tail = (tail + chunk.toString('utf8')).slice(-20000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
    child.on('error', (err) => {
      keep(`spawn error: ${err.message}\n`);
      resolve({ code: null, signal: null });
    });
  });
  const proc = { name, child, output: () => tail, exited };
  running.add(proc);
  exited.then(() => running.delete(proc));
  return proc;
}

/** Stops one process: SIGTERM, and SIGKILL if it has not exited after `graceMs`. */
async function stop(proc, graceMs = 10000) {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return proc.exited;
  proc.child.kill('SIGTERM');
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), graceMs);
  try {
    return await proc.exited;
  } finally {
    clearTimeout(timer);
  }
}

/** Rejects as soon as the process exits (for racing against a wait that needs it alive). */
function failOnExit(proc) {
  return proc.exited.then(({ code, signal }) => {
    throw new Error(`${proc.name} exited (code ${code}, signal ${signal}):\n${proc.output()}`);
  });
}

module.exports = { freePort, start, stop, failOnExit };
