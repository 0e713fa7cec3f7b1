'use strict';
/** Package entry: the client and the offline verifier. */
module.exports = { ...require('./client'), verify: require('./verify') };
