"""The `aitbc` job and receipt commands as a client user meets them (helper-145's audit), against a real
coordinator: a number flag past what its protobuf field holds (--priority -5, --ttl nan, --page-size 2**32,
`receipts inclusion 2**64`, ...) is exit 2 with the flag named, nothing sent (was a ValueError traceback and
exit 1); an --out that cannot be written is one line and exit 2 (was a traceback); `submit-many` with stdin
closed is one line and exit 2 (was an AttributeError traceback); Ctrl-C during `submit --wait` names the job it
stored (its id was printed nowhere); Ctrl-C during `watch`/`wait` ends quietly with exit 130."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from aitbc.cli import main
from coord_support import CLIENT_KEYS, QUEUED, Harness, eventually

AITBC = str(Path(sys.executable).parent / "aitbc")  # the installed console script
U32, U64 = str(2**32), str(2**64)


async def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int | str | None, str, str]:
    """`aitbc ARGV` in-process, in a thread (it runs its own event loop): exit code, stdout, stderr."""
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(main, list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def jobs_stored(coord: Harness) -> int:
    return coord.db.scalar("SELECT COUNT(*) FROM jobs")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("submit", "{}", "--priority", "-5"), "argument --priority: must be 0 or more, not -5"),
        (("submit", "{}", "--priority", U32), f"argument --priority: must be at most {2**32 - 1}, not {U32}"),
        (("submit", "{}", "--priority", "x"), "argument --priority: a whole number is needed, not 'x'"),
        (("submit", "{}", "--max-attempts", U32), f"argument --max-attempts: must be at most {2**32 - 1}"),
        (("submit", "{}", "--max-attempts", "x"), "argument --max-attempts: a whole number is needed, not 'x'"),
        (("submit", "{}", "--ttl", "nan"), "argument --ttl: a finite number of seconds"),
        (("submit", "{}", "--ttl", "inf"), "argument --ttl: a finite number of seconds"),
        (("submit", "{}", "--ttl", "1e30"), "argument --ttl: a finite number of seconds"),
        (("submit", "{}", "--ttl", "x"), "argument --ttl: a number of seconds is needed, not 'x'"),
        (("submit-many", "FILE", "--ttl", "nan"), "argument --ttl: a finite number of seconds"),
        (("submit-many", "FILE", "--priority", "-1"), "argument --priority: must be 0 or more, not -1"),
        (("list", "--page-size", "-1"), "argument --page-size: must be 0 or more, not -1"),
        (("list", "--page-size", U32), "argument --page-size: must be at most"),
        (("receipts", "inclusion", U64), f"argument leaf_index: must be at most {2**64 - 1}, not {U64}"),
        (("receipts", "inclusion", "0", "--tree-size", U64), "argument --tree-size: must be at most"),
        (("receipts", "consistency", U64), "argument first_size: must be at most"),
        (("receipts", "consistency", "1", "--second-size", U64), "argument --second-size: must be at most"),
        (("receipts", "consistency", "x"), "argument first_size: a whole number is needed, not 'x'"),
    ],
)  # fmt: skip
async def test_a_number_past_its_field_is_a_usage_error_and_nothing_is_sent(
    coord: Harness, tmp_path: Path, argv: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each but the `x`s was protobuf's `ValueError: Value out of range` (or the SDK's "ttl_s: a finite number")
    as a traceback, exit 1, for a flag argparse had let through; the `x`s said `invalid _not_negative value`."""
    (lines := tmp_path / "jobs.jsonl").write_text('{"n": 1}\n')
    argv = tuple(str(lines) if a == "FILE" else a for a in argv)
    code, out, err = await run_main(
        capsys, *argv, "--address", coord.address, "--api-key", CLIENT_KEYS["alice"]
    )
    assert code == 2, err
    assert says in err.rstrip("\n").splitlines()[-1], err
    assert "Traceback" not in err and "_not_negative" not in err and out == "", err
    assert jobs_stored(coord) == 0


