"""Bounds on what callers send. Every breach is a field violation; nothing is stored."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .clock import MICROS
from .errors import invalid
from .model import Constraints

Violations = list[tuple[str, str]]
# The constraints of a job that sets none (one instance, shared: validate_submission knows it passes)
NO_CONSTRAINTS = Constraints()


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = 1 << 20
    max_result_bytes: int = 1 << 20
    max_message_bytes: int = 8 << 20  # what a miner may send in one stream message (MAX_MESSAGE_BYTES)
    max_struct_depth: int = 32
    max_list_items: int = 32
    max_labels: int = 32
    max_short_string: int = 128
    max_long_string: int = 512
    max_batch: int = 1000
    max_attempts: int = 100
    max_ttl_s: int = 7 * 24 * 3600
    max_execution_timeout_s: int = 7 * 24 * 3600
    default_ttl_s: int = 900
    default_max_attempts: int = 3
    default_execution_timeout_s: int = 3600


def check_text(v: Violations, field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        v.append((field, f"at most {limit} characters (got {len(value)})"))


# What receipts carry (units, price, cost: the receipt format's grammar), within what the ledger books: 64-bit
# integers of nano units (so at most 9 decimals, and no more digits than it can hold).
_PLAIN_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,17})(\.[0-9]{1,9})?")


def check_decimal(v: Violations, field: str, value: str) -> None:
    if value and not _PLAIN_DECIMAL.fullmatch(value):
        v.append((field, "must be a plain non-negative decimal such as '2.5': at most 18 digits, then at most 9 "
                         f"after a point; no sign, exponent or spaces (got {value[:40]!r})"))  # fmt: skip


# A ledger entry is a 64-bit integer of nano units: a price above this cannot book the cost of one unit.
MAX_PRICE_NANO = 2**63 - 1
MAX_PRICE = "9223372036.854775807"


def check_price(v: Violations, field: str, value: str) -> None:
    """A plain decimal (check_decimal) the ledger can book one unit at: a miner's price past it had every result
    refused INVALID_RESULT, each job it took failing for good."""
    n = len(v)
    check_decimal(v, field, value)
    if len(v) == n and value:
        whole, _, fraction = value.partition(".")
        if int(whole) * 10**9 + int(fraction.ljust(9, "0")) > MAX_PRICE_NANO:
            v.append((field, f"at most {MAX_PRICE} (the ledger books a unit's cost in 64-bit nano units; "
                             f"got {value})"))  # fmt: skip


def check_labels(v: Violations, field: str, labels: tuple[tuple[str, str], ...], limits: Limits) -> None:
    if len(labels) > limits.max_labels:
        v.append((field, f"at most {limits.max_labels} entries (got {len(labels)})"))
    for key, value in labels:
        if not key or len(key) > limits.max_short_string or len(value) > limits.max_short_string:
            v.append(
                (
                    f"{field}[{key[:40]}]",
                    f"keys 1 to {limits.max_short_string} characters, values at most as long",
                )
            )
            break


def check_cuda(v: Violations, field: str, value: str) -> None:
    """A CUDA version as constraints and miners both give it ('12.1'): matched numerically."""
    check_text(v, field, value, 16)
    if value and not all(part.isdigit() for part in value.split(".")):
        v.append((field, "must look like '12.1'"))


def check_constraints(v: Violations, prefix: str, c: Constraints, limits: Limits) -> None:
    check_text(v, f"{prefix}.gpu", c.gpu, limits.max_short_string)
    check_text(v, f"{prefix}.region", c.region, 64)
    check_cuda(v, f"{prefix}.cuda", c.cuda)
    if len(c.models) > limits.max_list_items:
        v.append((f"{prefix}.models", f"at most {limits.max_list_items} entries"))
    if any(not m or len(m) > 256 for m in c.models):
        v.append((f"{prefix}.models", "each entry 1 to 256 characters"))
    check_decimal(v, f"{prefix}.max_price", c.max_price)
    check_labels(v, f"{prefix}.labels", c.labels, limits)
    if c.min_vram_gb > 4096:
        v.append((f"{prefix}.min_vram_gb", "at most 4096"))


@dataclass(slots=True)  # (not frozen: a frozen dataclass's __init__ costs twice as much, once per job)
class SubmissionFields:
    """A submission as the servicer extracted it, before validation."""

    payload_size: int
    payload_depth: int
    has_payload: bool
    constraints: Constraints
    priority: int
    ttl_s: float | None
    max_attempts: int
    execution_timeout_s: float | None
    idempotency_key: str
    metadata: tuple[tuple[str, str], ...]


def validate_submission(
    f: SubmissionFields, limits: Limits, prefix: str = ""
) -> tuple[Violations, int, int, int]:
    """Violations, and the effective ttl_us, max_attempts and execution_timeout_us."""
    v: Violations = []
    if not f.has_payload:
        v.append((f"{prefix}payload", "a payload (or payload_bytes) is required"))
    elif f.payload_size > limits.max_payload_bytes:
        v.append((f"{prefix}payload", f"at most {limits.max_payload_bytes} bytes (got {f.payload_size})"))
    if f.payload_depth > limits.max_struct_depth:
        v.append((f"{prefix}payload", f"nested at most {limits.max_struct_depth} levels deep"))
    if f.priority > 9:
        v.append((f"{prefix}priority", "0 to 9"))
    ttl_s = limits.default_ttl_s if f.ttl_s is None else f.ttl_s
    if not 1 <= ttl_s <= limits.max_ttl_s:
        v.append((f"{prefix}ttl", f"1 s to {limits.max_ttl_s} s"))
    attempts = f.max_attempts or limits.default_max_attempts
    if attempts > limits.max_attempts:
        v.append((f"{prefix}max_attempts", f"at most {limits.max_attempts}"))
    exec_s = limits.default_execution_timeout_s if f.execution_timeout_s is None else f.execution_timeout_s
    if not 1 <= exec_s <= limits.max_execution_timeout_s:
        v.append((f"{prefix}execution_timeout", f"1 s to {limits.max_execution_timeout_s} s"))
    # The checks below pass on empty values (unless a limit is negative): most jobs have no constraints and no
    # metadata, and the field names (f-strings) would be built for nothing.
    if len(f.idempotency_key) > limits.max_short_string:
        check_text(v, f"{prefix}idempotency_key", f.idempotency_key, limits.max_short_string)
    c = f.constraints
    if c is not NO_CONSTRAINTS or min(limits.max_short_string, limits.max_list_items, limits.max_labels) < 0:
        check_constraints(v, f"{prefix}constraints", c, limits)
    if f.metadata or limits.max_labels < 0:
        check_labels(v, f"{prefix}metadata", f.metadata, limits)
    return v, round(ttl_s * MICROS), attempts, round(exec_s * MICROS)


def raise_if(violations: Violations, what: str = "the request", reason: str = "INVALID_REQUEST") -> None:
    if violations:
        message = f"{what} is invalid: " + "; ".join(f"{f}: {d}" for f, d in violations[:5])
        raise invalid(message, violations, reason)


def check_id(field: str, value: str) -> None:
    """Ids are at most 64 characters; an empty one is a bad request."""
    if not value:
        raise invalid(f"{field} is required", [(field, "required")])
    if len(value) > 64:
        raise invalid(f"{field} is too long", [(field, "at most 64 characters")])
