"""A job's input as the SDK miner's runners see it, and an input a runner cannot use (review round 28).

- A python callable is given the client's JSON as a command reading it on stdin parses it: the client's 3 is
  3, not 3.0 (a Struct holds every number as a double; `range(data["n"])` failed with TypeError, and the job
  with RUNNER_ERROR, attempt after attempt).
- A command that exits 65 (EX_DATAERR) says its input is wrong: the job fails for good at once
  (INVALID_INPUT) instead of being run again on every miner until its attempts are spent (EXIT_STATUS,
  retryable).
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from aitbc.miner import python_runner, subprocess_runner
from coord_support import COMPLETED, FAILED, Harness, struct
from test_miner_runners import run_one


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_callable_gets_json_integers_as_ints(coord: Harness) -> None:
    seen: list[Any] = []

    def fn(data: Any) -> Any:
        seen.append(data)
        return {"squares": [i * i for i in range(data["n"])]}

    done = await run_one(coord, python_runner(fn), {"n": 3, "x": 2.5, "deep": [{"k": -7}]})
    assert done.state == COMPLETED, (done.terminal_reason, done.terminal_message)
    assert seen == [{"n": 3, "x": 2.5, "deep": [{"k": -7}]}]
    assert type(seen[0]["n"]) is int and type(seen[0]["deep"][0]["k"]) is int
    assert (await coord.client("alice").result(done.job_id)).result.result == struct({"squares": [0, 1, 4]})


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_command_refusing_its_input_fails_the_job_for_good(coord: Harness) -> None:
    refuse = "import sys; print('no field n', file=sys.stderr); sys.exit(65)"
    done = await run_one(coord, subprocess_runner([sys.executable, "-c", refuse]), {"a": 1}, max_attempts=3)
    assert (done.state, done.attempt, done.terminal_reason) == (FAILED, 1, "INVALID_INPUT"), (
        done.terminal_message
    )
    assert "no field n" in done.terminal_message
