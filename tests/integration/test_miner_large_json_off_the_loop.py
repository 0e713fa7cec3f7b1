"""Large JSON in and out of the SDK miner's runners is converted off its event loop (review round 32).

A few MB of JSON take seconds of CPU to convert (a Struct to a dict and to canonical JSON, stdout to a Struct
checked to hold it exactly, a Result and its digest). On the loop, that long, the miner's stream went silent:
the coordinator took the miner for gone and its job was lost (HEARTBEAT_TIMEOUT: with one attempt, failed).
Now the conversions run in worker threads and the loop goes on serving the stream: a job's input given to a
python callable or to a command, and a command's printed JSON object taken as the structured result.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from aitbc.miner import python_runner, subprocess_runner
from coord_support import COMPLETED, Harness, sdk_miner

PY = sys.executable
OUT_ROWS = 60_000  # about 2.2 MB printed: its conversions take seconds
IN_ROWS = 120_000  # about 4.5 MB of input: seconds to convert
PRINT_ROWS = (
    f"import json; print(json.dumps({{'rows': [{{'name': 'x' * 9, 'n': i}} for i in range({OUT_ROWS})]}}))"
)
COUNT_ROWS = "import json, sys; print(json.dumps({'rows': len(json.load(sys.stdin)['rows'])}))"
LARGE = pytest.mark.coordinator(
    lease_seconds=30.0, heartbeat_timeout_seconds=1.0, max_payload_bytes=16 << 20, max_message_bytes=32 << 20
)


def rows() -> dict[str, Any]:
    return {"rows": [{"name": "x" * 9, "n": i} for i in range(IN_ROWS)]}


async def run_job(coord: Harness, runner: Any, payload: dict[str, Any]) -> Any:
    """Run one job of payload (one attempt) on an SDK miner with runner; the job's result once it completed.
    The job is submitted first: the coordinator, in this process and on this loop, takes a large payload in
    for about a second (holding up the miner's heartbeats too); then the miner connects and gets it."""
    alice = coord.client("alice")
    request = await asyncio.to_thread(
        alice.request, payload, max_attempts=1
    )  # (the client's Struct: off the loop)
    [job] = await alice.submit_requests([request])
    miner = sdk_miner(coord.address, runner)
    task = coord.run_miner(miner)
    done = await coord.finished(alice, job.job_id, within=60.0)
    assert not task.done()
    assert (done.state, done.attempt) == (COMPLETED, 1), (done.terminal_reason, done.terminal_message)
    assert miner.connects == 1, "the miner's stream was lost while it converted the job's JSON"
    return (await alice.result(job.job_id)).result


@LARGE
async def test_a_large_json_result_is_decoded_and_encoded_off_the_miners_loop(coord: Harness) -> None:
    result = await run_job(coord, subprocess_runner([PY, "-c", PRINT_ROWS]), {"a": 1})
    listed = result.result.fields["rows"].list_value.values
    assert len(listed) == OUT_ROWS and listed[-1].struct_value.fields["n"].number_value == OUT_ROWS - 1


@LARGE
async def test_a_large_json_input_reaches_a_python_callable_off_the_miners_loop(coord: Harness) -> None:
    result = await run_job(coord, python_runner(lambda data: {"rows": len(data["rows"])}), rows())
    assert result.result.fields["rows"].number_value == IN_ROWS


@LARGE
async def test_a_large_json_input_reaches_a_command_off_the_miners_loop(coord: Harness) -> None:
    result = await run_job(coord, subprocess_runner([PY, "-c", COUNT_ROWS]), rows())
    assert result.result.fields["rows"].number_value == IN_ROWS
