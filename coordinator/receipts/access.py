"""Who may read a job's receipts: its client, admins, and each miner for the attempts it ran."""

from __future__ import annotations

from aitbc.receipts import parse_envelope, parse_receipt_payload

from ..domain.model import Job
from ..store.base import ReceiptRow


def provider_of(receipt: ReceiptRow) -> str:
    """The miner named in a stored receipt's signed payload."""
    return str(parse_receipt_payload(parse_envelope(receipt.envelope).payload)["provider"])


def readable_receipts(role: str, name: str, job: Job, receipts: list[ReceiptRow]) -> list[ReceiptRow] | None:
    """The receipts of job that caller (role, name) may read, or None when the job itself is not theirs to
    see (answered as NOT_FOUND, exactly like an unknown job)."""
    if role == "admin" or (role == "client" and job.client_id == name):
        return receipts
    if role == "miner":
        mine = [r for r in receipts if provider_of(r) == name]
        if mine or job.miner_id == name:
            return mine
    return None
