'use strict';
/**
 * A thin Node.js client of the AITBC coordinator, built at run time from the contract in proto/ (no
 * generated code to go stale). It converts at the edge only: JSON payloads to google.protobuf.Struct, key
 * sets to the JSON format of docs/receipts.md, receipts to bundles; everything else is the proto shape
 * (snake_case fields, enums as their names, 64-bit integers as decimal strings).
 */
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { toStruct, fromStruct } = require('./struct');
const { formatRfc3339 } = require('./time');
const { makeBundle, verifyBundle } = require('./bundle');
const { loadKeySet, KeySet } = require('./keys');
const { signingEntries } = require('./signing');

/** Where the contract lives when this package sits in the repository (clients/node -> proto/). */
const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', '..', 'proto');
const HEALTH_PROTO = path.resolve(__dirname, '..', 'proto-extra', 'health.proto');
const CONTRACT_FILES = ['job_service.proto', 'receipt_service.proto', 'miner_service.proto', 'admin_service.proto']
  .map((f) => `aitbc/coordinator/v1/${f}`);

const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const TERMINAL_STATES = new Set(['JOB_STATE_COMPLETED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELED', 'JOB_STATE_EXPIRED']);

/**
 * Loads the coordinator's services from the .proto files. The well-known google/protobuf imports resolve
 * from proto-loader's bundled copies.
 * @param {string} [protoDir] directory holding aitbc/coordinator/v1/*.proto
 */
