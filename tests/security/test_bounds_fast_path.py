"""check_bounds decides "nothing to report" with a fast check (no field paths built) before naming breaches:
the fast check must accept exactly what the full walk finds nothing in. Random requests of every RPC, with
strings, bytes and lists drawn around their limits (and NUL characters) at every depth."""

from __future__ import annotations

import random

import pytest
from aitbc.coordinator.v1 import (
    admin_service_pb2,
    job_service_pb2,
    miner_service_pb2,
    receipt_service_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from coordinator.domain.errors import CoordinatorError
from coordinator.security import bounds

STRING, BYTES, MESSAGE = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE


def request_types() -> list[Descriptor]:
    out = []
    for module in (job_service_pb2, miner_service_pb2, receipt_service_pb2, admin_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            out.extend(m.input_type for m in service.methods)
    return out


def around(rng: random.Random, limit: int) -> int:
    """A length within a limit (often right at it), now and then just over it: most requests breach one
    bound or none, so a bound the fast check missed shows."""
    if rng.random() < 0.06:
        return limit + 1
    return rng.choice([0, 1, max(0, limit - 1), limit, rng.randint(0, limit)])


def text(rng: random.Random, limit: int) -> str:
    value = "x" * around(rng, limit)
    if value and rng.random() < 0.03:
        i = rng.randrange(len(value))
        value = value[:i] + "\x00" + value[i + 1 :]
    return value


def fill(rng: random.Random, msg: Message, depth: int = 0) -> None:
    for field in msg.DESCRIPTOR.fields:
        if rng.random() < 0.4 or (
            field.message_type is not None and field.message_type.full_name in bounds.NOT_WALKED
        ):
            continue
        limit = bounds.LIMITS.get(field.full_name)
        if field.is_repeated:
            count = (
                around(rng, limit)
                if limit is not None and limit <= 64 and rng.random() < 0.3
                else rng.randint(0, 3)
            )
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target = getattr(msg, field.name)
                for i in range(count):
                    key = f"k{i}" + text(rng, bounds.DEFAULT_STRING) if rng.random() < 0.3 else f"k{i}"
                    target[key] = text(rng, bounds.DEFAULT_STRING) if rng.random() < 0.3 else "v"
            elif field.type == MESSAGE:
                if depth < 3:
                    for _ in range(count):
                        fill(rng, getattr(msg, field.name).add(), depth + 1)
            elif field.type == STRING:
                each = bounds.LIMITS.get(field.full_name + "[]", bounds.DEFAULT_STRING)
                getattr(msg, field.name).extend(text(rng, each) for _ in range(count))
            elif field.type == BYTES:
                getattr(msg, field.name).extend(b"b" * rng.randint(0, 3) for _ in range(count))
            else:  # numbers and enums (1: a valid value of either)
                getattr(msg, field.name).extend([1] * count)
        elif field.type == STRING:
            setattr(msg, field.name, text(rng, limit or bounds.DEFAULT_STRING))
        elif field.type == BYTES:
            setattr(msg, field.name, b"b" * around(rng, limit or 64))
        elif field.type == MESSAGE and depth < 3:
            fill(rng, getattr(msg, field.name), depth + 1)


@pytest.mark.parametrize("seed", range(4))
def test_the_fast_check_accepts_exactly_what_the_walk_finds_nothing_in(seed: int) -> None:
    rng = random.Random(seed)
    seen = {True: 0, False: 0}
    for descriptor in request_types():
        cls = GetMessageClass(descriptor)
        for _ in range(150):
            msg = cls()
            fill(rng, msg)
            violations: list[tuple[str, str]] = []
            bounds._walk(msg, "", violations)
            assert bounds._within(msg) == (not violations), (descriptor.full_name, violations, msg)
            seen[not violations] += 1
            if violations:  # and check_bounds still names them
                with pytest.raises(CoordinatorError) as refused:
                    bounds.check_bounds(msg)
                assert refused.value.field_violations[0] == violations[0]
            else:
                bounds.check_bounds(msg)
    assert seen[True] > 100 and seen[False] > 100  # both sides drawn often
