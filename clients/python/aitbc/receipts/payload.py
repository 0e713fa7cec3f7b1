"""The receipt payload and the miner report (receipts spec sections 1 and 3): build, parse, validate.

:func:`build_receipt_payload` builds payloads and verifiers parse them with :func:`parse_receipt_payload`;
both go through :func:`validate_receipt_fields`, so a built payload is one the verifying side accepts. The
coordinator issues through :class:`aitbc.receipts.issuing.ReceiptEncoder`, which writes the same bytes
without checking again the values it made itself (tests hold the two to the same bytes).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..randomness import random_hex
from .canonical import CanonicalError, DuplicateKeyError, canonical_json, canonical_struct, decode_strict
from .dsse import EnvelopeError, b64decode_strict, b64encode, pae
from .keys import Signer
from .times import check_receipt_time, format_time

__all__ = [
    "MINER_REPORT_FIELDS",
    "MINER_REPORT_TYPE",
    "OPTIONAL_FIELDS",
    "RECEIPT_PAYLOAD_TYPE",
    "RECEIPT_VERSION",
    "REQUIRED_FIELDS",
    "MinerSignature",
    "PayloadError",
    "build_miner_report",
    "build_receipt_payload",
    "format_time",
    "miner_report_and_signature",
    "miner_report_message",
    "new_nonce",
    "parse_miner_report",
    "parse_receipt_payload",
    "result_bytes",
    "result_digest",
    "sign_miner_report",
    "validate_receipt_fields",
]

RECEIPT_PAYLOAD_TYPE = "application/vnd.aitbc.receipt.v1+json"
MINER_REPORT_TYPE = "application/vnd.aitbc.miner-report.v1+json"
RECEIPT_VERSION = "1.0"

REQUIRED_FIELDS = frozenset(
    {
        "version", "receipt_id", "job_id", "attempt", "provider", "client", "units", "unit_type", "price",
        "cost", "started_at", "completed_at", "issued_at", "artifact_hash", "result_sha256", "input_sha256",
        "coordinator_id", "nonce", "chain_id",
    }
)  # fmt: skip
OPTIONAL_FIELDS = frozenset({"miner_report", "miner_signature"})
MINER_REPORT_FIELDS = frozenset({"attempt", "job_id", "result_sha256", "unit_type", "units"})

_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_MAX_ATTEMPT = 2**32 - 1  # the contract's attempt is a uint32
_STRING_FIELDS = ("job_id", "provider", "client", "unit_type", "coordinator_id", "chain_id")
_TIME_FIELDS = ("started_at", "completed_at", "issued_at")


class PayloadError(ValueError):
    """A receipt payload or miner report is malformed; ``str()`` is a short reason."""


@dataclass(frozen=True, slots=True)
class MinerSignature:
    """The receipt's ``miner_signature``: the miner key id and the raw signature over the report's PAE."""

    keyid: str
    sig: bytes

    def to_json(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": b64encode(self.sig)}


def new_nonce() -> str:
    """32 random hex characters for the ``nonce`` field."""
    return random_hex(16)


def _decimal_str(name: str, value: str | int | Decimal) -> str:
    # Floats are refused: 0.1 has no exact decimal meaning, which is why the spec uses strings.
    if isinstance(value, bool) or isinstance(value, float):
        raise PayloadError(f"{name} must be a decimal string, not {type(value).__name__}")
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise PayloadError(f"{name} is not finite")
        value = format(value, "f")
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise PayloadError(f"{name} is not a non-negative decimal string")
    return value


def _time_str(name: str, value: datetime | str) -> str:
    """A datetime formatted; a string as given (validate_receipt_fields checks it with the rest)."""
    if isinstance(value, datetime):
        try:
            return format_time(value)
        except ValueError as exc:
            raise PayloadError(f"{name}: {exc}") from exc
    return value


def _check_int(name: str, value: Any, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise PayloadError(f"{name} is not an integer in [0, {maximum}]")


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{name} is not a non-empty string")


def _check_report_fields(report: Mapping[str, Any]) -> None:
    _check_str("job_id", report["job_id"])
    _check_int("attempt", report["attempt"], _MAX_ATTEMPT)
    _check_str("unit_type", report["unit_type"])
    if not isinstance(report["units"], str) or not _DECIMAL.fullmatch(report["units"]):
        raise PayloadError("units is not a non-negative decimal string")
    if not isinstance(report["result_sha256"], str) or not _HEX64.fullmatch(report["result_sha256"]):
        raise PayloadError("result_sha256 is not 64 lowercase hex characters")


def validate_receipt_fields(payload: Mapping[str, Any]) -> None:
    """Check a decoded payload's required fields, their types and formats; raise PayloadError if not.

    Unknown extra fields are allowed (the spec requires fields, it does not forbid others; they are signed
    like the rest). When a miner report is present it must parse and agree with the receipt's fields.
    """
    if missing := REQUIRED_FIELDS - payload.keys():
        raise PayloadError(f"missing field {sorted(missing)[0]}")
    if payload["version"] != RECEIPT_VERSION:
        raise PayloadError("unsupported version")
    if not isinstance(payload["receipt_id"], str) or not _UUID7.fullmatch(payload["receipt_id"]):
        raise PayloadError("receipt_id is not a lowercase UUIDv7")
    _check_report_fields(payload)
    for name in _STRING_FIELDS:
        _check_str(name, payload[name])
    for name in ("price", "cost"):
        if not isinstance(payload[name], str) or not _DECIMAL.fullmatch(payload[name]):
            raise PayloadError(f"{name} is not a non-negative decimal string")
    for name in _TIME_FIELDS:
        try:
            check_receipt_time(payload[name])
        except ValueError as exc:
            raise PayloadError(f"{name} is not YYYY-MM-DDTHH:MM:SS.ffffffZ") from exc
    if not isinstance(payload["input_sha256"], str) or not _HEX64.fullmatch(payload["input_sha256"]):
        raise PayloadError("input_sha256 is not 64 lowercase hex characters")
    # Both name the digest of the same result bytes (section 1); disagreement means a broken issuer.
    if payload["artifact_hash"] != "sha256:" + payload["result_sha256"]:
        raise PayloadError("artifact_hash does not match result_sha256")
    if not isinstance(payload["nonce"], str) or not _HEX32.fullmatch(payload["nonce"]):
        raise PayloadError("nonce is not 32 lowercase hex characters")
    has_report, has_sig = "miner_report" in payload, "miner_signature" in payload
    if has_report != has_sig:
        raise PayloadError("miner_report and miner_signature must come together")
    if has_report:
        _miner_signature_of(payload)
        report = parse_miner_report(_report_bytes_of(payload))
        for name in sorted(MINER_REPORT_FIELDS):
            if report[name] != payload[name]:
                raise PayloadError("miner report does not match receipt")


def _report_bytes_of(payload: Mapping[str, Any]) -> bytes:
    try:
        return b64decode_strict(payload["miner_report"])
    except EnvelopeError as exc:
        raise PayloadError("miner_report is not base64") from exc


def _miner_signature_of(payload: Mapping[str, Any]) -> MinerSignature:
    entry = payload["miner_signature"]
    if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"} or not isinstance(entry["keyid"], str):
        raise PayloadError("miner_signature is not {keyid, sig}")
    try:
        return MinerSignature(entry["keyid"], b64decode_strict(entry["sig"]))
    except EnvelopeError as exc:
        raise PayloadError("miner_signature sig is not base64") from exc


def miner_report_and_signature(payload: Mapping[str, Any]) -> tuple[bytes, MinerSignature] | None:
    """The report bytes and signature carried by a validated payload, or None when it carries none."""
    if "miner_report" not in payload:
        return None
    return _report_bytes_of(payload), _miner_signature_of(payload)


def _parse_canonical(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = decode_strict(data)
    except DuplicateKeyError:
        raise
    except CanonicalError as exc:
        raise PayloadError(f"{what} is not JSON") from exc
    if not isinstance(obj, dict):
        raise PayloadError(f"{what} is not a JSON object")
    try:
        canonical = canonical_json(obj)
    except CanonicalError as exc:
        raise PayloadError(f"{what} is not canonical JSON") from exc
    if canonical != data:
        raise PayloadError(f"{what} is not canonical JSON")
    return obj


def parse_receipt_payload(data: bytes) -> dict[str, Any]:
    """Decode and validate payload bytes: canonical JSON, no duplicate keys, required fields well formed.

    Raises DuplicateKeyError or PayloadError.
    """
    obj = _parse_canonical(data, "payload")
    validate_receipt_fields(obj)
    return obj


def parse_miner_report(data: bytes) -> dict[str, Any]:
    """Decode a miner report: canonical JSON with exactly the five report fields, well formed."""
    obj = _parse_canonical(data, "miner report")
    if set(obj) != MINER_REPORT_FIELDS:
        raise PayloadError("miner report fields are wrong")
    _check_report_fields(obj)
    return obj


def miner_report_message(report: bytes) -> bytes:
    """What a miner signs: PAE(MINER_REPORT_TYPE, report)."""
    return pae(MINER_REPORT_TYPE, report)


def build_miner_report(
    job_id: str, attempt: int, result_sha256_hex: str, units: str | int | Decimal, unit_type: str
) -> bytes:
    """The canonical report bytes a miner signs (section 3)."""
    report = {
        "attempt": attempt,
        "job_id": job_id,
        "result_sha256": result_sha256_hex,
        "unit_type": unit_type,
        "units": _decimal_str("units", units),
    }
    _check_report_fields(report)
    return canonical_json(report)


def sign_miner_report(signer: Signer, report: bytes) -> bytes:
    """The miner's 64-byte Ed25519 signature over PAE(MINER_REPORT_TYPE, report)."""
    return signer.sign(miner_report_message(report))


