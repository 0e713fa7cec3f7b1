"""Canonical JSON, the strict decoder, Struct number formatting, timestamps and DSSE envelope parsing."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from aitbc.receipts import (
    CanonicalError,
    DuplicateKeyError,
    EnvelopeError,
    build_envelope,
    canonical_json,
    canonical_struct,
    decode_strict,
    format_time,
    parse_envelope,
    result_bytes,
)
from aitbc.receipts.canonical import es_number
from aitbc.receipts.times import check_receipt_time, format_time_us, parse_receipt_time, parse_time
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st
from receipts_helpers import COORD, OTHER


def test_canonical_json_sorts_keys_compact_utf8() -> None:
    value = {"b": 1, "a": {"y": "é€𝄞", "x": [True, False]}, "A": '\n"\\'}
    assert canonical_json(value) == '{"A":"\\n\\"\\\\","a":{"x":[true,false],"y":"é€𝄞"},"b":1}'.encode()


def test_canonical_json_sorts_by_code_point() -> None:
    # "é" (U+00E9) sorts after "z"; "𝄞" (U+1D11E) after "￿" (U+FFFF) by code point, not UTF-16 unit.
    value = {"é": 1, "z": 2, "\uffff": 3, "𝄞": 4}
    assert list(json.loads(canonical_json(value))) == ["z", "é", "\uffff", "𝄞"]


@pytest.mark.parametrize(
    "bad", [1.5, 2.0, None, {"a": None}, [float("nan")], 2**53, -(2**53), {1: "x"}, b"x"]
)
def test_canonical_json_rejects_what_the_format_forbids(bad: object) -> None:
    with pytest.raises(CanonicalError):
        canonical_json(bad)


def test_canonical_json_rejects_lone_surrogate() -> None:
    with pytest.raises(CanonicalError):
        canonical_json({"a": "\ud800"})


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":1,"a":2}',
        b'{"a":{"b":1,"b":1}}',
        b'[{"x":[{"k":1,"k":2}]}]',
        b'{"a":1,"\\u0061":2}',  # the same key, escaped
    ],
)
def test_decode_strict_rejects_duplicate_keys_anywhere(text: bytes) -> None:
    with pytest.raises(DuplicateKeyError):
        decode_strict(text)


@pytest.mark.parametrize("text", [b"[NaN]", b"[Infinity]", b"[-Infinity]", b"\xef\xbb\xbf{}", b"\xff", b"{"])
def test_decode_strict_rejects_non_json(text: bytes) -> None:
    with pytest.raises(CanonicalError):
        decode_strict(text)


def test_decode_strict_accepts_plain_json() -> None:
    assert decode_strict(b'{"a":[1,"x",{"b":null}]}') == {"a": [1, "x", {"b": None}]}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.0, "2"),
        (-0.0, "0"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (1.5e-7, "1.5e-7"),
        (123.456, "123.456"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (2.0**60, "1152921504606847000"),
        (-1.25e-9, "-1.25e-9"),
        (5e-324, "5e-324"),
    ],
)
def test_struct_numbers_integral_without_fraction_others_shortest(value: float, text: str) -> None:
    assert es_number(value) == text
    assert canonical_struct({"v": value}) == b'{"v":' + text.encode() + b"}"


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_struct_numbers_round_trip(value: float) -> None:
    text = es_number(value)
    assert float(text) == value or (value == 0 and float(text) == 0)
    if value.is_integer() and abs(value) < 1e21:
        assert "." not in text and "e" not in text


@given(st.integers(-(2**53) + 1, 2**53 - 1))
def test_struct_integral_numbers_are_their_shortest_digits(n: int) -> None:
    shortest = format(Decimal(repr(float(n))), "f").rstrip("0").rstrip(".") or "0"
    assert es_number(float(n)) == shortest
    assert es_number(n) == shortest  # ints too, as before


def test_canonical_struct_nested_and_rejects_non_finite() -> None:
    value = {"z": [1.0, {"b": None, "a": True}], "a": "x"}
    assert canonical_struct(value) == b'{"a":"x","z":[1,{"a":true,"b":null}]}'
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(CanonicalError):
            canonical_struct({"x": [bad]})


def test_format_time_is_fixed_width_utc_and_refuses_naive() -> None:
    dt = datetime(2026, 11, 26, 22, 46, 59, 123456, tzinfo=UTC)
    assert format_time(dt) == "2026-11-26T22:46:59.123456Z"
    assert format_time(dt.replace(microsecond=0)) == "2026-11-26T22:46:59.000000Z"
    plus2 = dt.astimezone(timezone(timedelta(hours=2)))
    assert format_time(plus2) == "2026-11-26T22:46:59.123456Z"
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test
    assert parse_receipt_time("2026-11-26T22:46:59.123456Z") == dt
    for bad in ("2026-11-26T22:46:59Z", "2026-11-26T22:46:59.123456+00:00", "2026-11-26 22:46:59.123456Z"):
        with pytest.raises(ValueError):
            parse_receipt_time(bad)
    assert parse_time("2026-11-26T23:46:59.123456789+01:00") == dt
    with pytest.raises(ValueError):
        parse_time("2026-11-26T22:46:59")


def test_envelope_bytes_exact_and_parse_round_trip() -> None:
    env = build_envelope(b"hello", "text/plain", [COORD, OTHER])
    sig1 = __import__("base64").b64encode(COORD.sign(b"DSSEv1 10 text/plain 5 hello")).decode()
    expected_head = b'{"payload":"aGVsbG8=","payloadType":"text/plain","signatures":[{"keyid":"'
    assert env.startswith(expected_head + COORD.key_id.encode() + b'","sig":"' + sig1.encode() + b'"},')
    assert b" " not in env
    parsed = parse_envelope(env)
    assert parsed.payload == b"hello" and parsed.payload_type == "text/plain"
    assert [s.keyid for s in parsed.signatures] == [COORD.key_id, OTHER.key_id]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.pop("payload"),
        lambda o: o.update(extra=1),
        lambda o: o.update(payload="aGVsbG8"),  # missing padding
        lambda o: o.update(payload="aGVsbG9="),  # non-zero pad bits
        lambda o: o.update(payload="aGVs bG8="),
        lambda o: o.update(payload="aGVsbG8_"),  # url alphabet
        lambda o: o.update(signatures=[]),
        lambda o: o.update(signatures=[{"sig": "AAAA"}]),
        lambda o: o.update(payloadType=1),
        lambda o: o["signatures"][0].update(sig="!!"),
    ],
)
def test_parse_envelope_strict(mutate) -> None:  # type: ignore[no-untyped-def]
    obj = json.loads(build_envelope(b"hello", "t", [COORD]))
    mutate(obj)
    with pytest.raises(EnvelopeError):
        parse_envelope(json.dumps(obj).encode())


def test_parse_envelope_duplicate_key() -> None:
    env = build_envelope(b"hello", "t", [COORD])
    dup = env.replace(b'"payloadType":"t"', b'"payloadType":"t","payloadType":"u"')
    with pytest.raises(DuplicateKeyError):
        parse_envelope(dup)


@given(st.integers(0, 253402300799_999999))  # to 9999-12-31T23:59:59.999999Z
def test_format_time_us_is_format_time_of_the_same_instant(us: int) -> None:
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    assert format_time_us(us) == format_time(dt)
    check_receipt_time(format_time_us(us))
    assert parse_receipt_time(format_time_us(us)) == dt


def test_check_receipt_time_refuses_impossible_dates() -> None:
    for bad in ("2026-02-30T00:00:00.000000Z", "2026-13-01T00:00:00.000000Z", "2026-11-26T24:00:00.000000Z",
                "2026-11-26T22:46:60.000000Z", "2026-11-26T22:46:59.12345Z", 20261126):  # fmt: skip
        with pytest.raises(ValueError):
            check_receipt_time(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            parse_receipt_time(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "n", [2**53, 2**53 + 1, -(2**60), 10**22, 2**1023], ids=["2^53", "2^53+1", "-2^60", "10^22", "2^1023"]
)
def test_struct_ints_past_2_53_are_written_as_the_double_a_struct_carries(n: int) -> None:
    """A Struct number is a double: the digest of a dict holding a big int is the one the coordinator and the
    Node client compute for the same Struct (JSON.stringify of the double), not one of the exact digits."""
    struct = struct_pb2.Struct()
    struct.update({"n": n})
    assert canonical_struct({"n": n}) == canonical_struct({"n": float(n)}) == result_bytes(struct)
    assert canonical_struct({"n": 2**60}) == b'{"n":1152921504606847000}'


def test_struct_int_beyond_a_double_is_refused() -> None:
    with pytest.raises(CanonicalError, match="beyond"):
        canonical_struct({"n": 10**400})
