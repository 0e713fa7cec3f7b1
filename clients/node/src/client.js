'use strict';
/**
 * A thin Node.js client of the AITBC coordinator, built at run time from the contract in proto/ (no
 * generated code to go stale). It converts at the edge only: JSON payloads to google.protobuf.Struct, key
 * sets to the JSON format of docs/receipts.md, receipts to bundles; everything else is the proto shape
 * (snake_case fields, enums as their names, 64-bit integers as decimal strings).
 */
const path = require('node:path');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { toStruct, fromStruct } = require('./struct');
const { formatRfc3339 } = require('./time');
const { makeBundle, verifyBundle } = require('./bundle');
const { loadKeySet, KeySet } = require('./keys');
const { signingEntries } = require('./signing');
const { errorDetails, withDetails, noDetails } = require('./status');

/** Where the contract lives when this package sits in the repository (clients/node -> proto/). */
const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', '..', 'proto');
const HEALTH_PROTO = path.resolve(__dirname, '..', 'proto-extra', 'health.proto');
const CONTRACT_FILES = ['job_service.proto', 'receipt_service.proto', 'miner_service.proto', 'admin_service.proto']
  .map((f) => `aitbc/coordinator/v1/${f}`);

const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const TERMINAL_STATES = new Set(['JOB_STATE_COMPLETED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELED', 'JOB_STATE_EXPIRED']);
/** GetJobResult with `wait` and no timeout of the caller's: the coordinator waits at most 15 minutes. */
const RESULT_WAIT_TIMEOUT_MS = 900000;
/**
 * Calls safe to repeat are made again after UNAVAILABLE (the coordinator unreachable or restarting, its store
 * briefly out: STORE_UNAVAILABLE), waiting a RetryInfo delay when the error has one, else a jittered backoff;
 * all tries of a call share its deadline, and by default only the deadline ends them (`attempts`: a cap on
 * the tries, or on a watch's failures in a row; a cap of 5 gave up on a coordinator down for about 3 s). A
 * submit is repeated only with an idempotency key (UNAVAILABLE may come after the job was stored), which the
 * client generates for a job without one unless `generateIdempotencyKeys: false`.
 * RESOURCE_EXHAUSTED (a rate limit) is the application's: `err.retryAfterMs`.
 */
const DEFAULT_RETRY = { attempts: Infinity, backoffMs: 200, backoffMaxMs: 5000 };
const UNAVAILABLE = grpc.status.UNAVAILABLE;
/**
 * A RetryInfo delay is the coordinator's "not before": never shortened (full jitter would retry early), only
 * lengthened by up to a fifth, so that the clients one STORE_UNAVAILABLE answered (1 s) do not all come back
 * at the same instant but over 200 ms.
 */
const RETRY_INFO_JITTER = 1.2;

/** A RetryInfo delay as waited: `delayMs` times a random factor in [1, RETRY_INFO_JITTER]. */
function jittered(delayMs) {
  return delayMs * (1 + Math.random() * (RETRY_INFO_JITTER - 1));
}

const GENERATED_KEY_PREFIX = 'auto-';

/**
 * A key for a submit whose caller gave none: `auto-` and a UUIDv7 (RFC 9562: 48 bits of Unix milliseconds, 74
 * random bits), as the Python SDK makes. Time-ordered, so the store's unique (client, key) index takes new
 * keys at its end; random enough never to meet another call's key (which would answer that call's job, or
 * IDEMPOTENCY_KEY_REUSED). 41 characters (the coordinator takes 128).
 */
