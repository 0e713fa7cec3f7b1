"""`aitbc miner run --runner cmd:...` (review round 19): the words of the command made absolute, and the
runner's time limit.

- `_paths_made_absolute` made every word naming an existing path absolute, `.` and `..` included: the
  command runs in the job's workspace, so `cmd:find . -type f` or `cmd:tool --dir .` meant the workspace and
  got the miner's start directory (shared by every job) instead.
- a negative `--timeout` (or `timeout_s`) was taken as the limit: every command "ran longer than -1 s" at
  once, and every job burnt its attempts failing TIMEOUT.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aitbc import cli
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import subprocess_runner


def test_dot_and_dot_dot_stay_the_workspaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "worker.py").write_text("")
    made = cli._paths_made_absolute(["python3", "worker.py", ".", "./", "..", "-", "./worker.py"])
    assert made == ["python3", str(tmp_path / "worker.py"), ".", "./", "..", "-", str(tmp_path / "worker.py")]


def test_a_negative_timeout_is_refused_by_the_cli() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(
            ["miner", "run", "--api-key", "k", "--runner", "echo", "--timeout", "-1"]
        )


async def test_a_runner_given_no_positive_limit_runs_the_command() -> None:
    job = job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000", payload_bytes=b"")
    for limit in (-1.0, 0.0):
        out = await asyncio.wait_for(
            subprocess_runner(["sh", "-c", "sleep 0.2; echo hi"], timeout_s=limit)(job), 20
        )
        assert out.output == b"hi\n"
