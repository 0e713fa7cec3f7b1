"""A `cmd:` command is exec'd by the miner itself, no shell between (helper-118; the shell guard of 1db2c52 ran it
as `/bin/sh -c GUARD sh FD COMMAND...`): the same arguments, byte for byte; the miner's environment, every
variable unchanged, plus AITBC_JOB_ID, AITBC_WORKSPACE and AITBC_MINER_TOKEN; the same exit statuses; and a
command exec cannot run fails COMMAND_NOT_STARTED, as docs/miners.md says, never run some other way by a shell.

Real commands, started by the real subprocess_runner. Helper-117's review named what the shell guard changed
(strict xfails); each of those holds now.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import JobFailed, Outcome, subprocess_runner

PY = sys.executable


def bytes_job(data: bytes = b"") -> job_pb2.Job:
    return job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000", payload_bytes=data)


async def run(command: list[str]) -> Outcome:
    return await asyncio.wait_for(subprocess_runner(command)(bytes_job(b"the input")), 30)


async def test_arguments_reach_the_command_byte_for_byte() -> None:
    """No shell between the miner and the command: no splitting, globbing, expansion or option parsing."""
    arguments = [
        "a b",
        "'q\"",
        "x\ny",
        "$HOME",
        "`id`",
        "\\n\\",
        "*",
        "-x",
        "",
        "--",
        os.fsdecode(b"\xff\xfe"),
    ]
    probe = "import os, sys; print(repr([os.fsencode(a) for a in sys.argv[1:]]))"
    outcome = await run([PY, "-c", probe, *arguments])
    assert outcome.output.decode().strip() == repr([os.fsencode(a) for a in arguments])


async def test_a_command_found_on_the_path_keeps_its_name_as_argv0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    probe = "print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[0].decode())"
    outcome = await run([Path(PY).name, "-c", probe])
    assert outcome.output.decode().strip() == Path(PY).name


@pytest.mark.parametrize("status", [1, 2, 126, 127, 128 + 9])
async def test_a_commands_own_exit_status_is_its_failure(status: int) -> None:
    """126 and 127 from the command itself too: an exit status is the command's, never a shell's."""
    with pytest.raises(JobFailed, match=rf"^exit {status}: ") as failed:
        await run(["/bin/sh", "-c", f"exit {status}"])
    assert failed.value.code == "EXIT_STATUS" and failed.value.retryable


def executable(path: Path, content: bytes, mode: int = 0o755) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("content", "strerror"),
    [
        pytest.param(
            b"#!/no/such/interpreter\necho ran\n", "No such file or directory", id="missing-interpreter"
        ),
        pytest.param(b"#!{not_executable}\necho ran\n", "Permission denied", id="interpreter-not-executable"),
        pytest.param(b"echo ran as a shell script\n", "Exec format error", id="no-shebang"),
        pytest.param(b"\x00\x01 not a format exec knows\n", "Exec format error", id="unknown-format"),
    ],
)
async def test_a_command_exec_cannot_run_fails_command_not_started(
    tmp_path: Path, content: bytes, strerror: str
) -> None:
    """Popen's own error: not EXIT_STATUS 127 or 126 with a shell's message, and never a file without `#!` read
    as a shell script (under the shell guard a Python worker missing its `#!` ran `import ...` lines)."""
    not_executable = executable(tmp_path / "interpreter", b"", 0o644)
    worker = executable(tmp_path / "worker", content.replace(b"{not_executable}", bytes(not_executable)))
    with pytest.raises(JobFailed, match=f"{strerror}$") as failed:
        await run([str(worker)])
    assert failed.value.code == "COMMAND_NOT_STARTED" and str(failed.value).startswith(str(worker))


ENV_PROBE = (
    "import json, os; print(json.dumps({os.fsdecode(k): os.fsdecode(v) for k, v in os.environb.items()}))"
)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_MODEL", "llama 3 *"),
        ("_", "/usr/bin/worker"),
        ("SHLVL", "4"),
        ("OLDPWD", "/before"),
        ("PWD", "/where/the/miner/was/started"),
        ("fd", "cuda:0"),
        ("IFS", ","),
        ("OPTIND", "7"),
        ("PPID", "1"),
        ("spring.profiles.active", "gpu"),
        ("NVIDIA-VISIBLE", "0"),
        ("BASH_FUNC_work%%", "() { echo w; }"),
    ],
)
async def test_the_command_gets_the_miners_environment_variable_unchanged(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """Any variable the miner has reaches the command as it is (an exported bash function, `BASH_FUNC_NAME%%`,
    as a bash worker that `export -f`'s its helpers needs it; names with `.` or `-`, which Kubernetes and
    Docker pass; those a shell sets for itself)."""
    monkeypatch.setenv(name, value)
    seen = json.loads((await run([PY, "-c", ENV_PROBE])).output)
    assert seen.get(name) == value


async def test_the_command_gets_the_miners_environment_and_three_variables_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing dropped, changed or added but the job's id, its workspace and the miner's token (the same for
    every job of this process: its reaper's mark). A token in the miner's own environment (a miner run by another
    miner's command) is replaced by its own."""
    outer_token = "the-token-of-the-miner-that-started-this-one"
    monkeypatch.setenv("AITBC_MINER_TOKEN", outer_token)
    first, second = [json.loads((await run([PY, "-c", ENV_PROBE])).output) for _ in range(2)]
    added = {name: first.pop(name) for name in ("AITBC_JOB_ID", "AITBC_WORKSPACE", "AITBC_MINER_TOKEN")}
    assert first == {name: value for name, value in os.environ.items() if name != "AITBC_MINER_TOKEN"}
    assert added["AITBC_JOB_ID"] == bytes_job().job_id
    assert re.fullmatch(r"[0-9a-f]{32}", added["AITBC_MINER_TOKEN"]), added
    assert second["AITBC_MINER_TOKEN"] == added["AITBC_MINER_TOKEN"]
    assert second["AITBC_WORKSPACE"] != added["AITBC_WORKSPACE"]  # (a fresh one per job)
