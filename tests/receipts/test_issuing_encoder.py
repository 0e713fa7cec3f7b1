"""The coordinator's issuing path (ReceiptEncoder) writes the very bytes of the validating builders.

Receipts are verified offline by anyone: a single byte of difference between what the coordinator signs and
what build_receipt_payload / build_envelope define would be another format. The issuing path skips checks on
the coordinator's own values only; what a miner or client sends (units, unit type, price, result digest,
provider and client names) is still refused as the public builder refuses it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aitbc.receipts import (
    RECEIPT_PAYLOAD_TYPE,
    CanonicalError,
    KeyEntry,
    KeySet,
    MinerSignature,
    PayloadError,
    Policy,
    Signer,
    build_envelope,
    build_miner_report,
    build_receipt_payload,
    format_time_us,
    jwk_thumbprint,
    parse_envelope,
    parse_receipt_payload,
    sign_miner_report,
    verify_envelope,
)
from aitbc.receipts.issuing import ReceiptEncoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.config import SettingsError
from coordinator.domain.model import Capabilities, Constraints, Job, JobResult, JobState, PayloadKind
from coordinator.receipts.issuer import ReceiptIssuer, charge
from coordinator.receipts.keyring import ActiveKeys
from coordinator.scheduler.sessions import Session
from coordinator.store.base import UnitOfWork
from coordinator.store.sqlite import SqliteStore

COORD, ATTEST, LOG, MINER = (Signer(bytes([n]) * 32) for n in (1, 2, 3, 4))
MINER_KEY_ID = jwk_thumbprint(MINER.public_key)
LAST_US = 253402300799_999999  # 9999-12-31T23:59:59.999999Z
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# Realistic values, as the receipt vectors and a coordinator's traffic have them, and the awkward ones an
# outside party can send: any Unicode (no lone surrogates: gRPC strings are UTF-8), quotes, backslashes,
# control characters.
uuid7s = st.from_regex(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", fullmatch=True)
decimals = st.from_regex(r"(0|[1-9][0-9]{0,12})(\.[0-9]{1,9})?", fullmatch=True)
names = st.one_of(
    st.sampled_from(["miner-alpha", "ait1minerxyz...", "client-beta", "gpu_seconds", "tokens", "m 1", 'a"b']),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
)
times_us = st.integers(0, LAST_US)


@st.composite
def receipts(draw: st.DrawFn) -> dict[str, Any]:
    """Fields of one receipt, as the coordinator's issue() has them (times in us, digests as bytes)."""
    job_id = draw(st.one_of(uuid7s, names))
    attempt = draw(st.integers(0, 2**32 - 1))
    result = draw(st.binary(min_size=32, max_size=32))
    units, unit_type = draw(decimals), draw(names)
    fields: dict[str, Any] = {
        "receipt_id": draw(uuid7s), "job_id": job_id, "attempt": attempt, "provider": draw(names),
        "client": draw(names), "units": units, "unit_type": unit_type, "price": draw(decimals),
        "cost": draw(decimals), "started_us": draw(times_us), "completed_us": draw(times_us),
        "issued_us": draw(times_us), "result_sha256": result,
        "input_sha256": draw(st.binary(min_size=32, max_size=32)),
        "nonce": draw(st.binary(min_size=16, max_size=16)).hex(),
    }  # fmt: skip
    if draw(st.booleans()):  # a miner with a receipt key: the report the coordinator built, signed
        report = build_miner_report(job_id, attempt, result.hex(), units, unit_type)
        fields["miner_report"] = report
        fields["miner_signature"] = MinerSignature(MINER_KEY_ID, sign_miner_report(MINER, report))
    return fields


def validating(fields: dict[str, Any], coordinator_id: str, chain_id: str) -> bytes:
    """The public builder on the same values (times and digests formatted as the issuer formatted them)."""
    args = dict(fields)
    for name in ("started", "completed", "issued"):
        args[f"{name}_at"] = format_time_us(args.pop(f"{name}_us"))
    args["result_sha256"], args["input_sha256"] = fields["result_sha256"].hex(), fields["input_sha256"].hex()
    return build_receipt_payload(**args, coordinator_id=coordinator_id, chain_id=chain_id)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(receipts(), names, names, st.sampled_from([(COORD,), (COORD, ATTEST)]))