function newIdempotencyKey() {
  const raw = Buffer.alloc(16);
  raw.writeUIntBE(Date.now(), 0, 6);
  crypto.randomFillSync(raw, 6);
  raw[6] = 0x70 | (raw[6] & 0x0f); // version 7
  raw[8] = 0x80 | (raw[8] & 0x3f); // variant 10
  const hex = raw.toString('hex');
  return `${GENERATED_KEY_PREFIX}${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Channel keepalive, as the Python SDK's (clients/python/aitbc/channel.py): a ping every 20 s, one unanswered
 * for 10 s ends the connection and its calls UNAVAILABLE (a watch then resumes), idle or not. grpc-js sends
 * none by default: a coordinator host gone silent (packets dropped) held a watch until its deadline. The
 * coordinator accepts pings every 5 s or more (below it: GOAWAY too_many_pings).
 */
const SERVER_MIN_PING_INTERVAL_MS = 5000;
const MAX_TIMER_MS = 2 ** 31 - 1; // Node's timers take no longer delay (a longer one fires after 1 ms)
const DEFAULT_KEEPALIVE = { timeMs: 20000, timeoutMs: 10000 };

const CLIENT_OPTIONS = ['apiKey', 'hmacSecret', 'credentials', 'protoDir', 'timeoutMs', 'retry', 'generateIdempotencyKeys',
  'keepalive', 'channelOptions'];

/**
 * Refuses what the constructor would otherwise ignore without a word: options that are not an object (an API key in
 * their place, its options after it), and option names it does not take (a misspelled `timeout` would leave the
 * 30 s default in force).
 */
function checkOptions(options, extra) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`options must be an object, as in new CoordinatorClient(address, { apiKey: ... }), not ${Array.isArray(options) ? 'an array' : typeof options}`);
  }
  if (extra > 0) {
    throw new TypeError('new CoordinatorClient(address, options) takes two arguments (the API key goes in options.apiKey)');
  }
  const unknown = Object.keys(options).filter((name) => !CLIENT_OPTIONS.includes(name));
  if (unknown.length > 0) {
    throw new TypeError(`unknown option${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}: CoordinatorClient takes ${CLIENT_OPTIONS.join(', ')}`);
  }
}

/** Refuses retry settings no backoff can be made of (NaN retried in a busy loop; a string, or Infinity, too). */
function checkRetry({ attempts, backoffMs, backoffMaxMs }) {
  if (!(attempts === Infinity || (Number.isInteger(attempts) && attempts >= 1))) {
    throw new RangeError(`retry.attempts is a whole number of tries, 1 or more (or Infinity), not ${attempts}`);
  }
  for (const [name, value] of [['backoffMs', backoffMs], ['backoffMaxMs', backoffMaxMs]]) {
    if (typeof value !== 'number' || !(value > 0 && value <= MAX_TIMER_MS)) {
      throw new RangeError(`retry.${name} is a number of milliseconds, more than 0 and at most ${MAX_TIMER_MS}, not ${value}`);
    }
  }
}

/** The grpc-js channel options of a keepalive ({timeMs, timeoutMs}); refuses one the coordinator would not. */
function keepaliveOptions({ timeMs, timeoutMs }) {
  // (at most MAX_TIMER_MS: Infinity, or any longer delay, would be a timer of 1 ms in grpc-js)
  if (!(timeMs > SERVER_MIN_PING_INTERVAL_MS && timeMs <= MAX_TIMER_MS) || !(timeoutMs > 0 && timeoutMs <= MAX_TIMER_MS)) {
    throw new RangeError(`keepalive timeMs must exceed ${SERVER_MIN_PING_INTERVAL_MS} (the coordinator's minimum), timeoutMs be > 0`);
  }
  return {
    'grpc.keepalive_time_ms': timeMs,
    'grpc.keepalive_timeout_ms': timeoutMs,
    'grpc.keepalive_permit_without_calls': 1,
  };
}

/**
 * Whether a failed try was cut on its way, its outcome unknown: UNAVAILABLE, or a stream the coordinator's
 * process closed (stopping) without a gRPC status, which grpc-js reports as INTERNAL "Received RST_STREAM with
 * code 0 (Call ended without gRPC status)" (not an answer: the coordinator's own INTERNAL carries a reason).
 * A watch threw it and gave up on a restarting coordinator about one time in six.
 */
function wasCut(err) {
  if (err.code === UNAVAILABLE) return true;
  // what gRPC answers a call a stopping coordinator had received but not started (nothing of it was done);
  // not this client's own: close() ends the retries
  if (err.code === grpc.status.CANCELLED) return true;
  return err.code === grpc.status.INTERNAL && !err.reason && /^Received RST_STREAM with code 0\b/.test(err.details ?? '');
}

/**
 * The error of a watch whose deadline passed: DEADLINE_EXCEEDED, saying the job's last state seen and the cut
 * it was waiting out (`lastJob`, `cause`), not the bare status of the stream or of its last try.
 */
