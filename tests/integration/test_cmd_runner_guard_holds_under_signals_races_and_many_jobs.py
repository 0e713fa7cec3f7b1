"""The cmd runner's guard (aitbc.miner._GUARD) under pressure: a command that signals its own group, one that
closes every descriptor, a miner SIGKILLed the moment it spawned a command, and hundreds of jobs.

A "miner" here is a real Python process running the real subprocess_runner on one job (DRIVER); the tests
SIGKILL it and look for the command's process group in /proc. The CLI miner against a coordinator is covered by
test_cmd_runner_commands_end_with_the_miner.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from coord_support import eventually

PY = sys.executable

# argv: COMMAND...; runs it as one job, then prints its outcome. With AITBC_TEST_DIE_AT_SPAWN=FILE set, SIGKILLs
# itself as soon as it has a child, having written the child's pid to FILE.
DRIVER = textwrap.dedent("""
    import asyncio, os, signal, sys, threading
    from aitbc.coordinator.v1 import job_pb2
    from aitbc.miner import subprocess_runner

    def die_at_spawn(pid_file):
        while True:
            for task in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{task}/children") as f:
                    found = f.read().split()
                if found:
                    with open(pid_file, "w") as f:
                        f.write(found[0])
                    os.kill(os.getpid(), signal.SIGKILL)

    if os.environ.get("AITBC_TEST_DIE_AT_SPAWN"):
        threading.Thread(target=die_at_spawn, args=(os.environ["AITBC_TEST_DIE_AT_SPAWN"],), daemon=True).start()
    job = job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000", payload_bytes=b"")
    print(asyncio.run(subprocess_runner(sys.argv[1:])(job)))
""")


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def start_driver(tmp_path: Path, command: list[str], **env: str) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.Popen(
        [PY, str(driver), *command],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def command_pid(pid_file: Path) -> int:
    return int(await eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), within=20.0))


async def assert_group_ends(pgid: int) -> None:
    try:
        await eventually(lambda: not group_members(pgid), within=5.0, what=f"process group {pgid} gone")
    finally:
        for pid in group_members(pgid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "command_body",
    [
        pytest.param(
            "trap '' HUP INT TERM; kill -s HUP 0; kill -s INT 0; kill -s TERM 0", id="signals-its-group"
        ),
        pytest.param(
            'for fd in $(ls /proc/$$/fd); do eval "exec $fd<&-"; done', id="closes-every-descriptor"
        ),
    ],
)
async def test_a_command_ends_with_its_killed_miner_whatever_it_did_to_its_group_or_descriptors(
    tmp_path: Path, command_body: str
) -> None:
    """The watcher ignores HUP, INT and TERM (a command's `kill 0` in a cleanup trap) and holds its own copy of
    the pipe (a command closing every descriptor, the pipe's read end too)."""
    pid_file = tmp_path / "command.pid"
    script = f'{command_body}\necho $$ > "{pid_file}"\nexec sleep 300'
    miner = start_driver(tmp_path, ["/bin/sh", "-c", script])
    try:
        pgid = await command_pid(pid_file)
        assert group_members(pgid), "the command runs"
        miner.send_signal(signal.SIGKILL)
        miner.wait(5)
        await assert_group_ends(pgid)
    finally:
        miner.kill()
        miner.wait()


async def test_a_command_ends_with_a_miner_killed_the_moment_it_spawned_it(tmp_path: Path) -> None:
    """The miner SIGKILLed before the guard's shell has even forked the watcher: the pipe it inherited reads
    EOF at once, and the group still goes."""
    for attempt in range(10):
        pid_file = tmp_path / f"spawned-{attempt}.pid"
        miner = start_driver(tmp_path, ["sleep", "300"], AITBC_TEST_DIE_AT_SPAWN=str(pid_file))
        try:
            assert miner.wait(20) == -signal.SIGKILL
            await assert_group_ends(await command_pid(pid_file))
        finally:
            miner.kill()
            miner.wait()


MANY_JOBS = textwrap.dedent("""
    import asyncio, json, os, sys
    from aitbc.coordinator.v1 import job_pb2
    from aitbc.miner import subprocess_runner

    async def main():
        run = subprocess_runner(["true"])
        job = job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000", payload_bytes=b"")
        await run(job)  # (the first job makes the death pipe: kept for every later one)
        before = sorted(os.listdir("/proc/self/fd"))
        for _ in range(int(sys.argv[1])):
            await run(job)
        print(json.dumps({"fds_before": before, "fds_after": sorted(os.listdir("/proc/self/fd"))}))

    asyncio.run(main())
""")

# Runs the miner (MANY_JOBS) as a child subreaper that reaps only the miner, as a container's PID 1 does that
# waits for its one child (`subprocess.run` in a Python entrypoint); counts its zombie children, then reaps them.
NON_REAPING_PARENT = textwrap.dedent("""
    import ctypes, json, os, subprocess, sys, time
    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    miner = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True)
    time.sleep(0.5)
    zombies = 0
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/stat") as stat:
                    zombies += stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    while True:  # (reaped now: nothing left behind for the machine's init)
        try:
            os.wait()
        except ChildProcessError:
            break
    print(json.dumps({**json.loads(miner.stdout), "zombies": zombies}))
""")


def run_many_jobs_under_a_non_reaping_parent(tmp_path: Path, jobs: int) -> dict:
    (tmp_path / "many_jobs.py").write_text(MANY_JOBS)
    (tmp_path / "parent.py").write_text(NON_REAPING_PARENT)
    done = subprocess.run(
        [PY, str(tmp_path / "parent.py"), PY, str(tmp_path / "many_jobs.py"), str(jobs)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_many_jobs_leave_no_descriptor_open_in_the_miner(tmp_path: Path) -> None:
    seen = run_many_jobs_under_a_non_reaping_parent(tmp_path, 200)
    assert seen["fds_after"] == seen["fds_before"]


@pytest.mark.xfail(
    strict=True,
    reason="each job's watcher is orphaned, then killed: a zombie per job where the reaper of orphans does not"
    " reap (helper-117: docs/miners.md, or a watcher the miner reaps)",
)
def test_many_jobs_leave_no_zombie_under_a_parent_that_reaps_only_the_miner(tmp_path: Path) -> None:
    """Well-behaved commands (`true`) left no process behind before the guard; a container whose PID 1 waits
    only for the miner (no --init) gathers what is orphaned as zombies until its pids limit."""
    seen = run_many_jobs_under_a_non_reaping_parent(tmp_path, 200)
    assert seen["zombies"] == 0
