"""aitbc.miner.job_input gives a JSON job's input as json.loads(canonical JSON) would, without printing and
parsing it: the same values, the same types (integral doubles below 2^53 as ints) and the same key order."""

from __future__ import annotations

import json
import random

from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import job_input
from aitbc.receipts import canonical_struct
from google.protobuf.json_format import MessageToDict

LEAVES = [0, -7, 3.5, -0.0, 2.0**53 - 1, 2.0**53, 2.0**60, 1e21, 1e22, -(2.0**55), 0.1, True, False, None, "", "é",
          "😀", "\uffff", "a\"b\\c\n"]  # fmt: skip
KEYS = ["a", "b", "Z", "é", "😀", "\uffff", "", "aa", "a0"]


def random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        return rng.choice(LEAVES)
    if roll < 0.7:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(KEYS) + str(rng.randint(0, 2)): random_value(rng, depth + 1)
        for _ in range(rng.randint(0, 4))
    }


def test_job_input_is_the_canonical_json_of_the_payload_read_back() -> None:
    rng = random.Random(20261127)
    for _ in range(2000):
        job = job_pb2.Job()
        job.payload.update({key: random_value(rng) for key in rng.sample(KEYS, rng.randint(1, len(KEYS)))})
        expected = json.loads(canonical_struct(MessageToDict(job.payload)))
        got = job_input(job)
        assert repr(got) == repr(expected)  # (repr: types and key order too, not only equality)


def test_job_input_of_bytes_is_the_bytes() -> None:
    assert job_input(job_pb2.Job(payload_bytes=b"\x00raw")) == b"\x00raw"
