"""The documented CLI as a new operator meets it (docs walkthrough): bad flags of `aitbc miner run` and
`aitbc admin` are one line and exit 2, `aitbc admin`'s refusals name their reason as `aitbc`'s do, and a
`python:MODULE:FUNCTION` runner finds a module in the directory the miner starts from."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from aitbc.cli import main
from coord_support import ADMIN_KEY, Harness, miner_key

# The installed console script: its sys.path[0] is the script's directory, not the working directory
# (`python -m aitbc.cli` would hide the bug by putting the working directory first).
AITBC = str(Path(sys.executable).parent / "aitbc")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--runner", "bogus"), "aitbc: unknown runner 'bogus'"),
        (("--runner", "python:json"), "aitbc: --runner: python:MODULE:FUNCTION"),
        (("--runner", "python:docs_no_such_module:run"), "aitbc: --runner: cannot import docs_no_such_module"),
        (("--runner", "python:json:no_such_function"), "aitbc: --runner: module json has no no_such_function"),
        (("--runner", "echo", "--gpu", "A100"), "aitbc: --gpu: MODEL:MEMORY_GB"),
        (("--runner", "echo", "--gpu", "A100:lots"), "aitbc: --gpu: MODEL:MEMORY_GB"),
        (("--runner", "echo", "--label", "tier"), "aitbc: --label: KEY=VALUE"),
        (("--slots", "-2"), "aitbc: --slots: 1 to 1024 jobs at once, not -2"),
        (("--slots", "0"), "aitbc: --slots: 1 to 1024 jobs at once, not 0"),
        (("--slots", "5000000000"), "aitbc: --slots: 1 to 1024 jobs at once"),
        (("--signing-key-hex", "zz"), "aitbc: --signing-key-hex: seed hex is not hex"),
        (("--signing-key-hex", "ab" * 31), "aitbc: --signing-key-hex: an Ed25519 seed is 32 bytes"),
    ],
)  # fmt: skip
def test_bad_miner_flags_are_one_line_and_exit_2(
    argv: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each ended in a Python traceback (IndexError, ValueError, ModuleNotFoundError...) and exit 1, where
    the README promises one line and exit 2 for bad command-line input. Nothing connects: a closed port."""
    code = main(["miner", "run", *argv, "--address", "127.0.0.1:9", "--api-key", "k", "--give-up-after", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(says) and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ("jobs", "--state", "bogus"),
        ("jobs", "--limit", "0"),
        ("top", "--interval", "0"),
    ],
)
def test_bad_admin_flags_exit_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """`aitbc admin` exited 1 for bad input, as for a refused call: a script could not tell them apart."""
    try:
        code = main(["admin", *argv, "--address", "127.0.0.1:9", "--api-key", "k"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("aitbc admin: ") and err.count("\n") == 1, err


async def test_a_refused_admin_call_names_its_reason(
    coord: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """`aitbc admin drain` of an unknown miner printed `aitbc admin: NOT_FOUND: ...` without the ErrorInfo
    reason (`MINER_NOT_FOUND`), which `aitbc` prints and the README shows."""
    code = await asyncio.to_thread(
        main, ["admin", "drain", "gpu-07", "--address", coord.address, "--api-key", ADMIN_KEY]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("aitbc admin: NOT_FOUND (MINER_NOT_FOUND): miner 'gpu-07'"), err
    assert err.count("\n") == 1, err


async def test_a_python_runner_module_beside_the_miner_is_found(coord: Harness, tmp_path: Path) -> None:
    """`aitbc miner run --runner python:my_worker:run` started in the directory of my_worker.py failed with
    ModuleNotFoundError: the console script does not put the working directory on sys.path."""
    workdir = tmp_path / "miner"
    workdir.mkdir()
    (workdir / "docs_walkthrough_worker.py").write_text(
        "def run(data):\n    return {'doubled': data['n'] * 2}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AITBC_ADDRESS", "AITBC_API_KEY")}
    proc = await asyncio.create_subprocess_exec(
        AITBC, "miner", "run", "--address", coord.address, "--api-key", miner_key("miner-00"),
        "--runner", "python:docs_walkthrough_worker:run", "--slots", "1", "--give-up-after", "30",
        cwd=workdir, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        client = coord.client()
        job = await client.submit({"n": 21})
        try:
            done = await coord.finished(client, job.job_id, within=20.0)
        except AssertionError:
            if proc.returncode is None:
                proc.kill()
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
            raise AssertionError(f"miner exited {await proc.wait()}: {err[-2000:]}") from None
        assert done.state == 4, done  # COMPLETED
        result = await client.result(done.job_id)
        assert dict(result.result.result) == {"doubled": 42.0}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # drains and exits 0
            await asyncio.wait_for(proc.communicate(), 30)
