"""Receipt issuing: keys, signed DSSE envelopes, the Merkle log and its checkpoints, the usage ledger.

The format code itself lives once, in `aitbc.receipts` (the SDK), and is imported from there.
"""
