"""Canonical JSON (receipts spec section 1) and a strict JSON decoder.

Signatures cover bytes, so every producer must serialise a value to the same bytes: object keys sorted by
code point, no whitespace, UTF-8 (not ``\\u`` escapes) and, in strict mode, no floats and no nulls.
The strict decoder exists because Python's ``json.loads`` silently keeps the last of duplicate keys and
accepts ``NaN``/``Infinity``: two verifiers that disagree on which duplicate wins can be shown different
payloads under one signature, so duplicates are rejected outright.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

__all__ = [
    "MAX_SAFE_INTEGER",
    "CanonicalError",
    "DuplicateKeyError",
    "canonical_json",
    "canonical_struct",
    "decode_strict",
    "es_number",
    "legacy_canonical_json",
]

# Integers outside this range do not survive a round trip through a JavaScript (Node verifier) number.
MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalError(ValueError):
    """A value cannot be canonically encoded, or bytes are not acceptable (strict) JSON."""


class DuplicateKeyError(CanonicalError):
    """A JSON object repeats a key."""


# One encoder for every call: json.dumps with options builds a new JSONEncoder each time.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
# v1 receipts were signed over json.dumps' default output: non-ASCII escaped (section 8).
_ENCODE_ASCII = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
).encode
# A string as JSON with non-ASCII kept as is (json's own C function; what ensure_ascii=False uses).
_quote: Any = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _dumps(value: Any) -> bytes:
    try:
        text = _ENCODE(value)
        # Lone surrogates pass json.dumps but are not UTF-8: refuse instead of writing mojibake.
        return text.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
        raise CanonicalError(f"cannot encode as JSON: {exc}") from exc


def _check_strict(value: Any) -> None:
    """Reject what the receipt format forbids: floats, nulls, unsafe integers, non-string keys."""
    problem = _strict_problem(value)
    if problem is not None:
        message, where = problem
        raise CanonicalError(message.format(path="$" + "".join(reversed(where))))


def _strict_problem(value: Any) -> tuple[str, list[str]] | None:
    """The first forbidden value as (message with {path}, path parts innermost first), or None.

    The path is only put together for a value that fails: this runs over every receipt issued.
    """
    if value is None:
        return "null at {path} (absent fields are omitted)", []
    if isinstance(value, bool) or isinstance(value, str):
        return None
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            return "integer at {path} is outside +-(2^53-1)", []
        return None
    if isinstance(value, float):
        return "float at {path} (exact numbers are decimal strings)", []
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return "non-string key at {path}", []
            if item.__class__ is str:
                continue
            problem = _strict_problem(item)
            if problem is not None:
                problem[1].append(f".{key}")
                return problem
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            problem = _strict_problem(item)
            if problem is not None:
                problem[1].append(f"[{i}]")
                return problem
        return None
    return f"unsupported type {type(value).__name__.replace('{', '{{').replace('}', '}}')} at {{path}}", []


def canonical_json(value: Any) -> bytes:
    """Strict canonical JSON bytes of ``value`` (receipt payloads, miner reports, envelopes).

    Raises CanonicalError on floats, None, integers beyond 2^53-1, non-string keys or other types.
    """
    _check_strict(value)
    return _dumps(value)


def _drop_nulls(value: Any) -> Any:
    # As the v1 signer (aitbc_crypto.receipt.canonical_json): None goes from objects and from lists alike.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_nulls(v) for v in value if v is not None]
    return value


def legacy_canonical_json(value: Any) -> bytes:
    """AITBC v1 canonical JSON: sorted keys, compact, nulls dropped (from objects and lists), numbers as JSON
    numbers (Python repr), and non-ASCII as ``\\uXXXX`` escapes (json.dumps' default, which v1 signed with).

    Only for verifying legacy receipts (spec section 8); new payloads use :func:`canonical_json`.
    """
    try:  # a parsed receipt may be nested past Python's stack here (the JSON decoder's limit is deeper)
        cleaned = _drop_nulls(value)
    except RecursionError as exc:
        raise CanonicalError("nested too deeply") from exc
    _dumps(cleaned)  # refuses what is not Unicode (a lone surrogate), as the strict parsers do
    try:
        return _ENCODE_ASCII(cleaned).encode("ascii")
    except (ValueError, TypeError, RecursionError) as exc:
        raise CanonicalError(f"cannot encode as JSON: {exc}") from exc


def es_number(x: float) -> str:
    """ECMAScript Number::toString of a finite double: the number form of RFC 8785 and JSON.stringify.

    This is the spec's "integral values without a fraction (2.0 -> 2), others in the shortest round-trip
    form" made exact: Python's repr has the same shortest digits but another exponent style ("1e-07" vs
    "1e-7", "1e-05" vs "0.00001", "2.0" vs "2"), so a Node producer and this code would disagree without it.
    """
    if not math.isfinite(x):
        raise CanonicalError("non-finite number")
    if x == 0:
        return "0"  # also -0.0, as ECMAScript
    if -MAX_SAFE_INTEGER <= x <= MAX_SAFE_INTEGER and x == int(x):
        return str(int(x))  # the common case; below 2^53 an integral double's shortest digits are exact
    sign = "-" if x < 0 else ""
    _, digits_t, exp = Decimal(repr(abs(x))).as_tuple()
    assert isinstance(exp, int)
    raw = "".join(map(str, digits_t))
    digits = raw.rstrip("0")
    exp += len(raw) - len(digits)  # repr's "100.0" -> digits "1", exponent 2
    k = len(digits)
    n = exp + k  # value = 0.<digits> * 10^n
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
        out = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + out


def _int_as_double(value: int, path: str) -> str:
    try:
        return es_number(float(value))
    except OverflowError as exc:
        raise CanonicalError(f"integer at {path} is beyond a double's range") from exc


def _struct_parts(value: Any, out: list[str], path: str) -> None:
    # Hand-written because json.dumps always formats floats with float.__repr__.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, int):
        # A Struct number is a double: an int past 2^53 is written as the double it becomes (2**60 ->
        # 1152921504606847000), the digest every other producer computes for the same result.
        out.append(
            str(value) if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else _int_as_double(value, path)
        )
    elif isinstance(value, float):
        try:
            out.append(es_number(value))
        except CanonicalError as exc:
            raise CanonicalError(f"non-finite number at {path}") from exc
    elif isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CanonicalError(f"non-string key at {path}")
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(_quote(key))
            out.append(":")
            _struct_parts(value[key], out, f"{path}.{key}")
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _struct_parts(item, out, f"{path}[{i}]")
        out.append("]")
    else:
        raise CanonicalError(f"unsupported type {type(value).__name__} at {path}")


def canonical_struct(value: Any) -> bytes:
    """Canonical JSON bytes of a protobuf-Struct-like value (a structured job result; spec section 1).

    Accepts dict/list/tuple/str/bool/None/int/float; numbers are written as :func:`es_number` (so 2.0 is
    ``2``, and an int is written as the double a Struct would carry); NaN and infinities are rejected.
    Keys sorted by code point, no whitespace, UTF-8.
    """
    parts: list[str] = []
    _struct_parts(value, parts, "$")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError("string is not valid Unicode (lone surrogate)") from exc


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in pairs:
        if key in out:
            raise DuplicateKeyError(f"duplicate JSON key {key!r}")
        out[key] = item
    return out


def _reject_constant(name: str) -> Any:
    raise CanonicalError(f"{name} is not JSON")


def decode_strict(data: bytes | str) -> Any:
    """Parse JSON, rejecting duplicate keys at any depth, NaN/Infinity, and bytes that are not UTF-8.

    ``json.loads`` would guess UTF-16/32 for bytes; receipts are UTF-8 only, so bytes are decoded here.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CanonicalError("JSON is not UTF-8") from exc
    else:
        text = data
    if text.startswith("\ufeff"):
        raise CanonicalError("JSON starts with a byte order mark")
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except CanonicalError:
        raise
    except (ValueError, RecursionError) as exc:
        raise CanonicalError(f"invalid JSON: {exc}") from exc