function watchTimedOut(jobId, timeoutMs, progress, failure) {
  const seen = progress.job ? `last seen ${progress.job.state.replace(/^JOB_STATE_/, '')}, sequence ${progress.after}` : 'not seen';
  const cut = progress.cut ? `; last cut: ${progress.cut.message}` : '';
  const details = `job ${jobId} not terminal within ${timeoutMs / 1000} s (${seen})${cut}`;
  // (the cut, not the last try: a try made as the deadline passes ends DEADLINE_EXCEEDED itself)
  return Object.assign(new Error(`4 DEADLINE_EXCEEDED: ${details}`, { cause: progress.cut ?? failure }),
    { code: grpc.status.DEADLINE_EXCEEDED, details, metadata: failure.metadata ?? new grpc.Metadata(), lastJob: progress.job, ...noDetails() });
}

/** What a watch's onUpdate threw, carried out of the stream's listener to end the watch with it. */
class OnUpdateFailed {
  constructor(error) {
    this.error = error;
  }
}

/** The error of a call ended by close() between its tries: CANCELLED, as grpc-js ends a call in flight. */
function closedError() {
  return Object.assign(new Error('1 CANCELLED: the client was closed'),
    { code: grpc.status.CANCELLED, details: 'the client was closed', metadata: new grpc.Metadata(), ...noDetails() });
}

/**
 * Loads the coordinator's services from the .proto files. The well-known google/protobuf imports resolve
 * from proto-loader's bundled copies.
 * @param {string} [protoDir] directory holding aitbc/coordinator/v1/*.proto
 */
function loadContract(protoDir = DEFAULT_PROTO_DIR) {
  return grpc.loadPackageDefinition(loadDefinition(protoDir)).aitbc.coordinator.v1;
}

