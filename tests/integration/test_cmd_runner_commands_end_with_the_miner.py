"""A `cmd:` runner's command ends with its miner, however the miner ends.

`aitbc miner run --runner cmd:...` kills a command's process group when its job ends; but a miner killed outright
(SIGKILL: the OOM killer, kill -9, a crash) left the command and everything it started running, holding a GPU while
a restarted miner took new jobs (unless a service manager killed the miner's whole cgroup). These tests run a real
miner process against a real coordinator, and real commands.

What ends them, the miner's one command reaper (aitbc.command_reaper), must not change what the command sees
or what the miner sees of it: exit statuses (a signal's death too), stdin, no child, descriptor or process in its
group it did not start or open, a command that cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aitbc import miner
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import JobFailed, subprocess_runner
from coord_support import Harness, eventually, gone, miner_key

PY = sys.executable

# The command: a child and, under it, a grandchild, all sleeping; each writes its pid once it runs.
COMMAND = """\
#!/bin/sh
echo $$ > "{pids}/command.pid"
sh -c 'sleep 300 & echo $! > "{pids}/grandchild.pid"; wait' &
echo $! > "{pids}/child.pid"
wait
"""


def recorded_pids(pids: Path) -> dict[str, int]:
    found = {}
    for name in ("command", "child", "grandchild"):
        with contextlib.suppress(FileNotFoundError, ValueError):
            found[name] = int((pids / f"{name}.pid").read_text())
    return found


def kill_left_behind(pids: Path) -> None:
    """Whatever the test left running, even when it failed: the command's group, and each recorded pid."""
    for name, pid in recorded_pids(pids).items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if name == "command":
                os.killpg(pid, signal.SIGKILL)  # (the command leads its own group)
            os.kill(pid, signal.SIGKILL)


def start_cli_miner(coord: Harness, tmp_path: Path, command: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", "aitbc.cli", "miner", "run", "--address", coord.address, "--api-key", miner_key("miner-00"),
         "--runner", f"cmd:{command}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_command_and_its_grandchildren_end_when_the_miner_is_killed_outright(
    coord: Harness, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    command = tmp_path / "worker.sh"
    command.write_text(COMMAND.format(pids=pids))
    command.chmod(0o755)
    miner_process = start_cli_miner(coord, tmp_path, command)
    try:
        await coord.client("alice").submit({"work": 1}, max_attempts=1)
        await eventually(
            lambda: len(recorded_pids(pids)) == 3, within=20.0, what="the command and its children"
        )
        running = recorded_pids(pids)
        assert not any(gone(pid) for pid in running.values()), running
        miner_process.send_signal(signal.SIGKILL)
        miner_process.wait(5)
        await eventually(
            lambda: all(gone(pid) for pid in running.values()),
            within=5.0,
            what=f"the command and its children gone with the miner: {running}",
        )
    finally:
        if miner_process.poll() is None:
            miner_process.kill()
            miner_process.wait()
        miner_process.stderr.close()
        kill_left_behind(pids)


def bytes_job(data: bytes = b"") -> job_pb2.Job:
    return job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000", payload_bytes=data)


async def test_a_command_is_the_miners_child_with_its_input_and_nothing_more() -> None:
    """Its stdin is the job's, it holds no descriptor but stdio, it has no child it did not start (a command
    waiting for every child, `os.wait()` until none is left, must not wait for a watcher), and its process group
    holds no process but itself."""
    probe = textwrap.dedent("""
        import json, os, sys
        print(sys.stdin.read())
        def kind(fd):  # ("": the listing's own, closed since)
            try:
                return os.readlink(f"/proc/self/fd/{fd}").split(":")[0]
            except FileNotFoundError:
                return ""
        print(json.dumps([kind(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]))
        def group(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return int(f.read().rsplit(")", 1)[1].split()[2])
            except OSError:
                return None
        print(json.dumps([int(p) for p in os.listdir("/proc") if p.isdigit() and group(p) == os.getpgrp()]))
        try:
            os.wait()
            print("a child")
        except ChildProcessError:
            print("no child")
        print(os.getppid(), os.getpid())
    """)
    outcome = await asyncio.wait_for(subprocess_runner([PY, "-c", probe])(bytes_job(b"the input")), 30)
    the_input, fds, group, children, parent_and_self = outcome.output.decode().splitlines()
    parent, itself = (int(pid) for pid in parent_and_self.split())
    assert the_input == "the input"
    assert [kind for kind in json.loads(fds) if kind and not kind.startswith("/proc/")] == [], fds
    assert json.loads(group) == [itself]
    assert children == "no child"
    assert parent == os.getpid()


@pytest.mark.parametrize(
    ("exit_with", "failure"),
    [
        ("sys.exit(65)", r"^exit 65 \(its input refused\)"),
        ("sys.exit(3)", r"^exit 3: "),
        (
            "os.kill(os.getpid(), signal.SIGSEGV)",
            r"^exit -11: ",
        ),  # a death by signal, as the miner saw it before
    ],
)
async def test_a_commands_exit_status_reaches_the_miner_unchanged(exit_with: str, failure: str) -> None:
    code = f"import os, signal, sys\n{exit_with}"
    with pytest.raises(JobFailed, match=failure):
        await asyncio.wait_for(subprocess_runner([PY, "-c", code])(bytes_job()), 30)


async def test_a_command_that_cannot_start_fails_command_not_started(tmp_path: Path) -> None:
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\n")
    for command, strerror in (
        ("no-such-command-on-the-path", "No such file or directory"),
        (str(tmp_path / "no-such-command"), "No such file or directory"),
        (str(not_executable), "Permission denied"),
    ):
        with pytest.raises(JobFailed, match=f"{strerror}$") as failed:
            await asyncio.wait_for(subprocess_runner([command])(bytes_job()), 30)
        assert failed.value.code == "COMMAND_NOT_STARTED" and str(failed.value).startswith(command)


async def test_without_proc_commands_run_unguarded_and_it_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A miner where the reaper could not find its commands (no /proc: not Linux) runs them as before, saying
    once that they are not killed with it; no reaper is started."""
    monkeypatch.setattr(miner, "PROC", "/no/such/proc")
    monkeypatch.setattr(miner, "_reaper", None)  # (this process's own, if an earlier test started it: kept)
    monkeypatch.setattr(miner, "_unguarded_logged", False)
    caplog.set_level(logging.INFO, logger="aitbc.miner")
    run = subprocess_runner([PY, "-c", "import os, sys; print(sys.stdin.read(), os.getppid())"])
    for _ in range(2):
        outcome = await asyncio.wait_for(run(bytes_job(b"in")), 30)
        assert outcome.output.decode().split() == ["in", str(os.getpid())]
    assert miner._reaper is None
    said = [r.getMessage() for r in caplog.records if "not killed with the miner" in r.getMessage()]
    assert said == ["cmd runner: commands are not killed with the miner if it dies (no /no/such/proc)"]
