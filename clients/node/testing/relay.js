'use strict';
/**
 * A TCP relay between a client and the coordinator, for tests that break the network between them: refuse
 * new connections, cut every connection with a reset, stall all traffic, or (armed with a condition) cut
 * the connection carrying the first reply that comes back once the condition holds: the coordinator acted
 * on the call and its answer is lost.
 */
const net = require('node:net');

class Relay {
  /** @param {number} upstreamPort the coordinator's port on 127.0.0.1 */
  constructor(upstreamPort) {
    this.upstreamPort = upstreamPort;
    this.accepting = true;
    this.stalled = false;
    this.links = new Set();
    /** @type {null|(() => Promise<boolean>)} */
    this.condition = null;
    this.fired = false;
    this.server = net.createServer((down) => this.link(down));
  }

  /** Listens on a free loopback port; resolves with it. */
  start() {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve(this.server.address().port)));
  }

  link(down) {
    if (!this.accepting) {
      down.resetAndDestroy();
      return;
    }
    const up = net.connect(this.upstreamPort, '127.0.0.1');
    const link = { down, up };
    this.links.add(link);
    const end = () => {
      // stalled, the coordinator's side closing (its keepalive gave up) reaches the client no more than its
      // bytes do: a host gone silent closes nothing the client sees, until the client gives up or a cut
      if (this.stalled && !down.destroyed) {
        up.destroy();
        return;
      }
      this.links.delete(link);
      down.destroy();
      up.destroy();
    };
    for (const s of [down, up]) {
      s.on('error', end);
      s.on('close', end);
    }
    down.on('data', (chunk) => {
      if (!this.stalled) up.write(chunk);
    });
    up.on('data', (chunk) => {
      if (this.stalled) return;
      if (!this.condition) {
        down.write(chunk);
        return;
      }
      up.pause(); // the chunks behind this one wait for the condition's answer
      this.condition().then((holds) => {
        if (holds && this.condition) {
          this.condition = null;
          this.fired = true;
          this.cut();
        } else {
          down.write(chunk);
          up.resume();
        }
      });
    });
  }

  /** Cuts the connection carrying the first reply that comes back once condition() resolves true. */
  arm(condition) {
    this.fired = false;
    this.condition = condition;
  }

  /** Every connection so far closed with a TCP reset. */
  cut() {
    for (const { down, up } of this.links) {
      down.resetAndDestroy();
      up.resetAndDestroy();
    }
    this.links.clear();
  }

  /** Nothing flows any more (the bytes are dropped: a coordinator that never answers). */
  stall() {
    this.stalled = true;
  }

  /**
   * Traffic flows again, on new connections: those open during the stall are reset (the bytes they dropped
   * would garble their streams; a real network would have resent them).
   */
  resume() {
    this.cut();
    this.stalled = false;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

module.exports = { Relay };