/** The contract's proto-loader package definition (its messages' and enums' descriptors by full name). */
function loadDefinition(protoDir = DEFAULT_PROTO_DIR) {
  return protoLoader.loadSync(CONTRACT_FILES, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
}

/** Loads grpc.health.v1.Health. */
function loadHealth() {
  return grpc.loadPackageDefinition(protoLoader.loadSync(HEALTH_PROTO, LOADER_OPTIONS)).grpc.health.v1.Health;
}

/**
 * A google.protobuf.Duration from seconds (fractions allowed): nanos within +-999999999 and of the sign of
 * seconds, as the type requires (1.9999999999 rounded to {1, 1000000000}, which the coordinator refuses).
 * @param {number} seconds
 * @param {string} name the option's name, for the error
 */
function duration(seconds, name) {
  const value = typeof seconds === 'string' && seconds.trim() !== '' ? Number(seconds) : seconds;
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new TypeError(`${name} is a number of seconds, not ${JSON.stringify(seconds) ?? typeof seconds}`);
  let whole = Math.trunc(value);
  let nanos = Math.round((value - whole) * 1e9);
  if (Math.abs(nanos) === 1e9) {
    whole += Math.sign(nanos);
    nanos = 0;
  }
  return { seconds: String(whole), nanos: nanos === 0 ? 0 : nanos };
}

const SUBMIT_OPTIONS = ['constraints', 'priority', 'ttlSeconds', 'maxAttempts', 'executionTimeoutSeconds', 'idempotencyKey', 'metadata'];

/**
 * Refuses constraint names the contract's Constraints does not have (a camelCase `maxPrice` was dropped by the
 * serializer without a word: a job with no price cap, a quote over every miner), as the Python SDK does.
 */
function checkConstraints(constraints, known) {
  if (constraints === undefined || constraints === null) return;
  if (typeof constraints !== 'object' || Array.isArray(constraints)) throw new TypeError('constraints is an object of Constraints fields (snake_case)');
  const unknown = Object.keys(constraints).filter((name) => !known.includes(name));
  if (unknown.length > 0) {
    throw new TypeError(`unknown constraint${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}: Constraints has ${known.join(', ')}`);
  }
}

/** A google.protobuf.Timestamp message object as RFC 3339, or undefined when unset. */
function timestampToRfc3339(ts) {
  return ts ? formatRfc3339(ts.seconds, ts.nanos) : undefined;
}

/**
 * A SubmitJobRequest from a payload (JSON object or bytes) and submitJob's options; refuses option and constraint
 * names it would otherwise drop (as the Python SDK and the constructor do).
 */
function submitRequest(payload, options, constraintFields) {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) throw new TypeError('submit options must be an object');
  const unknown = Object.keys(options).filter((name) => !SUBMIT_OPTIONS.includes(name));
  if (unknown.length > 0) {
    throw new TypeError(`unknown submit option${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}: submitJob takes ${SUBMIT_OPTIONS.join(', ')}`);
  }
  checkConstraints(options.constraints, constraintFields);
  for (const name of ['priority', 'maxAttempts']) { // (5.5 went as 5, '3' as 3, without a word)
    if (options[name] !== undefined && options[name] !== null && !Number.isInteger(options[name])) throw new TypeError(`${name} is an integer, not ${JSON.stringify(options[name]) ?? typeof options[name]}`);
  }
  const request = payload instanceof Uint8Array ? { payload_bytes: Buffer.from(payload) } : { payload: toStruct(payload) };
  if (options.constraints) request.constraints = options.constraints;
  if (options.priority !== undefined && options.priority !== null) request.priority = options.priority;
  if (options.ttlSeconds !== undefined) request.ttl = duration(options.ttlSeconds, 'ttlSeconds');
  if (options.maxAttempts !== undefined && options.maxAttempts !== null) request.max_attempts = options.maxAttempts;
  if (options.executionTimeoutSeconds !== undefined) request.execution_timeout = duration(options.executionTimeoutSeconds, 'executionTimeoutSeconds');
  if (options.idempotencyKey !== undefined) request.idempotency_key = options.idempotencyKey;
  if (options.metadata) request.metadata = options.metadata;
  return request;
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
   * @param {number} [options.timeoutMs] deadline of unary calls, all their tries included (default 30 s)
   * @param {{attempts?: number, backoffMs?: number, backoffMaxMs?: number}} [options.retry] see DEFAULT_RETRY
   *   (`{attempts: 1}`: never again; default: until the call's deadline)
   * @param {boolean} [options.generateIdempotencyKeys] a job submitted without an `idempotencyKey` gets one
   *   (`auto-` and a UUIDv7) made once per call, so that its submit is made again after UNAVAILABLE like any
   *   call safe to repeat (default true; false: sent without, never made again)
   * @param {{timeMs?: number, timeoutMs?: number}} [options.keepalive] the channel's pings (DEFAULT_KEEPALIVE:
   *   every 20 s, 10 s to answer; timeMs above 5000, the coordinator's minimum)
   * @param {object} [options.channelOptions] further grpc-js channel options
   */
  constructor(address, options = {}, ...extra) {
    checkOptions(options, extra.length);
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    const definition = loadDefinition(options.protoDir);
    const v1 = grpc.loadPackageDefinition(definition).aitbc.coordinator.v1;
    /** Names the serializer would drop or turn into 0 without a word, checked before a call. */
    this.constraintFields = definition['aitbc.coordinator.v1.Constraints'].type.field.map((f) => f.name);
    this.jobStates = new Map(definition['aitbc.coordinator.v1.JobState'].type.value.map((v) => [v.name, v.number]));
    const Health = loadHealth();
    this.apiKey = options.apiKey;
    this.hmacSecret = options.hmacSecret;
    this.timeoutMs = options.timeoutMs ?? 30000;
    // (an option given as null or undefined keeps its default: a NaN backoff retried in a busy loop)
    const retry = Object.entries(options.retry ?? {}).filter(([, value]) => value !== undefined && value !== null);
    this.retry = { ...DEFAULT_RETRY, ...Object.fromEntries(retry) };
    checkRetry(this.retry);
    this.generateIdempotencyKeys = options.generateIdempotencyKeys ?? true;
    const keepalive = { timeMs: options.keepalive?.timeMs ?? DEFAULT_KEEPALIVE.timeMs, timeoutMs: options.keepalive?.timeoutMs ?? DEFAULT_KEEPALIVE.timeoutMs };
    const channelOptions = { ...keepaliveOptions(keepalive), ...options.channelOptions };
    this.jobs = new v1.JobService(address, credentials, channelOptions);
    // The other stubs share the first one's channel: one connection per coordinator.
    const channelOverride = this.jobs.getChannel();
    this.receipts = new v1.ReceiptService(address, credentials, { channelOverride });
    this.admin = new v1.AdminService(address, credentials, { channelOverride });
    this.health = new Health(address, credentials, { channelOverride });
    /** Open watch streams, canceled by close(). */
    this.streams = new Set();
    /** Unary calls in flight and pauses before a next try, ended by close() (CANCELLED). */
    this.calls = new Set();
    this.pauses = new Set();
    this.closed = false;
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

  /**
   * Calls a unary method and returns a promise of its response; errors carry their google.rpc details
   * (`err.reason`, `err.violations`, `err.retryAfterMs`). A call that is `repeatable` is made again after
   * UNAVAILABLE within its deadline. settleRepeat(err, deadline): for a try made after an earlier one may have
   * taken effect, the call's answer (not undefined) instead of err; any call it makes keeps to `deadline`.
   */
  async unary(stub, method, request, timeoutMs = this.timeoutMs, { repeatable = false, settleRepeat } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.unaryOnce(stub, method, request, deadline);
      } catch (err) {
        withDetails(err);
        if (attempt > 1 && settleRepeat) {
          const answer = await settleRepeat(err, deadline);
          if (answer !== undefined) return answer;
        }
        const pause = this.retryPause(err, repeatable, attempt);
        if (pause === null || Date.now() + pause >= deadline) throw err;
        await this.pause(pause);
      }
    }
  }

  /**
   * Waits ms before a call's next try. close() ends the wait at once with CANCELLED: a closed client's calls
   * end as those in flight do (not after the pause, and no timer keeps the process alive).
   */
  pause(ms) {
    if (this.closed) return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      const wait = { reject, timer: setTimeout(() => { this.pauses.delete(wait); resolve(); }, ms) };
      this.pauses.add(wait);
    });
  }

  /** One try of a unary call (signed afresh: each try has a nonce of its own). */
  unaryOnce(stub, method, request, deadline) {
    return new Promise((resolve, reject) => {
      if (this.closed) throw closedError();
      const { def, body, md } = this.prepare(stub, method, request); // a throw here rejects the promise
      const call = stub.makeUnaryRequest(def.path, (b) => b, def.responseDeserialize, body, md, { deadline },
        (err, res) => {
          this.calls.delete(call);
          if (err) reject(err);
          else resolve(res);
        });
      this.calls.add(call);
    });
  }

  /**
   * Milliseconds to wait before trying a failed call again, or null: not again. waitsOutLimits: a
   * RESOURCE_EXHAUSTED whose RetryInfo says when to come back (a rate or a count; a size has none) is waited
   * out too: a watch's, which the client resumes by itself (every watch of an application at once after an
   * outage). Elsewhere a rate limit is the application's to handle (`err.retryAfterMs`).
   */
  retryPause(err, repeatable, attempt, { waitsOutLimits = false } = {}) {
    const delay = errorDetails(err)?.retryAfterMs;
    const limited = waitsOutLimits && err.code === grpc.status.RESOURCE_EXHAUSTED && delay !== null && delay !== undefined;
    if (attempt >= this.retry.attempts || !((wasCut(err) && repeatable) || limited)) return null;
    // (a delay of 0, from a proxy say, is taken as the first backoff's: no try again at once, until the deadline)
    if (delay !== null && delay !== undefined) return jittered(Math.max(delay, this.retry.backoffMs));
    return Math.min(this.retry.backoffMaxMs, this.retry.backoffMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
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
   * @param {string} [options.idempotencyKey] default: one generated for this call (see generateIdempotencyKeys)
   * @param {Object<string,string>} [options.metadata]
   * @returns {Promise<object>} the stored Job (with `payload_json`), plus `created`
   */
  async submitJob(payload, options = {}) {
    const { request, generated } = this.keyed(submitRequest(payload, options, this.constraintFields));
    const res = await this.unary(this.jobs, 'SubmitJob', request, undefined, { repeatable: Boolean(request.idempotency_key) });
    // a key of this call's own was never sent before it: the job is this call's even when a repeat answered it
    return { ...decodeJob(res.job), created: generated || res.created };
  }

  /**
   * Submits several jobs in one call: all are stored or none. Each entry without an idempotency key gets one
   * for this call (as by submitJob); made again after UNAVAILABLE only when every entry has a key.
   * @param {{payload: object|Uint8Array, options?: object}[]} entries payload and submitJob options of each
   * @returns {Promise<object[]>} the stored jobs (without payloads), each with `created`
   */
  async submitJobs(entries) {
    if (!Array.isArray(entries)) throw new TypeError('submitJobs takes an array of {payload, options}'); // (was "entries.map is not a function")
    const keyed = entries.map((e) => this.keyed(submitRequest(e.payload, e.options ?? {}, this.constraintFields)));
    const requests = keyed.map((k) => k.request);
    const repeatable = requests.length > 0 && requests.every((r) => r.idempotency_key);
    const res = await this.unary(this.jobs, 'SubmitJobs', { requests }, undefined, { repeatable });
    return res.responses.map((r, i) => ({ ...decodeJob(r.job), created: keyed[i].generated || r.created }));
  }

  /** A SubmitJobRequest as sent: with a key generated for this call when it has none (and generation is on). */
  keyed(request) {
    if (request.idempotency_key || !this.generateIdempotencyKeys) return { request, generated: false };
    return { request: { ...request, idempotency_key: newIdempotencyKey() }, generated: true };
  }

  /**
   * A page of the caller's jobs, newest first.
   * @param {{states?: string[], pageSize?: number, pageToken?: string}} [options]
   * @returns {Promise<{jobs: object[], next_page_token: string}>}
   */
  async listJobs({ states = [], pageSize = 0, pageToken = '' } = {}) {
    // (a name the enum does not have was sent as 0, UNSPECIFIED: every job listed, unfiltered)
    if (!Array.isArray(states)) throw new TypeError('states is an array of JobState names, e.g. [\'JOB_STATE_COMPLETED\']');
    const numbers = [...this.jobStates.values()];
    const unknown = states.filter((s) => !(this.jobStates.has(s) || numbers.includes(s)));
    if (unknown.length > 0) {
      throw new TypeError(`unknown job state${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}: JobState has ${[...this.jobStates.keys()].join(', ')}`);
    }
    const res = await this.unary(this.jobs, 'ListJobs', { states, page_size: pageSize, page_token: pageToken }, undefined, { repeatable: true });
    return { jobs: res.jobs.map(decodeJob), next_page_token: res.next_page_token };
  }

  /**
   * Prices a job before submitting it (QuoteCost): the cost range over the miners eligible now.
   * @param {object} [constraints] Constraints fields (snake_case), as for submitJob
   * @param {string} [units] expected units of work, a decimal string ('' means "1")
   * @returns {Promise<{eligible_miners: number, min_unit_price: string, max_unit_price: string, min_cost: string, max_cost: string}>}
   *   prices and costs as decimal strings, empty when no miner is eligible
   */
  async quoteCost(constraints = {}, units = '') {
    // (a number would be sent as its JS text, "1e-7" say, which the coordinator refuses: decimals are strings)
    if (typeof units !== 'string') throw new TypeError('units is a decimal string, e.g. "10"');
    checkConstraints(constraints, this.constraintFields);
    return this.unary(this.jobs, 'QuoteCost', { constraints, units }, undefined, { repeatable: true });
  }

  /**
   * The caller's usage account (GetUsage): balance (negative: spent), receipts booked, units.
   * @returns {Promise<{account_id: string, kind: string, balance: string, receipts: string, units: string, updated_at: object|null}>}
   */
  async getUsage() {
    return (await this.unary(this.jobs, 'GetUsage', {}, undefined, { repeatable: true })).account;
  }

  /**
   * Returns a job.
   * @param {string} jobId
   * @param {{deadline?: number}} [options] epoch milliseconds to end by (default: `timeoutMs` from now)
   */
  async getJob(jobId, { deadline } = {}) {
    const timeoutMs = deadline === undefined ? undefined : Math.max(deadline - Date.now(), 0);
    return decodeJob((await this.unary(this.jobs, 'GetJob', { job_id: jobId }, timeoutMs, { repeatable: true })).job);
  }

  /**
   * Follows a job until it is terminal. A stream cut on the way (UNAVAILABLE, or ended before the terminal
   * state) is resumed after the last `sequence` received (WatchJobRequest.after_sequence): no change is
   * missed or repeated. A coordinator down for a while is waited out until the watch's deadline (or
   * `retry.attempts` cuts in a row, if capped); the deadline passing ends it DEADLINE_EXCEEDED with the job's
   * last state seen and the last cut in its message (`err.lastJob`, `err.cause`). A coordinator whose history
   * of the job ends before the last sequence received (its store restored from an older copy) answers
   * OUT_OF_RANGE (`SEQUENCE_OUT_OF_RANGE`), thrown as it is.
   * @param {string} jobId
   * @param {(job: object, event: object|null, sequence: number) => void} [onUpdate] called for every message
   *   (event null for the first: the job as it was when the watch began)
   * @param {{timeoutMs?: number}} [options] deadline of the whole watch (default 10 minutes)
   * @returns {Promise<object>} the job in its terminal state
   */
  async watchJob(jobId, onUpdate, options = {}) {
    if (onUpdate !== undefined && onUpdate !== null && typeof onUpdate !== 'function') {
      // (its options in onUpdate's place: their timeoutMs was ignored and the first message threw a bare TypeError)
      throw new TypeError(`watchJob(jobId, onUpdate, options): onUpdate must be a function or undefined, not ${typeof onUpdate}`);
    }
    const timeoutMs = options.timeoutMs ?? 600000;
    const deadline = Date.now() + timeoutMs;
    const progress = { after: 0, failures: 0, job: null, cut: null };
    for (;;) {
      let failure;
      try {
        const job = await this.watchOnce(jobId, onUpdate, deadline, progress);
        if (job) return job;
        failure = Object.assign(new Error(`14 UNAVAILABLE: the watch of ${jobId} ended before the job was terminal`),
          { code: UNAVAILABLE, details: 'the watch ended before the job was terminal', metadata: new grpc.Metadata(), ...noDetails() });
      } catch (err) {
        if (err instanceof OnUpdateFailed) throw err.error; // the caller's, not a cut: never tried again
        failure = withDetails(err);
      }
      if (failure.code === grpc.status.DEADLINE_EXCEEDED) throw watchTimedOut(jobId, timeoutMs, progress, failure);
      progress.failures += 1;
      progress.cut = failure;
      const pause = this.retryPause(failure, true, progress.failures, { waitsOutLimits: true });
      if (pause === null) throw failure;
      if (Date.now() + pause >= deadline) throw watchTimedOut(jobId, timeoutMs, progress, failure);
      await this.pause(pause);
    }
  }

  /**
   * One WatchJob stream from `progress.after`: resolves with the terminal job, or null when the stream ended
   * before it; rejects with the stream's error. Each message moves progress on.
   */
  watchOnce(jobId, onUpdate, deadline, progress) {
    return new Promise((resolve, reject) => {
      if (this.closed) throw closedError();
      const request = { job_id: jobId, after_sequence: String(progress.after) };
      const { def, body, md } = this.prepare(this.jobs, 'WatchJob', request); // a throw rejects
      const call = this.jobs.makeServerStreamRequest(def.path, (b) => b, def.responseDeserialize, body, md, { deadline });
      this.streams.add(call);
      let done = false;
      /** Settles once; the stream is no longer ours to cancel from then on. */
      const settle = () => {
        if (done) return false;
        done = true;
        this.streams.delete(call);
        return true;
      };
      call.on('data', (msg) => {
        if (done) return;
        const job = decodeJob(msg.job);
        progress.after = Number(msg.sequence);
        progress.failures = 0;
        progress.job = job;
        progress.cut = null;
        try {
          if (onUpdate) onUpdate(job, msg.event ?? null, progress.after);
        } catch (err) {
          // the caller's own failure ends the watch with it, as a Python consumer's exception does (thrown
          // from this listener it was an unhandled rejection, and the watch went on to its deadline)
          if (settle()) reject(new OnUpdateFailed(err));
          call.cancel();
          return;
        }
        if (TERMINAL_STATES.has(job.state) && settle()) {
          resolve(job);
          call.cancel(); // the server ends the stream too; do not wait for it
        }
      });
      call.on('error', (err) => {
        if (settle()) reject(err);
      });
      call.on('end', () => {
        if (settle()) resolve(null);
      });
    });
  }

  /**
   * Reads a job with GetJob until it is terminal, backing off from 50 ms to 1 s between reads; every read
   * within the deadline, every pause ended by close().
   * @param {string} jobId
   * @param {number} deadline epoch milliseconds
   */
  async pollUntilTerminal(jobId, deadline) {
    for (let pause = 50; ; pause = Math.min(pause * 2, 1000)) {
      const job = await this.getJob(jobId, { deadline });
      if (TERMINAL_STATES.has(job.state)) return job;
      if (Date.now() + pause > deadline) throw new Error(`job ${jobId} not terminal by the deadline (${job.state})`);
      await this.pause(pause);
    }
  }

  /** The job's result (GetJobResult), waiting for the job to finish when `wait` is true. */
  async getJobResult(jobId, { wait = false, timeoutMs } = {}) {
    const timeout = timeoutMs ?? (wait ? RESULT_WAIT_TIMEOUT_MS : this.timeoutMs);
    const res = await this.unary(this.jobs, 'GetJobResult', { job_id: jobId, wait }, timeout, { repeatable: true });
    const result = res.result;
    if (result && result.output === 'result') result.result_json = fromStruct(result.result);
    return { job: decodeJob(res.job), result };
  }

  /**
   * Cancels a job. Made again after UNAVAILABLE: should an earlier try have canceled it, the job (CANCELED)
   * is the answer, not the JOB_TERMINAL of the repeat.
   */
  async cancelJob(jobId, reason = '') {
    const settleRepeat = async (err, deadline) => {
      if (err.reason !== 'JOB_TERMINAL') return undefined;
      // read within what is left of the cancel's deadline (a deadline of its own outlived the caller's)
      const job = await this.getJob(jobId, { deadline });
      return job.state === 'JOB_STATE_CANCELED' ? { job } : undefined;
    };
    const res = await this.unary(this.jobs, 'CancelJob', { job_id: jobId, reason }, undefined, { repeatable: true, settleRepeat });
    return decodeJob(res.job); // (a job GetJob decoded decodes again to the same)
  }

  /**
   * The latest receipt of a job with its inclusion proof and checkpoint.
   * @returns {Promise<{envelope: Buffer, leafIndex: string, receipt: object, inclusionProof: object, checkpoint: object}>}
   */
  async getReceipt(jobId) {
    const res = await this.unary(this.receipts, 'GetReceipt', { job_id: jobId }, undefined, { repeatable: true });
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

  /** Every receipt of a job, oldest first (ListReceipts): Receipt messages, `envelope` as a Buffer. */
  async listReceipts(jobId) {
    return (await this.unary(this.receipts, 'ListReceipts', { job_id: jobId }, undefined, { repeatable: true })).receipts;
  }

  /** Every signing key, as a key set in the JSON format of docs/receipts.md section 4. */
  async getSigningKeys() {
    const res = await this.unary(this.receipts, 'GetSigningKeys', {}, undefined, { repeatable: true });
    return { keys: res.keys.map(keyToJson) };
  }

  /** The latest checkpoint. */
  async getCheckpoint() {
    return (await this.unary(this.receipts, 'GetCheckpoint', {}, undefined, { repeatable: true })).checkpoint;
  }

  /** An inclusion proof of a leaf in the tree of a size (0: the latest checkpoint's). */
  async getInclusionProof(leafIndex, treeSize = 0) {
    const res = await this.unary(this.receipts, 'GetInclusionProof', { leaf_index: String(leafIndex), tree_size: String(treeSize) }, undefined, { repeatable: true });
    return res.proof;
  }

  /** A consistency proof between two tree sizes (0 as second size: the latest). */
  async getConsistencyProof(firstSize, secondSize = 0) {
    const res = await this.unary(this.receipts, 'GetConsistencyProof', { first_size: String(firstSize), second_size: String(secondSize) }, undefined, { repeatable: true });
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

  /** Cancels open watches and calls (CANCELLED, not tried again), ends their pauses, closes the channel. */
  close() {
    this.closed = true;
    for (const wait of this.pauses) {
      clearTimeout(wait.timer);
      wait.reject(closedError());
    }
    this.pauses.clear();
    for (const call of [...this.streams, ...this.calls]) call.cancel();
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
  DEFAULT_RETRY,
  DEFAULT_KEEPALIVE,
  RETRY_INFO_JITTER,
  errorDetails,
  newIdempotencyKey,
  jittered,
  keepaliveOptions,
};
