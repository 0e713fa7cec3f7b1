"""The issuer's path: a receipt's payload and envelope bytes, byte for byte what :func:`build_receipt_payload`
and :func:`build_envelope` give, without checking again what the issuer made itself.

The public builders validate every field as a verifier would, walk the value for what strict JSON forbids
and encode it with the generic JSON encoder: ~25 us of Python per receipt besides its signature (~6.5 us
here), at thousands of receipts a second, mostly spent on values that cannot fail those checks: ids the
issuer generated (``receipt_id`` a UUIDv7, the ``nonce``), times of its own clock (formatted here from
integer microseconds, in the receipt form by construction), its own decimal arithmetic (``cost``), its digest
of the job's input, its configured coordinator and chain ids (checked once, when the encoder is made) and a
miner report it built itself with :func:`build_miner_report` (a miner's report is used only when equal to
that one) with a signature it verified under a key id it derived.

What comes from outside is checked exactly as :func:`validate_receipt_fields` checks it: the miner's units,
unit type, price and result digest, and the provider and client names. Verifying, and the SDK's public
builders, are unchanged.

The JSON is written here in the canonical key order: strings that may need escaping go through the JSON
encoder's own string quoting (what ``canonical_json`` uses), and the rest are of alphabets JSON writes as is
(hex, base64, decimal digits, the receipt time form). Tests hold these bytes to the public builders' over
many generated receipts.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence

from .canonical import CanonicalError, _quote
from .dsse import pae
from .keys import Signer
from .payload import (
    _DECIMAL,
    RECEIPT_PAYLOAD_TYPE,
    RECEIPT_VERSION,
    MinerSignature,
    PayloadError,
    _check_str,
)
from .times import format_time_us

__all__ = ["ReceiptEncoder"]

_PAYLOAD_TYPE = RECEIPT_PAYLOAD_TYPE.encode("ascii")  # needs no JSON escaping: letters, '.', '/', '+'
_DIGEST_SIZE = 32


def _b64(data: bytes) -> bytes:
    """base64.b64encode(data), without its Python wrapper."""
    return binascii.b2a_base64(data, newline=False)


_decimal = _DECIMAL.fullmatch


def _check_decimal(name: str, value: object) -> None:
    if not isinstance(value, str) or not _decimal(value):
        raise PayloadError(f"{name} is not a non-negative decimal string")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, refused as canonical_json refuses it
        raise CanonicalError(f"cannot encode as JSON: {exc}") from exc


class ReceiptEncoder:
    """Payloads and envelopes of the receipts one issuer (coordinator id, chain id) makes."""

    __slots__ = ("_chain_id", "_coordinator_id")

    def __init__(self, coordinator_id: str, chain_id: str) -> None:
        _check_str("coordinator_id", coordinator_id)
        _check_str("chain_id", chain_id)
        _utf8(coordinator_id + chain_id)
        self._coordinator_id: str = _quote(coordinator_id)
        self._chain_id: str = _quote(chain_id)

    def payload(
        self,
        *,
        receipt_id: str,
        job_id: str,
        attempt: int,
        provider: str,
        client: str,
        units: str,
        unit_type: str,
        price: str,
        cost: str,
        started_us: int,
        completed_us: int,
        issued_us: int,
        result_sha256: bytes,
        input_sha256: bytes,
        nonce: str,
        miner_report: bytes | None = None,
        miner_signature: MinerSignature | None = None,
    ) -> bytes:
        """The canonical payload bytes, as :func:`build_receipt_payload` of the same fields (times formatted
        with :func:`format_time_us`, digests as lowercase hex) would return them.

        The issuer's own: ``receipt_id`` (a UUIDv7 it generated), ``job_id`` (its id; quoted all the same),
        ``attempt`` (its count, an int), ``cost`` (its arithmetic on the checked units and price: a
        non-negative decimal string), the times (its clock), ``input_sha256`` (its SHA-256 of the input),
        ``nonce`` (:func:`new_nonce`), and ``miner_report``/``miner_signature`` (a report it built with
        :func:`build_miner_report` from these same fields, a signature it verified, the key id it derived).
        Checked, as they come from outside: ``units``, ``price`` (non-negative decimal strings),
        ``unit_type``, ``provider``, ``client`` (non-empty strings) and ``result_sha256`` (32 bytes).
        Raises PayloadError (or CanonicalError) as the public builder would for those.
        """
        # The checks of _check_decimal and _check_str, in their order, inline (no call per field when all is well)
        if not (isinstance(units, str) and _decimal(units)):
            _check_decimal("units", units)
        if not (isinstance(unit_type, str) and unit_type):
            _check_str("unit_type", unit_type)
        if not isinstance(result_sha256, bytes) or len(result_sha256) != _DIGEST_SIZE:
            raise PayloadError("result_sha256 is not 64 lowercase hex characters")
        if not (isinstance(provider, str) and provider):
            _check_str("provider", provider)
        if not (isinstance(client, str) and client):
            _check_str("client", client)
        if not (isinstance(price, str) and _decimal(price)):
            _check_decimal("price", price)
        if (miner_report is None) != (miner_signature is None):
            raise PayloadError("miner_report and miner_signature must come together")
        result_hex = result_sha256.hex()
        report = ""
        if miner_report is not None and miner_signature is not None:
            report = (
                f'"miner_report":"{_b64(miner_report).decode("ascii")}",'
                f'"miner_signature":{{"keyid":"{miner_signature.keyid}",'
                f'"sig":"{_b64(miner_signature.sig).decode("ascii")}"}},'
            )
        # Keys in code point order, as canonical_json sorts them.
        return _utf8(
            f'{{"artifact_hash":"sha256:{result_hex}","attempt":{attempt:d},"chain_id":{self._chain_id},'
            f'"client":{_quote(client)},"completed_at":"{format_time_us(completed_us)}",'
            f'"coordinator_id":{self._coordinator_id},"cost":"{cost}","input_sha256":"{input_sha256.hex()}",'
            f'"issued_at":"{format_time_us(issued_us)}","job_id":{_quote(job_id)},{report}"nonce":"{nonce}",'
            f'"price":"{price}","provider":{_quote(provider)},"receipt_id":"{receipt_id}",'
            f'"result_sha256":"{result_hex}","started_at":"{format_time_us(started_us)}",'
            f'"unit_type":{_quote(unit_type)},"units":"{units}","version":"{RECEIPT_VERSION}"}}'
        )

    @staticmethod
    def envelope(payload: bytes, signers: Sequence[Signer]) -> bytes:
        """The envelope bytes, as ``build_envelope(payload, RECEIPT_PAYLOAD_TYPE, signers)`` returns them.

        Key ids are the signers' own (RFC 7638 thumbprints: base64url); payload and signatures are base64.
        """
        if not signers:
            raise ValueError("an envelope needs at least one signer")
        message = pae(RECEIPT_PAYLOAD_TYPE, payload)
        if len(signers) == 1:  # the common case, without a generator and a join
            s = signers[0]
            signatures = b'{"keyid":"%s","sig":"%s"}' % (s.key_id.encode("ascii"), _b64(s.sign(message)))
        else:
            signatures = b",".join(
                b'{"keyid":"%s","sig":"%s"}' % (s.key_id.encode("ascii"), _b64(s.sign(message)))
                for s in signers
            )
        return b'{"payload":"%s","payloadType":"%s","signatures":[%s]}' % (
            _b64(payload),
            _PAYLOAD_TYPE,
            signatures,
        )