def build_receipt_payload(
    *,
    receipt_id: str,
    job_id: str,
    attempt: int,
    provider: str,
    client: str,
    units: str | int | Decimal,
    unit_type: str,
    price: str | int | Decimal,
    cost: str | int | Decimal,
    started_at: datetime | str,
    completed_at: datetime | str,
    issued_at: datetime | str,
    result_sha256: str,
    input_sha256: str,
    coordinator_id: str,
    nonce: str,
    chain_id: str,
    artifact_hash: str | None = None,
    miner_report: bytes | None = None,
    miner_signature: MinerSignature | None = None,
    version: str = RECEIPT_VERSION,
) -> bytes:
    """The canonical payload bytes of a receipt (section 1), validated as a verifier would.

    Times are aware datetimes (or already-formatted receipt strings); exact numbers are decimal strings,
    ints or Decimals (never floats). ``artifact_hash`` defaults to ``"sha256:" + result_sha256``.
    ``miner_report``/``miner_signature`` come together (from :func:`build_miner_report` and
    :func:`sign_miner_report`); the report must agree with the receipt.
    """
    payload: dict[str, Any] = {
        "version": version,
        "receipt_id": receipt_id,
        "job_id": job_id,
        "attempt": attempt,
        "provider": provider,
        "client": client,
        "units": _decimal_str("units", units),
        "unit_type": unit_type,
        "price": _decimal_str("price", price),
        "cost": _decimal_str("cost", cost),
        "started_at": _time_str("started_at", started_at),
        "completed_at": _time_str("completed_at", completed_at),
        "issued_at": _time_str("issued_at", issued_at),
        "artifact_hash": artifact_hash if artifact_hash is not None else f"sha256:{result_sha256}",
        "result_sha256": result_sha256,
        "input_sha256": input_sha256,
        "coordinator_id": coordinator_id,
        "nonce": nonce,
        "chain_id": chain_id,
    }
    if (miner_report is None) != (miner_signature is None):
        raise PayloadError("miner_report and miner_signature must come together")
    if miner_report is not None and miner_signature is not None:
        payload["miner_report"] = base64.b64encode(miner_report).decode("ascii")
        payload["miner_signature"] = miner_signature.to_json()
    validate_receipt_fields(payload)
    return canonical_json(payload)


def result_bytes(result: Any) -> bytes:
    """The bytes a result digest covers: binary results as is, structured ones as canonical JSON.

    ``result`` may be bytes, a Struct-like Python value (dict/list/...), or a protobuf Struct/Value message.
    """
    if isinstance(result, bytes | bytearray | memoryview):
        return bytes(result)
    if hasattr(result, "DESCRIPTOR"):  # a protobuf message: its JSON view has doubles as floats
        from google.protobuf.json_format import MessageToDict

        result = MessageToDict(result)
    return canonical_struct(result)


def result_digest(result: Any) -> bytes:
    """SHA-256 of :func:`result_bytes` (hex() it for ``result_sha256``)."""
    return hashlib.sha256(result_bytes(result)).digest()