@pytest.mark.parametrize("command", [("receipts", "keys"), ("receipts", "checkpoint")])
@pytest.mark.parametrize("where", ["missing/dir/out.json", "."])
async def test_an_out_file_that_cannot_be_written_is_one_line_and_exit_2(
    coord: Harness, tmp_path: Path, command: tuple[str, ...], where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing directory, or a directory as --out: FileNotFoundError / IsADirectoryError as a traceback."""
    out_path = tmp_path / where
    code, out, err = await run_main(capsys, *command, "--out", str(out_path), "--address", coord.address,
                                    "--api-key", CLIENT_KEYS["alice"])  # fmt: skip
    assert code == 2, err
    assert err.startswith(f"aitbc: --out: cannot write {out_path}: ") and err.count("\n") == 1, err
    assert out == ""


async def test_an_existing_out_file_is_replaced(
    coord: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "keys.json"
    out_path.write_text("old and longer than nothing" * 100)
    code, out, err = await run_main(capsys, "receipts", "keys", "--out", str(out_path), "--address",
                                    coord.address, "--api-key", CLIENT_KEYS["alice"])  # fmt: skip
    assert code == 0 and out == "" and err == "", err
    assert out_path.read_text().startswith('{\n "keys": [')


async def cli_process(coord: Harness, *argv: str, stdin_closed: bool = False) -> asyncio.subprocess.Process:
    env = dict(os.environ, AITBC_ADDRESS=coord.address, AITBC_API_KEY=CLIENT_KEYS["alice"])
    if stdin_closed:  # (fd 0 closed, as `aitbc submit-many <&-` in a shell: Python's sys.stdin is None)
        return await asyncio.create_subprocess_exec(
            "sh", "-c", 'exec "$0" "$@" <&-', AITBC, *argv, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    return await asyncio.create_subprocess_exec(
        AITBC, *argv, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def ended(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_submit_many_with_stdin_closed_is_one_line_and_exit_2(coord: Harness) -> None:
    """sys.stdin is None: `AttributeError: 'NoneType' object has no attribute 'buffer'`, a traceback, exit 1."""
    code, out, err = await ended(await cli_process(coord, "submit-many", stdin_closed=True))
    assert code == 2 and out == "", err
    assert err == "aitbc: submit-many: no standard input (closed): give a FILE\n", err
    assert jobs_stored(coord) == 0


async def test_ctrl_c_during_submit_wait_names_the_stored_job(coord: Harness) -> None:
    """The job is stored, no miner runs it; Ctrl-C ended the wait with exit 130 and nothing said: the job's id
    was printed nowhere (submit --wait prints only at the end), so it could not be followed or canceled."""
    process = await cli_process(coord, "submit", '{"n": 1}', "--wait")
    job_id = await eventually(
        lambda: coord.db.scalar("SELECT job_id FROM jobs"), within=30, what="the job stored"
    )
    await asyncio.sleep(0.5)  # (into the wait)
    process.send_signal(signal.SIGINT)
    code, out, err = await ended(process)
    assert code == 130 and out == "", err
    assert (
        err == f"aitbc: interrupted (job {job_id} was submitted: follow it with `aitbc wait {job_id}`)\n"
    ), err
    assert coord.db.job_state(job_id) == QUEUED


@pytest.mark.parametrize("command", ["watch", "wait"])
async def test_ctrl_c_during_watch_or_wait_ends_quietly_with_130(coord: Harness, command: str) -> None:
    job = await coord.client().submit({"n": 1})  # no miner: it stays QUEUED
    process = await cli_process(coord, command, job.job_id)
    await asyncio.sleep(1.5)
    process.send_signal(signal.SIGINT)
    code, out, err = await ended(process)
    assert code == 130 and err == "", err
    assert (job.job_id in out) == (command == "watch"), out


async def test_constraints_models_as_a_string_is_refused_not_split_into_letters(
    coord: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--constraints '{"models": "llama"}'` was taken (protobuf iterates a str into a repeated field): the job
    was stored wanting the models "l", "a", "m"... and waited for a miner serving them, for ever."""
    code, out, err = await run_main(capsys, "submit", "{}", "--constraints", '{"models": "llama"}', "--address",
                                    coord.address, "--api-key", CLIENT_KEYS["alice"])  # fmt: skip
    assert code == 2 and out == "", err
    assert err.startswith("aitbc: --constraints: Failed to parse models field: ") and err.count("\n") == 1, (
        err
    )
    assert jobs_stored(coord) == 0


@pytest.mark.parametrize(
    ("constraints", "field"),
    [('{"gpu": 5}', "gpu"), ('{"max_price": 2}', "max_price"), ('{"labels": {"a": 1}}', "labels"),
     ('{"min_vram_gb": -1}', "min_vram_gb"), ('{"min_vram_gb": 24.5}', "min_vram_gb")],
)  # fmt: skip
async def test_a_constraint_of_the_wrong_kind_names_its_field(
    coord: Harness, constraints: str, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Said `bad argument type for built-in operation` (or protobuf's "'float' object cannot be interpreted as
    an integer"), naming no field."""
    code, out, err = await run_main(capsys, "quote", "--constraints", constraints, "--address", coord.address,
                                    "--api-key", CLIENT_KEYS["alice"])  # fmt: skip
    assert code == 2 and out == "", err
    assert err.startswith(f"aitbc: --constraints: Failed to parse {field} field: "), err
    assert err.count("\n") == 1, err


async def test_constraints_of_every_kind_reach_the_job(
    coord: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    given = {"gpu": "A100", "cuda": "12.2", "min_vram_gb": 24, "models": ["llama"], "region": "eu-west",
             "max_price": "2.5", "labels": {"tier": "gold"}}  # fmt: skip
    code, out, err = await run_main(capsys, "submit", "{}", "--constraints", json.dumps(given), "--address",
                                    coord.address, "--api-key", CLIENT_KEYS["alice"])  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["constraints"] == given
