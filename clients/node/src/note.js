'use strict';
/**
 * C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, and checkpoints
 * (https://c2sp.org/tlog-checkpoint) in the form spec section 6 fixes: exactly origin, size and root.
 */
const crypto = require('node:crypto');
const ed25519 = require('./ed25519');
const { VerificationError, decodeBase64 } = require('./encoding');

const ALG_ED25519 = 0x01;
const SIG_PREFIX = '\u2014 '; // em dash, space
// A key name holds no '+' and no space as Go's note package has it (unicode.IsSpace, as Python's isspace()):
// JavaScript's \s differs (it counts U+FEFF, not U+0085), and a name one verifier refuses and the other
// ignores would make one note valid in one language only. (U+001C-U+001F: refused as control characters too.)
const NAME = /^[^+\t\n\v\f\r \u001c-\u001f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/u;
const MAX_SIGNATURES = 100; // as Go's note package: bounds the work a hostile note can cause
const CONTROL = /[\u0000-\u0009\u000b-\u001f]/; // control characters other than the newline
// A lone surrogate (JSON "\ud800") is not Unicode: Buffer.from would sign and hash U+FFFD in its place, so
// the note would verify as a text other than the one given (the Python verifier refuses it too).
const LONE_SURROGATE = /\p{Surrogate}/u;
const MAX_TREE_SIZE = 2n ** 64n - 1n; // a tree size is a uint64, as everywhere in the contract

/**
 * The 4-byte key hash of a signed-note key: SHA-256(name || "\n" || 0x01 || public key)[:4].
 * @param {string} name
 * @param {Uint8Array} publicKey raw 32 bytes
 * @returns {Buffer}
 */
function noteKeyHash(name, publicKey) {
  return crypto
    .createHash('sha256')
    .update(Buffer.from(`${name}\n`, 'utf8'))
    .update(Buffer.of(ALG_ED25519))
    .update(publicKey)
    .digest()
    .subarray(0, 4);
}

/**
 * @typedef {object} NoteVerifier
 * @property {string} name
 * @property {Buffer} hash 4 bytes
 * @property {Buffer} publicKey raw 32 bytes
 */

/**
 * Parses a verifier key string `name+hexhash+base64(0x01 || key)` and checks that the hash matches.
 * @param {string} vkey
 * @returns {NoteVerifier}
 */
function parseVerifierKey(vkey) {
  // The name holds no '+', the hash is 8 hex digits; the base64 key may itself contain '+'.
  const m = typeof vkey === 'string' ? /^([^+]+)\+([0-9a-f]{8})\+(.+)$/s.exec(vkey) : null;
  if (!m || !NAME.test(m[1])) throw new VerificationError('BAD_NOTE_KEY', 'a verifier key is name+hash+key');
  const [, name, hashHex, keyB64] = m;
  const key = decodeBase64(keyB64, 'verifier key', { anyPadBits: true });
  if (key.length !== 33 || key[0] !== ALG_ED25519) {
    throw new VerificationError('BAD_NOTE_KEY', 'verifier key is not an Ed25519 key');
  }
  const publicKey = key.subarray(1);
  const hash = noteKeyHash(name, publicKey);
  if (hash.toString('hex') !== hashHex) throw new VerificationError('BAD_NOTE_KEY', 'verifier key hash does not match the key');
  return { name, hash, publicKey };
}

/** The verifier key string of a name and a raw public key. */
function formatVerifierKey(name, publicKey) {
  const hash = noteKeyHash(name, publicKey).toString('hex');
  return `${name}+${hash}+${Buffer.concat([Buffer.of(ALG_ED25519), publicKey]).toString('base64')}`;
}

/**
 * Splits a note into its text and signature lines, checking the syntax.
 * @param {string} note
 * @returns {{text: string, signatures: {name: string, hash: Buffer, signature: Buffer}[]}}
 */
function parseNote(note) {
  const malformed = (why) => new VerificationError('BAD_NOTE', why);
  if (typeof note !== 'string') throw malformed('a note is text');
  // The text ends at the last blank line (as Go's golang.org/x/mod/sumdb/note does).
  const split = note.lastIndexOf('\n\n');
  if (split < 0) throw malformed('no blank line before the signatures');
  const text = note.slice(0, split + 1);
  const block = note.slice(split + 2);
  if (CONTROL.test(text) || CONTROL.test(block)) throw malformed('control character in the note');
  if (LONE_SURROGATE.test(note)) throw malformed('lone surrogate in the note');
  if (!block.endsWith('\n')) throw malformed('signature lines must end with a newline');
  const lines = block.slice(0, -1).split('\n');
  if (lines.length > MAX_SIGNATURES) throw malformed('too many signatures');
  const signatures = lines.map((line) => {
    if (!line.startsWith(SIG_PREFIX)) throw malformed('a signature line starts with an em dash and a space');
    const fields = line.slice(SIG_PREFIX.length).split(' ');
    if (fields.length !== 2 || !NAME.test(fields[0])) throw malformed('a signature line is "— name signature"');
    // Unused pad bits are tolerated here, as by Go's note package: the signature covers the text, so a
    // respelled signature line proves nothing new.
    const raw = decodeBase64(fields[1], 'note signature', { anyPadBits: true });
    if (raw.length < 5) throw malformed('note signature is too short');
    return { name: fields[0], hash: raw.subarray(0, 4), signature: raw.subarray(4) };
  });
  return { text, signatures };
}

/**
 * Opens a signed note: signatures by unknown keys are ignored, a signature by a known key that does not
 * verify is an error (as in Go's note package), and at least one known key must have signed.
 * @param {string} note
 * @param {NoteVerifier[]} verifiers
 * @returns {{text: string, verifiedBy: NoteVerifier[]}}
 */
function openNote(note, verifiers) {
  const { text, signatures } = parseNote(note);
  const message = Buffer.from(text, 'utf8');
  const verifiedBy = [];
  for (const sig of signatures) {
    const v = verifiers.find((k) => k.name === sig.name && k.hash.equals(sig.hash));
    if (!v) continue; // someone else's signature: not ours to judge
    if (!ed25519.verify(v.publicKey, message, sig.signature)) {
      throw new VerificationError('BAD_NOTE_SIGNATURE', `signature by ${v.name} does not verify`);
    }
    if (!verifiedBy.includes(v)) verifiedBy.push(v);
  }
  if (verifiedBy.length === 0) throw new VerificationError('UNKNOWN_NOTE_SIGNER', 'no signature by a known key');
  return { text, verifiedBy };
}

/**
 * Parses checkpoint text: "<origin>\n<size>\n<base64 root>\n", nothing more (spec section 6).
 * @param {string} text
 * @returns {{origin: string, treeSize: bigint, rootHash: Buffer}}
 */
function parseCheckpointText(text) {
  const lines = text.split('\n');
  if (lines.length !== 4 || lines[3] !== '') throw new VerificationError('BAD_CHECKPOINT', 'a checkpoint is three lines');
  const [origin, size, root] = lines;
  if (origin === '') throw new VerificationError('BAD_CHECKPOINT', 'empty origin');
  // (20 digits at most before BigInt: a megabyte of digits is not worth converting)
  if (!/^(?:0|[1-9][0-9]{0,19})$/.test(size) || BigInt(size) > MAX_TREE_SIZE) {
    throw new VerificationError('BAD_CHECKPOINT', 'tree size is not a decimal number up to 2^64-1');
  }
  const rootHash = decodeBase64(root, 'checkpoint root');
  if (rootHash.length !== 32) throw new VerificationError('BAD_CHECKPOINT', 'root hash is not 32 bytes');
  return { origin, treeSize: BigInt(size), rootHash };
}

/**
 * The note verifiers of a key set's log keys. A log key's published verifier key names it; without one,
 * the key is named by `origin` (spec section 6: the key name is the origin). Keys that cannot be used are
 * left out rather than failing the whole set: a key id that is not its key's thumbprint, or a verifier key
 * that is malformed or holds another key.
 * @returns {{verifier: NoteVerifier, keyId: string}[]}
 */
function logVerifiers(keySet, origin) {
  const out = [];
  for (const key of keySet.withRole('log')) {
    if (!key.keyIdMatches) continue;
    let verifier;
    try {
      verifier = key.noteVerifierKey
        ? parseVerifierKey(key.noteVerifierKey)
        : { name: origin, hash: noteKeyHash(origin, key.publicKey), publicKey: key.publicKey };
    } catch {
      continue;
    }
    if (NAME.test(verifier.name) && verifier.publicKey.equals(key.publicKey)) out.push({ verifier, keyId: key.keyId });
  }
  return out;
}

/**
 * Verifies a checkpoint note against the log keys of a key set: signed by at least one of them, under a
 * key name equal to the checkpoint's origin, and the text a well-formed checkpoint.
 * @param {string} note
 * @param {import('./keys').KeySet} keySet
 * @returns {{origin: string, treeSize: bigint, rootHash: Buffer, keyIds: string[]}}
 */
function verifyCheckpoint(note, keySet) {
  if (typeof note !== 'string') throw new VerificationError('BAD_NOTE', 'a note is text');
  const known = logVerifiers(keySet, note.split('\n', 1)[0]);
  const { text, verifiedBy } = openNote(note, known.map((k) => k.verifier));
  const checkpoint = parseCheckpointText(text);
  const signers = verifiedBy.filter((v) => v.name === checkpoint.origin);
  if (signers.length === 0) throw new VerificationError('BAD_CHECKPOINT', 'no log key named after the origin signed it');
  const keyIds = known.filter((k) => signers.includes(k.verifier)).map((k) => k.keyId);
  return { ...checkpoint, keyIds };
}

module.exports = {
  noteKeyHash,
  parseVerifierKey,
  formatVerifierKey,
  parseNote,
  openNote,
  parseCheckpointText,
  verifyCheckpoint,
};
