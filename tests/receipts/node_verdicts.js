'use strict';
/**
 * The Node verifier's verdict on each case the Python test hands it (stdin: JSON, stdout: JSON).
 *
 * Input: {"keyset": "<key set JSON text>", "cases": [{"name", "kind": "bundle"|"envelope"|"legacy",
 * "data": "<base64 of the exact bytes>", "roles": [...], "older": "<note>"?, "proof": ["<hex>", ...]?}]}
 * Output: [{"name", "ok": true} | {"name", "ok": false, "code": "<VerificationError code>"}]
 * Or, for {"keysets": [{"name", "text"}]}: whether each key set loads, in the same form.
 */
const path = require('node:path');
const v = require(path.resolve(__dirname, '../../clients/node/src/verify'));

function verdict(keySet, c) {
  const data = Buffer.from(c.data, 'base64');
  const policy = { roles: c.roles ?? ['coordinator'] };
  if (c.kind === 'bundle') {
    const previous = c.older === undefined ? undefined : { checkpoint: c.older, consistencyProof: (c.proof ?? []).map((h) => Buffer.from(h, 'hex')) };
    v.verifyBundle(data, keySet, { policy, previous });
  } else if (c.kind === 'envelope') {
    v.verifyReceiptEnvelope(data, keySet, policy);
  } else if (c.kind === 'legacy') {
    v.verifyLegacyReceipt(data, keySet);
  } else {
    throw new TypeError(`unknown kind ${c.kind}`);
  }
}

/** Whether a key set text loads: {"name", "ok"} or {"name", "ok": false, "code"}. */
function keySetVerdict({ name, text }) {
  try {
    v.loadKeySet(Buffer.from(text, 'utf8'));
    return { name, ok: true };
  } catch (err) {
    if (!(err instanceof v.VerificationError)) return { name, ok: false, code: `CRASH ${err.stack}` };
    return { name, ok: false, code: err.code };
  }
}

const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
if (input.keysets) {
  process.stdout.write(JSON.stringify(input.keysets.map(keySetVerdict)));
  process.exit(0);
}
const keySet = v.loadKeySet(Buffer.from(input.keyset, 'utf8'));
const out = input.cases.map((c) => {
  try {
    verdict(keySet, c);
    return { name: c.name, ok: true };
  } catch (err) {
    if (!(err instanceof v.VerificationError)) return { name: c.name, ok: false, code: `CRASH ${err.stack}` };
    return { name: c.name, ok: false, code: err.code };
  }
});
process.stdout.write(JSON.stringify(out));
