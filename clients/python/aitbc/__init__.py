"""AITBC Python SDK: job client, miner runtime, receipt verifier and the `aitbc` CLI.

The generated contract code lives in `aitbc.coordinator.v1` (regenerate with `python scripts/gen_proto.py`).
"""
