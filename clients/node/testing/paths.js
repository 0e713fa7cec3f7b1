'use strict';
/**
 * Paths the tests share. Kept out of test/ because `node --test` runs every .js file under a test/
 * directory as a test file.
 */
const path = require('node:path');

/** clients/node */
const NODE_ROOT = path.resolve(__dirname, '..');
/** The repository root (clients/node/../..). */
const REPO_ROOT = path.resolve(NODE_ROOT, '..', '..');
/** ../shared/vectors relative to the repository root, i.e. ../../../shared/vectors from clients/node. */
const VECTORS_DIR = process.env.AITBC_VECTORS_DIR ?? path.resolve(NODE_ROOT, '../../../shared/vectors');

/** Reads a vector file as parsed JSON. */
function vector(name) {
  // The vector files are trusted test data; plain JSON.parse is fine here.
  return JSON.parse(require('node:fs').readFileSync(path.join(VECTORS_DIR, name), 'utf8'));
}

module.exports = { NODE_ROOT, REPO_ROOT, VECTORS_DIR, vector };