function loadContract(protoDir = DEFAULT_PROTO_DIR) {
  const definition = protoLoader.loadSync(CONTRACT_FILES, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
  return grpc.loadPackageDefinition(definition).aitbc.coordinator.v1;
}

/** Loads grpc.health.v1.Health. */
function loadHealth() {
  return grpc.loadPackageDefinition(protoLoader.loadSync(HEALTH_PROTO, LOADER_OPTIONS)).grpc.health.v1.Health;
}

/** A google.protobuf.Duration from seconds (fractions allowed). */
function duration(seconds) {
  const whole = Math.floor(seconds);
  return { seconds: String(whole), nanos: Math.round((seconds - whole) * 1e9) };
}

/** A google.protobuf.Timestamp message object as RFC 3339, or undefined when unset. */
function timestampToRfc3339(ts) {
  return ts ? formatRfc3339(ts.seconds, ts.nanos) : undefined;
}

/** A Job with its Struct payload turned back into JSON (`payload_json`), the rest untouched. */
function decodeJob(job) {
  if (job && job.input === 'payload') return { ...job, payload_json: fromStruct(job.payload) };
  return job;
}

/**
 * A SigningKey message as a key set entry of docs/receipts.md section 4.
 * @returns {object}
 */
function keyToJson(k) {
  const entry = {
    key_id: k.key_id,
    role: k.role.replace(/^KEY_ROLE_/, '').toLowerCase(),
    status: k.status.replace(/^KEY_STATUS_/, '').toLowerCase(),
    public_key: Buffer.from(k.public_key).toString('hex'),
    valid_from: timestampToRfc3339(k.valid_from),
  };
  if (k.valid_until) entry.valid_until = timestampToRfc3339(k.valid_until);
  if (k.note_verifier_key) entry.note_verifier_key = k.note_verifier_key;
  if (k.owner) entry.owner = k.owner;
  return entry;
}

/**
 * Turns a GetReceipt response (as returned by getReceipt) into a bundle of spec section 7.
 * @param {{envelope: Buffer, leafIndex: string, inclusionProof: {tree_size: string, hashes: Buffer[]}, checkpoint: {note: string}}} r
 */
function receiptToBundle(r) {
  return makeBundle({
    envelope: r.envelope,
    leafIndex: r.leafIndex,
    treeSize: r.inclusionProof.tree_size,
    hashes: r.inclusionProof.hashes,
    checkpoint: r.checkpoint.note,
  });
}

/**
 * Verifies a GetReceipt response offline: builds its bundle and runs the bundle verifier.
 * @param {object} receiptResponse from getReceipt
 * @param {object|import('./keys').KeySet} keySet a KeySet or the key set JSON (as getSigningKeys returns)
 * @param {object} [options] passed to verifyBundle (policy, previous)
 */
function verifyReceiptResponse(receiptResponse, keySet, options) {
  const keys = keySet instanceof KeySet ? keySet : loadKeySet(keySet);
  return verifyBundle(receiptToBundle(receiptResponse), keys, options);
}

/** A client of one coordinator, authenticated with one API key. */
class CoordinatorClient {
  /**
   * @param {string} address host:port
   * @param {object} [options]
   * @param {string} [options.apiKey] sent as `x-api-key` metadata on every call
   * @param {string|Buffer} [options.hmacSecret] the key's signing secret: every call is signed (src/signing.js)
   * @param {grpc.ChannelCredentials} [options.credentials] default: plaintext (loopback, tests)
   * @param {string} [options.protoDir] the contract's root directory
   * @param {number} [options.timeoutMs] deadline of unary calls (default 30 s)
   */
  constructor(address, options = {}) {
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    const v1 = loadContract(options.protoDir);
    const Health = loadHealth();
    this.apiKey = options.apiKey;
    this.hmacSecret = options.hmacSecret;
    this.timeoutMs = options.timeoutMs ?? 30000;
    this.jobs = new v1.JobService(address, credentials);
    // The other stubs share the first one's channel: one connection per coordinator.
    const channelOverride = this.jobs.getChannel();
    this.receipts = new v1.ReceiptService(address, credentials, { channelOverride });
    this.admin = new v1.AdminService(address, credentials, { channelOverride });
    this.health = new Health(address, credentials, { channelOverride });
    /** Open watch streams, canceled by close(). */
    this.streams = new Set();
  }

  /** Per-call metadata: the API key. */
  metadata() {
    const md = new grpc.Metadata();
    if (this.apiKey) md.set('x-api-key', this.apiKey);
    return md;
  }

  /**
   * A call's method definition, its request serialized once, and its metadata: signed over exactly those
   * bytes when the client has a signing secret. The bytes are then sent as they are (identity serializer).
   */
  prepare(stub, method, request) {
    const def = stub.constructor.service[method];
    let body;
    try {
      body = def.requestSerialize(request);
    } catch (err) {
      // as grpc-js reports a request it cannot serialize: an error with a status code, not a bare TypeError
      throw Object.assign(new Error(`13 INTERNAL: Request message serialization failure: ${err.message}`),
        { code: grpc.status.INTERNAL, details: `Request message serialization failure: ${err.message}`, metadata: new grpc.Metadata() });
    }
    const md = this.metadata();
    if (this.hmacSecret) for (const [k, v] of signingEntries(this.hmacSecret, def.path, body)) md.set(k, v);
    return { def, body, md };
  }

  /** Calls a unary method and returns a promise of its response. */
  unary(stub, method, request, timeoutMs = this.timeoutMs) {
    return new Promise((resolve, reject) => {
      const { def, body, md } = this.prepare(stub, method, request); // a throw here rejects the promise
      stub.makeUnaryRequest(def.path, (b) => b, def.responseDeserialize, body, md, { deadline: Date.now() + timeoutMs },
        (err, res) => (err ? reject(err) : resolve(res)));
    });
  }

  /**
   * grpc.health.v1 Check; resolves with the status name ('SERVING', ...).
   * @param {string} [service] '' for the server as a whole
   */
  async checkHealth(service = '', timeoutMs = 2000) {
    const res = await this.unary(this.health, 'Check', { service }, timeoutMs);
    return res.status;
  }

  /**
   * Submits a job.
   * @param {object|Uint8Array} payload a JSON object (sent as Struct) or bytes
   * @param {object} [options]
   * @param {object} [options.constraints] Constraints fields (snake_case)
   * @param {number} [options.priority] 0-9
   * @param {number} [options.ttlSeconds]
   * @param {number} [options.maxAttempts]
   * @param {number} [options.executionTimeoutSeconds]
   * @param {string} [options.idempotencyKey]
   * @param {Object<string,string>} [options.metadata]
   * @returns {Promise<object>} the stored Job (with `payload_json`), plus `created`
   */
  async submitJob(payload, options = {}) {
    const request = payload instanceof Uint8Array ? { payload_bytes: Buffer.from(payload) } : { payload: toStruct(payload) };
    if (options.constraints) request.constraints = options.constraints;
    if (options.priority !== undefined) request.priority = options.priority;
    if (options.ttlSeconds !== undefined) request.ttl = duration(options.ttlSeconds);
    if (options.maxAttempts !== undefined) request.max_attempts = options.maxAttempts;
    if (options.executionTimeoutSeconds !== undefined) request.execution_timeout = duration(options.executionTimeoutSeconds);
    if (options.idempotencyKey !== undefined) request.idempotency_key = options.idempotencyKey;
    if (options.metadata) request.metadata = options.metadata;
    const res = await this.unary(this.jobs, 'SubmitJob', request);
    return { ...decodeJob(res.job), created: res.created };
  }

  /** Returns a job. */
  async getJob(jobId) {
    return decodeJob((await this.unary(this.jobs, 'GetJob', { job_id: jobId })).job);
  }

  /**
   * Follows a job until it is terminal. Should the stream end before a terminal state (the contract says
   * it ends after one, but a server may race), the job is polled with GetJob until it is terminal or the
   * watch's deadline passes; the terminal job is then passed to onUpdate with a null event and
   * `watch_ended_early` set.
   * @param {string} jobId
   * @param {(job: object, event: object|null) => void} [onUpdate] called for every message
   * @param {{timeoutMs?: number}} [options] deadline of the whole watch (default 10 minutes)
   * @returns {Promise<object>} the job in its terminal state
   */
  watchJob(jobId, onUpdate, options = {}) {
    return new Promise((resolve, reject) => {
      const deadline = Date.now() + (options.timeoutMs ?? 600000);
      const { def, body, md } = this.prepare(this.jobs, 'WatchJob', { job_id: jobId }); // a throw rejects
      const call = this.jobs.makeServerStreamRequest(def.path, (b) => b, def.responseDeserialize, body, md, { deadline });
      this.streams.add(call);
      let done = false;
      let last = null;
      /** Settles once; the stream is no longer ours to cancel from then on. */
      const settle = () => {
        if (done) return false;
        done = true;
        this.streams.delete(call);
        return true;
      };
      call.on('data', (msg) => {
        last = decodeJob(msg.job);
        if (onUpdate) onUpdate(last, msg.event ?? null);
        if (TERMINAL_STATES.has(last.state) && settle()) {
          resolve(last);
          call.cancel(); // the server ends the stream too; do not wait for it
        }
      });
      call.on('error', (err) => {
        if (settle()) reject(err);
      });
      call.on('end', () => {
        if (!settle()) return;
        this.pollUntilTerminal(jobId, deadline).then((job) => {
          const final = { ...job, watch_ended_early: true };
          if (onUpdate) onUpdate(final, null);
          return final;
        }).then(resolve, reject);
      });
    });
  }

  /**
   * Reads a job with GetJob until it is terminal, backing off from 50 ms to 1 s between reads.
   * @param {string} jobId
   * @param {number} deadline epoch milliseconds
   */
  async pollUntilTerminal(jobId, deadline) {
    for (let pause = 50; ; pause = Math.min(pause * 2, 1000)) {
      const job = await this.getJob(jobId);
      if (TERMINAL_STATES.has(job.state)) return job;
      if (Date.now() + pause > deadline) throw new Error(`job ${jobId} not terminal by the deadline (${job.state})`);
      await new Promise((r) => setTimeout(r, pause));
    }
  }

  /** The job's result (GetJobResult), waiting for the job to finish when `wait` is true. */
  async getJobResult(jobId, { wait = false, timeoutMs } = {}) {
    const res = await this.unary(this.jobs, 'GetJobResult', { job_id: jobId, wait }, timeoutMs);
    const result = res.result;
    if (result && result.output === 'result') result.result_json = fromStruct(result.result);
    return { job: decodeJob(res.job), result };
  }

  /** Cancels a job. */
  async cancelJob(jobId, reason = '') {
    return decodeJob((await this.unary(this.jobs, 'CancelJob', { job_id: jobId, reason })).job);
  }

  /**
   * The latest receipt of a job with its inclusion proof and checkpoint.
   * @returns {Promise<{envelope: Buffer, leafIndex: string, receipt: object, inclusionProof: object, checkpoint: object}>}
   */
  async getReceipt(jobId) {
    const res = await this.unary(this.receipts, 'GetReceipt', { job_id: jobId });
    if (res.receipt.leaf_index !== res.inclusion_proof.leaf_index) {
      throw new Error(`receipt leaf ${res.receipt.leaf_index} but proof for leaf ${res.inclusion_proof.leaf_index}`);
    }
    return {
      envelope: Buffer.from(res.receipt.envelope),
      leafIndex: res.inclusion_proof.leaf_index,
      receipt: res.receipt,
      inclusionProof: res.inclusion_proof,
      checkpoint: res.checkpoint,
    };
  }

  /** Every signing key, as a key set in the JSON format of docs/receipts.md section 4. */
  async getSigningKeys() {
    const res = await this.unary(this.receipts, 'GetSigningKeys', {});
    return { keys: res.keys.map(keyToJson) };
  }

  /** The latest checkpoint. */
  async getCheckpoint() {
    return (await this.unary(this.receipts, 'GetCheckpoint', {})).checkpoint;
  }

  /** A consistency proof between two tree sizes (0 as second size: the latest). */
  async getConsistencyProof(firstSize, secondSize = 0) {
    const res = await this.unary(this.receipts, 'GetConsistencyProof', { first_size: String(firstSize), second_size: String(secondSize) });
    return res.proof;
  }

  /**
   * Fetches a job's receipt and the key set and verifies the receipt bundle. For real trust, pass pinned
   * keys (`options.keySet`) instead of trusting the keys the same server hands out.
   * @param {string} jobId
   * @param {{keySet?: object, policy?: object}} [options]
   */
  async fetchAndVerifyReceipt(jobId, options = {}) {
    const keySet = options.keySet ?? (await this.getSigningKeys());
    const receipt = await this.getReceipt(jobId);
    return { receipt, bundle: receiptToBundle(receipt), verification: verifyReceiptResponse(receipt, keySet, options) };
  }

  /** Cancels open watches and closes the channel. */
  close() {
    for (const call of this.streams) call.cancel();
    this.jobs.close();
  }
}

module.exports = {
  CoordinatorClient,
  loadContract,
  loadHealth,
  receiptToBundle,
  verifyReceiptResponse,
  keyToJson,
  TERMINAL_STATES,
  DEFAULT_PROTO_DIR,
};
