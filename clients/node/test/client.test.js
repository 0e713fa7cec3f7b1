'use strict';
/**
 * The client's own conversions, which need no server: the contract loads from proto/, Struct payloads
 * round-trip, and the key set the client builds from GetSigningKeys is one the verifier accepts.
 * (The calls themselves are exercised against the real coordinator in integration.test.js.)
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { CoordinatorClient, loadContract, loadHealth, keyToJson, receiptToBundle } = require('../src/client');
const { signingEntries } = require('../src/signing');
const { toStruct, fromStruct } = require('../src/struct');
const v = require('../src/verify');

test('the contract loads from the repository proto/ directory, well-known types included', () => {
  const v1 = loadContract();
  for (const [service, method] of [['JobService', 'SubmitJob'], ['JobService', 'WatchJob'], ['ReceiptService', 'GetReceipt'], ['ReceiptService', 'GetSigningKeys'], ['MinerService', 'Connect']]) {
    assert.equal(typeof v1[service].service[method], 'object', `${service}.${method}`);
  }
  assert.equal(v1.JobService.service.WatchJob.responseStream, true);
  assert.equal(typeof loadHealth().service.Check, 'object');
});

test('JSON payloads round-trip through google.protobuf.Struct, and encode on the wire', () => {
  const value = { prompt: 'hello', n: 2, f: 0.5, ok: true, none: null, list: [1, 'a', { b: [] }], nested: { x: {} } };
  const struct = toStruct(value);
  assert.deepEqual(struct.fields.prompt, { stringValue: 'hello' });
  // Through the real message type: encode, decode with the client's loader options.
  const SubmitJobRequest = loadContract().SubmitJobRequest;
  assert.ok(SubmitJobRequest, 'message constructor');
  const bytes = SubmitJobRequest.serialize({ payload: struct });
  const back = SubmitJobRequest.deserialize(bytes);
  assert.deepEqual(fromStruct(back.payload), value);
  assert.throws(() => toStruct([1, 2]), TypeError);
  assert.throws(() => toStruct({ x: NaN }), TypeError);
});

test('a SigningKey message becomes a key set entry of the spec, which the verifier loads', () => {
  const raw = v.rawFromPublicKey(crypto.generateKeyPairSync('ed25519').publicKey);
  const message = {
    key_id: v.keyId(raw),
    role: 'KEY_ROLE_LOG',
    status: 'KEY_STATUS_RETIRED',
    public_key: raw,
    valid_from: { seconds: '1795733219', nanos: 123456000 },
    valid_until: { seconds: '1795733220', nanos: 5 },
    note_verifier_key: v.formatVerifierKey('aitbc.coordinator/x', raw),
    owner: '',
  };
  const entry = keyToJson(message);
  assert.deepEqual(entry, {
    key_id: message.key_id,
    role: 'log',
    status: 'retired',
    public_key: raw.toString('hex'),
    valid_from: '2026-11-26T22:46:59.123456Z',
    valid_until: '2026-11-26T22:47:00.000000005Z',
    note_verifier_key: message.note_verifier_key,
  });
  const [key] = v.loadKeySet({ keys: [entry] }).keys;
  // The verifier keeps microseconds, as receipts do (the 5 ns are dropped).
  assert.equal(key.validUntil - key.validFrom, 1000000000n - 123456000n);
  assert.equal(keyToJson({ ...message, valid_until: null }).valid_until, undefined);
});

test('a GetReceipt response becomes the bundle of spec section 7', () => {
  const envelope = Buffer.from('{"payload":"e30=","payloadType":"t","signatures":[]}');
  const bundle = receiptToBundle({
    envelope,
    leafIndex: '3',
    inclusionProof: { leaf_index: '3', tree_size: '9', hashes: [Buffer.alloc(32, 1)] },
    checkpoint: { note: 'origin\n9\nroot\n\n\u2014 origin sig\n' },
  });
  assert.deepEqual(bundle, {
    envelope: envelope.toString('base64'),
    leaf_index: 3,
    inclusion_proof: { tree_size: 9, hashes: ['01'.repeat(32)] },
    checkpoint: 'origin\n9\nroot\n\n\u2014 origin sig\n',
  });
  assert.throws(() => receiptToBundle({ envelope, leafIndex: '9007199254740993', inclusionProof: { tree_size: '1', hashes: [] }, checkpoint: { note: '' } }), { code: 'BAD_BUNDLE' });
});

// Request signing: the same signatures as the Python SDK (values printed by aitbc.signing.signing_metadata
// for the same secret, method, body, time and nonce), and the client signs the very bytes it sends.
test('signing entries match the Python SDK for a unary body and for a streamed call', () => {
  const secret = 'carol-hmac-secret-0001';
  const fixed = { timestamp: 1718000000.25, nonce: '0123456789abcdef' };
  const body = Buffer.from('0a056a6f622d31', 'hex'); // GetJobRequest{job_id: "job-1"}
  assert.deepEqual(signingEntries(secret, '/aitbc.coordinator.v1.JobService/GetJob', body, fixed), [
    ['x-aitbc-timestamp', '1718000000.250'], ['x-aitbc-nonce', '0123456789abcdef'],
    ['x-aitbc-signature', '415cbdfd515f113b60dc3acc8637da4ad8ae417b9d6c5b8dbecf4fb060a1bb34'],
  ]);
  assert.equal(signingEntries(secret, '/aitbc.coordinator.v1.MinerService/Connect', null, fixed)[2][1],
    '40fe84c53b2dc31730800f39a222a0fa16b6a268b92e65d8fdb3da2bc3dbe7c6');
  const nonces = new Set(Array.from({ length: 50 }, () => signingEntries(secret, '/m', body)[1][1]));
  assert.equal(nonces.size, 50); // a fresh nonce per call
});

test('a client with a signing secret signs the serialized request it will send', () => {
  const client = new CoordinatorClient('127.0.0.1:9', { apiKey: 'client-key-3', hmacSecret: 'carol-hmac-secret-0001' });
  try {
    const { def, body, md } = client.prepare(client.jobs, 'GetJob', { job_id: 'job-1' });
    assert.equal(def.path, '/aitbc.coordinator.v1.JobService/GetJob');
    assert.deepEqual(body, Buffer.from('0a056a6f622d31', 'hex'));
    const [ts, nonce, sig] = ['x-aitbc-timestamp', 'x-aitbc-nonce', 'x-aitbc-signature'].map((k) => md.get(k)[0]);
    const expected = signingEntries('carol-hmac-secret-0001', def.path, body, { timestamp: Number(ts), nonce });
    assert.equal(sig, expected[2][1]);
    assert.deepEqual(md.get('x-api-key'), ['client-key-3']);
    const plain = new CoordinatorClient('127.0.0.1:9', { apiKey: 'client-key-1' });
    assert.deepEqual(plain.prepare(plain.jobs, 'GetJob', { job_id: 'job-1' }).md.get('x-aitbc-signature'), []);
    plain.close();
  } finally {
    client.close();
  }
});

test('a request that cannot be serialized rejects with a status code, as grpc-js reports it', async () => {
  const client = new CoordinatorClient('127.0.0.1:9', { apiKey: 'client-key-1', hmacSecret: 'carol-hmac-secret-0001' });
  try {
    const call = client.submitJob({ a: 1 }, { constraints: { models: 'not-a-list' } });
    assert.ok(call instanceof Promise); // no synchronous throw
    await assert.rejects(call, (err) => err.code === 13 && /serialization failure/.test(err.details));
  } finally {
    client.close();
  }
});

test('errorDetails reads ErrorInfo, BadRequest and RetryInfo from grpc-status-details-bin', () => {
  const grpc = require('@grpc/grpc-js');
  const { errorDetails } = require('../src/status');
  const varint = (n) => {
    const out = [];
    for (; n > 127; n = Math.floor(n / 128)) out.push((n % 128) | 128);
    out.push(n);
    return Buffer.from(out);
  };
  const field = (n, value) => (typeof value === 'number'
    ? Buffer.concat([varint(n * 8), varint(value)])
    : Buffer.concat([varint(n * 8 + 2), varint(Buffer.byteLength(value)), Buffer.from(value)]));
  const any = (type, body) => field(3, Buffer.concat([field(1, `type.googleapis.com/google.rpc.${type}`), field(2, body)]));
  const status = Buffer.concat([
    field(1, 14), field(2, 'the store is out'),
    any('ErrorInfo', Buffer.concat([field(1, 'STORE_UNAVAILABLE'), field(2, 'coordinator.aitbc'), field(3, Buffer.concat([field(1, 'job_id'), field(2, 'j1')]))])),
    any('BadRequest', field(1, Buffer.concat([field(1, 'priority'), field(2, '0 to 9')]))),
    any('RetryInfo', field(1, Buffer.concat([field(1, 1), field(2, 500000000)]))),
  ]);
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', status);
  assert.deepEqual(errorDetails({ metadata }), {
    reason: 'STORE_UNAVAILABLE', domain: 'coordinator.aitbc', metadata: { job_id: 'j1' },
    violations: [{ field: 'priority', description: '0 to 9' }], retryAfterMs: 1500,
  });
  assert.equal(errorDetails({ metadata: new grpc.Metadata() }), null);
  const garbage = new grpc.Metadata();
  garbage.set('grpc-status-details-bin', Buffer.from([0x0a, 0xff]));
  assert.equal(errorDetails({ metadata: garbage }), null);
});

test('a RetryInfo delay of 0 (a proxy\'s, say) is waited as the first backoff, not retried at once', () => {
  const grpc = require('@grpc/grpc-js');
  // google.rpc.Status{code: 14, details: [Any{RetryInfo{retry_delay: {}}}]}, encoded by hand (lengths < 128)
  const typeUrl = Buffer.from('type.googleapis.com/google.rpc.RetryInfo');
  const retryInfo = Buffer.from([0x0a, 0x00]);
  const any = Buffer.concat([Buffer.from([0x0a, typeUrl.length]), typeUrl, Buffer.from([0x12, retryInfo.length]), retryInfo]);
  const status = Buffer.concat([Buffer.from([0x08, 14, 0x1a, any.length]), any]);
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', status);
  const err = Object.assign(new Error('14 UNAVAILABLE: store'), { code: grpc.status.UNAVAILABLE, metadata });
  // (the options as the constructor takes them: given as a third argument they were ignored, and the test
  // passed on the default policy's backoff)
  const client = new CoordinatorClient('127.0.0.1:9', { apiKey: 'key', retry: { attempts: Infinity, backoffMs: 200, backoffMaxMs: 5000 } });
  try {
    const pause = client.retryPause(err, true, 1);
    assert.ok(pause >= 200 && pause <= 240, `paused ${pause} ms`);
  } finally {
    client.close();
  }
});

test('the constructor refuses options it would ignore: a key in their place, a third argument, a misspelled name', () => {
  assert.throws(() => new CoordinatorClient('127.0.0.1:9', 'key'), { name: 'TypeError', message: /options must be an object.*not string/ });
  assert.throws(() => new CoordinatorClient('127.0.0.1:9', null), { name: 'TypeError', message: /not object/ });
  assert.throws(() => new CoordinatorClient('127.0.0.1:9', ['key']), { name: 'TypeError', message: /not an array/ });
  assert.throws(() => new CoordinatorClient('127.0.0.1:9', { apiKey: 'key' }, { retry: { attempts: 1 } }), { name: 'TypeError', message: /takes two arguments/ });
  assert.throws(() => new CoordinatorClient('127.0.0.1:9', { apiKey: 'key', timeout: 5000 }), { name: 'TypeError', message: /unknown option timeout: CoordinatorClient takes .*\btimeoutMs\b/ });
  assert.throws(() => new CoordinatorClient('127.0.0.1:9', { apiKey: 'key', retries: 1, keepAlive: {} }), { name: 'TypeError', message: /unknown options retries, keepAlive:/ });
  // every option it documents is taken
  const client = new CoordinatorClient('127.0.0.1:9', {
    apiKey: 'key', hmacSecret: 'secret', credentials: require('@grpc/grpc-js').credentials.createInsecure(), protoDir: undefined,
    timeoutMs: 1000, retry: { attempts: 1 }, generateIdempotencyKeys: false, keepalive: { timeMs: 30000 }, channelOptions: {},
  });
  try {
    assert.deepEqual([client.timeoutMs, client.retry.attempts, client.generateIdempotencyKeys], [1000, 1, false]);
  } finally {
    client.close();
  }
  new CoordinatorClient('127.0.0.1:9').close(); // (no options: the defaults)
});
