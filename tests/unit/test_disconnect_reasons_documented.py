"""The reasons a miner session closes for, as the log line, the metric and docs/operations.md name them
(review round 20): a stream ended STREAM_STALLED was logged so but counted under `reason="OTHER"`, and the
metrics table did not list it."""

from __future__ import annotations

import re
from pathlib import Path

from coordinator.observability.metrics import DISCONNECT_REASONS

OPERATIONS = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


def row(starting: str) -> str:
    return next(line for line in OPERATIONS.splitlines() if line.startswith(starting))


def test_every_logged_disconnect_reason_has_its_own_metric_label() -> None:
    logged = set(re.findall(r"`([A-Z_]+)`", row("| `miner disconnected`").split("|")[4])) - {"UNAVAILABLE"}
    counted = set(re.findall(r"`([A-Z_]+)`", row("| `aitbc_miner_disconnections_total`")))
    assert logged <= set(DISCONNECT_REASONS), logged - set(DISCONNECT_REASONS)
    assert counted == set(DISCONNECT_REASONS), counted ^ set(DISCONNECT_REASONS)