def test_issuing_path_bytes_are_the_validating_builders(
    fields: dict[str, Any], coordinator_id: str, chain_id: str, signers: tuple[Signer, ...]
) -> None:
    encoder = ReceiptEncoder(coordinator_id, chain_id)
    payload = encoder.payload(**fields)
    assert payload == validating(fields, coordinator_id, chain_id)
    envelope = encoder.envelope(payload, signers)
    assert envelope == build_envelope(payload, RECEIPT_PAYLOAD_TYPE, signers)
    assert parse_envelope(envelope).payload == payload
    parse_receipt_payload(payload)  # (what a verifier does with it)


GOOD: dict[str, Any] = {
    "receipt_id": "019ac1e2-3f4a-7b5c-8d6e-0123456789ab", "job_id": "019ac1e2-3f4a-7b5c-8d6e-0123456789ac",
    "attempt": 1, "provider": "miner-alpha", "client": "client-beta", "units": "1.9", "unit_type": "gpu_seconds",
    "price": "4.2", "cost": "7.98", "started_us": 1_795_000_000_000_000, "completed_us": 1_795_000_001_000_000,
    "issued_us": 1_795_000_001_000_001, "result_sha256": b"\xab" * 32, "input_sha256": b"\xcd" * 32,
    "nonce": "0f" * 16,
}  # fmt: skip

# What a miner (units, unit type, price, digest) or a client sends is checked on the issuing path too.
OUTSIDE_BAD = [
    *({"units": v} for v in ("1e3", "-1", " 1", "01", "1.", "", "NaN", "١")),
    *({"price": v} for v in ("1e3", "-0.5", "0.5 ", "Infinity", "")),
    {"unit_type": ""}, {"provider": ""}, {"client": ""},
    {"result_sha256": b"\xab" * 31}, {"result_sha256": b"\xab" * 33},
    {"miner_report": b"{}"},  # without its signature
]  # fmt: skip


def test_issued_envelope_verifies_offline() -> None:
    encoder = ReceiptEncoder("coord-test", "aitbc-devnet")
    envelope = encoder.envelope(encoder.payload(**GOOD), [COORD, ATTEST])
    keys = KeySet(
        [KeyEntry.for_signer(s, role, T0) for s, role in ((COORD, "coordinator"), (ATTEST, "attestation"))]
    )
    verified = verify_envelope(envelope, keys, Policy(frozenset({"coordinator", "attestation"})))
    assert (
        verified.payload["nonce"] == GOOD["nonce"]
        and verified.payload["issued_at"] == "2026-11-18T11:06:41.000001Z"
    )


@pytest.mark.parametrize("change", OUTSIDE_BAD, ids=repr)
def test_issuing_path_refuses_what_the_validating_builder_refuses(change: dict[str, Any]) -> None:
    fields = {**GOOD, **change}
    with pytest.raises(PayloadError):
        validating(fields, "coord-test", "aitbc-devnet")
    with pytest.raises(PayloadError):
        ReceiptEncoder("coord-test", "aitbc-devnet").payload(**fields)


def test_a_lone_surrogate_is_refused_by_both() -> None:
    fields = {**GOOD, "unit_type": "gpu\udc80"}
    with pytest.raises(CanonicalError):
        validating(fields, "coord-test", "aitbc-devnet")
    with pytest.raises(CanonicalError):
        ReceiptEncoder("coord-test", "aitbc-devnet").payload(**fields)


@pytest.mark.parametrize("us", [LAST_US + 1, -62135596800_000001])  # 10000-01-01, and year 0
def test_a_time_beyond_the_receipt_form_is_refused(us: int) -> None:
    with pytest.raises(ValueError):
        format_time_us(us)  # it wrote "10000-01-01T..." (and "0000-..."), which no verifier accepts
    with pytest.raises(ValueError):
        ReceiptEncoder("coord-test", "aitbc-devnet").payload(**{**GOOD, "issued_us": us})


