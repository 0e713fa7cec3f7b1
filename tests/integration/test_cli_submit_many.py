"""`aitbc submit-many`: SubmitJobs from the command line (helper-101). One job input per JSON line, from a file or
stdin, the options of `aitbc submit`; the jobs printed as JSON lines, all stored or none; each job under a key of
its own (KEY-LINE), so that a retry after UNAVAILABLE, or the same command run again, stores no job twice; a bad
line refused with exit 2 and its number, nothing sent."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aitbc import cli
from aitbc.miner import echo_runner
from coord_support import CLIENT_KEYS, COMPLETED, QUEUED, Harness, sdk_miner
from test_client_generated_keys import GENERATED, AnswerCutter, stored

AITBC = str(Path(sys.executable).parent / "aitbc")  # the installed console script
LINES = '{"n": 1}\n\n{"n": 2, "nested": {"steps": [1, 2]}}\n{"prompt": "three"}\n'  # (a blank line: skipped)
INPUTS = [{"n": 1}, {"n": 2, "nested": {"steps": [1, 2]}}, {"prompt": "three"}]


def auth(address: str) -> list[str]:
    return ["--address", address, "--api-key", CLIENT_KEYS["alice"]]


async def aitbc(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`aitbc ARGV` in-process, in a thread (it runs its own event loop): exit code, stdout, stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def printed(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


async def test_jobs_from_a_file_are_stored_and_printed_as_json_lines(
    coord: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(LINES)
    code, out, err = await aitbc(capsys, "submit-many", str(path), "--priority", "3",
                                 "--idempotency-key", "batch-7", *auth(coord.address))  # fmt: skip
    assert (code, err) == (0, ""), err
    jobs = printed(out)
    assert len(out.splitlines()) == 3
    assert [j["idempotency_key"] for j in jobs] == ["batch-7-1", "batch-7-3", "batch-7-4"]  # KEY-LINE
    assert {j["state"] for j in jobs} == {"JOB_STATE_QUEUED"} and {j["priority"] for j in jobs} == {3}
    alice = coord.client("alice")
    assert [(await alice.get(j["job_id"])).state for j in jobs] == [QUEUED] * 3
    assert [cli.message_json((await alice.get(j["job_id"])).payload) for j in jobs] == INPUTS


async def test_jobs_from_stdin_with_wait_print_their_results(coord: Harness) -> None:
    coord.run_miner(sdk_miner(coord.address, echo_runner, slots=2))
    process = await asyncio.create_subprocess_exec(
        AITBC, "submit-many", "--wait", "--timeout", "30", *auth(coord.address),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(LINES.encode()), 60)
    assert process.returncode == 0, err.decode()
    lines = printed(out.decode())
    jobs, results = lines[:3], lines[3:]
    assert all(GENERATED.match(j["idempotency_key"].rsplit("-", 1)[0]) for j in jobs), (
        jobs
    )  # auto-UUIDv7-LINE
    assert len({j["idempotency_key"] for j in jobs}) == 3
    assert [r["job"]["job_id"] for r in results] == [j["job_id"] for j in jobs]
    assert [r["job"]["state"] for r in results] == ["JOB_STATE_COMPLETED"] * 3
    assert [r["result"]["result"] for r in results] == INPUTS  # (echo: the input back, numbers as submitted)
    alice = coord.client("alice")
    assert [(await alice.get(j["job_id"])).state for j in jobs] == [COMPLETED] * 3


@pytest.mark.parametrize(("bad", "why"), [("{not json", "not JSON"), ("[1, 2]", "a JSON object is needed")])
async def test_a_bad_line_is_refused_with_its_number_and_nothing_is_submitted(
    coord: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path, bad: str, why: str
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(f'{{"n": 1}}\n\n{bad}\n{{"n": 4}}\n')
    code, out, err = await aitbc(capsys, "submit-many", str(path), *auth(coord.address))
    assert (code, out) == (2, "")
    assert err.startswith("aitbc: line 3: ") and why in err, err
    assert stored(coord) == []  # all or none: the good lines were not sent either
    code, out, err = await aitbc(capsys, "submit-many", str(tmp_path / "empty.jsonl"), *auth(coord.address))
    assert code == 2 and "submit-many" in err, err  # (no such file)


async def test_a_retry_after_a_lost_answer_and_a_second_run_keep_one_job_per_key(
    coord: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    relay = AnswerCutter("127.0.0.1", coord.coordinator.port)  # type: ignore[union-attr]
    await relay.start()
    try:
        path = tmp_path / "jobs.jsonl"
        path.write_text(LINES)
        # the answer to SubmitJobs is cut once the jobs are stored: UNAVAILABLE, made again, under the same keys
        relay.condition = lambda: len(stored(coord)) == 3
        argv = ["submit-many", str(path), *auth(f"127.0.0.1:{relay.port}")]
        code, out, err = await aitbc(capsys, *argv)
        assert relay.fired.is_set(), "the answer was not cut"
        assert (code, err) == (0, ""), err
        jobs = printed(out)
        assert sorted(stored(coord)) == sorted((j["job_id"], j["idempotency_key"]) for j in jobs)
        # the same lines again with the batch's key: the same jobs, none stored twice
        key = jobs[0]["idempotency_key"].removesuffix("-1")
        code, out, err = await aitbc(capsys, *argv, "--idempotency-key", key)
        assert (code, err) == (0, ""), err
        assert [j["job_id"] for j in printed(out)] == [j["job_id"] for j in jobs]
        assert len(stored(coord)) == 3
    finally:
        await relay.close()
