"""What a `cmd:` miner's job gives its client: JSON in, JSON out (review round 28).

A job whose input is JSON, run by a command that prints one JSON object, completes with a structured result
(as the echo and python runners give, and as grpcurl and `aitbc submit --wait` show); its digest is that of
the object's canonical JSON. Everything else stays the bytes of stdout: text, a JSON array, an object a
result's Struct would change (an integer past 2^53, a repeated key) or larger as a Struct than the coordinator
takes, a job whose input is bytes, and every job of a miner given `--raw-output`. (The runner returned stdout's
bytes for every job: a command answering {"A":"B"} to {"a":"b"} gave its client the bytes b'{"A":"B"}' to parse.)
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest
from aitbc import cli
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import Outcome, subprocess_runner
from coord_support import COMPLETED, Harness, struct
from test_miner_runners import run_one

PY = sys.executable
UPPER = "import sys; sys.stdout.write(sys.stdin.read().upper())"  # JSON in, the same JSON upper-cased out


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_command_printing_a_json_object_gives_a_structured_result(coord: Harness) -> None:
    done = await run_one(coord, subprocess_runner([PY, "-c", UPPER]), {"a": "b", "n": [1, 2.5]})
    assert done.state == COMPLETED, (done.terminal_reason, done.terminal_message)
    result = (await coord.client("alice").result(done.job_id)).result
    assert result.WhichOneof("output") == "result"
    assert result.result == struct({"A": "B", "N": [1, 2.5]})
    assert result.result_sha256 == hashlib.sha256(b'{"A":"B","N":[1,2.5]}').digest()


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_command_printing_text_gives_bytes(coord: Harness) -> None:
    done = await run_one(coord, subprocess_runner([PY, "-c", "print('plain text')"]), {"a": 1})
    assert done.state == COMPLETED, (done.terminal_reason, done.terminal_message)
    assert (await coord.client("alice").result(done.job_id)).result.result_bytes == b"plain text\n"


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_the_cli_raw_output_flag_keeps_stdouts_bytes(coord: Harness, tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        ["miner", "run", "--runner", f"cmd:{PY} -c pass", "--raw-output", "--address", "x", "--api-key", "k"]
    )
    assert args.raw_output
    done = await run_one(coord, cli._runner(f"cmd:{PY} -c {UPPER!r}", None, raw_output=True), {"a": "b"})
    assert done.state == COMPLETED, (done.terminal_reason, done.terminal_message)
    assert (await coord.client("alice").result(done.job_id)).result.result_bytes == b'{"A":"B"}'


async def outcome(stdout: bytes, payload: Any, **options: Any) -> Outcome:
    """The runner's outcome for a command printing stdout, given a job of payload (a dict: JSON; bytes)."""
    job = job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000")
    if isinstance(payload, bytes):
        job.payload_bytes = payload
    else:
        job.payload.CopyFrom(struct(payload))
    code = f"import sys\nsys.stdout.buffer.write({stdout!r})\n"
    return await subprocess_runner([PY, "-c", code], **options)(job)


@pytest.mark.parametrize(
    "stdout",
    [
        b"[1, 2]",  # not an object
        b'{"n": 9007199254740993}',  # a Struct's double would change it
        b'{"a": 1, "a": 2}',  # which one?
        b'{"a": NaN}',
        b'{"a": 1} trailing',
        b'{"a": "\xff"}',  # not UTF-8
        b'{"a":' * 32 + b"1" + b"}" * 32,  # deeper than the coordinator takes
    ],
)
async def test_stdout_a_struct_would_not_hold_exactly_stays_bytes(stdout: bytes) -> None:
    assert (await outcome(stdout, {"in": 1})).output == stdout


async def test_json_out_only_for_json_in_and_unless_told_otherwise() -> None:
    assert (await outcome(b' {"ok": true}\n', {"in": 1})).output == {"ok": True}
    assert (await outcome(b'{"ok": true}', b"bytes in")).output == b'{"ok": true}'
    assert (await outcome(b'{"ok": true}', {"in": 1}, json_results=False)).output == b'{"ok": true}'


@pytest.mark.coordinator(lease_seconds=30.0, max_payload_bytes=16_384)
async def test_a_json_object_too_large_as_a_struct_is_sent_as_its_bytes(coord: Harness) -> None:
    """A Struct holds a number in 9 bytes and more: 4000 zeros, 8 KB printed, are over 40 KB as a Struct, over
    what this coordinator takes. The result is then stdout's bytes, which fit, not a RESULT_TOO_LARGE failure."""
    zeros = "import json; print(json.dumps({'zeros': [0] * 4000}, separators=(',', ':')))"
    done = await run_one(coord, subprocess_runner([PY, "-c", zeros]), {"a": 1})
    assert done.state == COMPLETED, (done.terminal_reason, done.terminal_message)
    result = (await coord.client("alice").result(done.job_id)).result
    assert result.result_bytes.startswith(b'{"zeros":[0,0,') and len(result.result_bytes) < 16_384