@pytest.mark.parametrize("ids", [("", "aitbc-devnet"), ("coord-test", "")])
def test_an_empty_coordinator_or_chain_id_is_refused_at_start(ids: tuple[str, str], tmp_path: Path) -> None:
    keys = ActiveKeys(COORD, None, LOG, [])
    with pytest.raises(SettingsError, match="COORDINATOR_ID and CHAIN_ID"):
        ReceiptIssuer(SqliteStore(str(tmp_path / "unused.db")), keys, *ids)


def job_and_result(job_id: str, units: str, unit_type: str, signed: bool) -> tuple[Job, JobResult]:
    result_sha256 = hashlib.sha256(job_id.encode()).digest()
    job = Job(job_id=job_id, client_id="client beta", state=JobState.RUNNING, payload=b"{}",
              payload_kind=PayloadKind.STRUCT, input_sha256=hashlib.sha256(b"{}").digest(),
              constraints=Constraints(), priority=0, ttl_us=10**9, max_attempts=3, execution_timeout_us=10**8,
              idempotency_key="", request_fingerprint=b"", created_us=1, updated_us=1, attempt=2,
              miner_id="m1", started_us=1_795_000_000_123_456)  # fmt: skip
    report = build_miner_report(job_id, 2, result_sha256.hex(), units, unit_type) if signed else b""
    result = JobResult(job_id, 2, b"{}", PayloadKind.STRUCT, result_sha256, units, unit_type, "m1",
                       1_795_000_002_654_321, miner_report=report,
                       miner_signature=sign_miner_report(MINER, report) if signed else b"")  # fmt: skip
    return job, result


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("attest", [False, True])
def test_the_issuer_signs_what_the_validating_builders_make_of_its_job(
    signed: bool, attest: bool, tmp_path: Path
) -> None:
    """issue() as the engine calls it: each job's receipt is the bytes the old path built from the same job,
    result and session (so no field is mapped to another on the way)."""
    keys = ActiveKeys(COORD, ATTEST if attest else None, LOG, [])
    issuer = ReceiptIssuer(SqliteStore(str(tmp_path / "unused.db")), keys, "coord-test", "aitbc-devnet")
    session = Session(session_id="s1", miner_id="m1", caps=Capabilities(price="0.25"), transport="stream",
                      connected_us=1, receipt_public_key=MINER.public_key if signed else b"")  # fmt: skip
    for n, (units, unit_type) in enumerate(
        [("1.9", "gpu_seconds"), ("0", "tokens"), ("12345.000000001", "é")]
    ):
        job, result = job_and_result(f"019ac1e2-3f4a-7b5c-8d6e-0123456789{n:02d}", units, unit_type, signed)
        unit = UnitOfWork()
        receipt_id = issuer.issue(job, result, session, unit)
        envelope = unit.receipts[0].envelope
        issued = parse_receipt_payload(parse_envelope(envelope).payload)
        expected = build_receipt_payload(
            receipt_id=receipt_id, job_id=job.job_id, attempt=job.attempt, provider=session.miner_id,
            client=job.client_id, units=units, unit_type=unit_type, price="0.25",
            cost=charge(units, "0.25")[0], started_at=format_time_us(job.started_us),
            completed_at=format_time_us(result.completed_us), issued_at=issued["issued_at"],
            result_sha256=result.result_sha256.hex(), input_sha256=job.input_sha256.hex(),
            coordinator_id="coord-test", nonce=issued["nonce"], chain_id="aitbc-devnet",
            miner_report=result.miner_report or None,
            miner_signature=MinerSignature(MINER_KEY_ID, result.miner_signature) if signed else None,
        )  # fmt: skip
        signers = [COORD, ATTEST] if attest else [COORD]
        assert envelope == build_envelope(expected, RECEIPT_PAYLOAD_TYPE, signers)
