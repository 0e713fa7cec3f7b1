"""The cmd runner's reaper (aitbc.command_reaper) under pressure: a command that signals its own group, one that
closes every descriptor, one whose child leaves the group (setsid), a miner SIGKILLed the moment it spawned a
command or its reaper, a child the miner forked, a miner run by another miner's command, a miner that exits
normally, and hundreds of jobs.

A "miner" here is a real Python process running the real subprocess_runner on one job (DRIVER); the tests
SIGKILL it and look for the command's process group in /proc. The CLI miner against a coordinator is covered by
test_cmd_runner_commands_end_with_the_miner.py.
"""

from __future__ import annotations

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
from aitbc import miner as aitbc_miner
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import subprocess_runner
from coord_support import eventually, gone

JOB = job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000", payload_bytes=b"")

PY = sys.executable

# argv: COMMAND...; runs it as one job, then prints its outcome. Environment switches, each naming a file:
# - AITBC_TEST_DIE_AT_SPAWN: SIGKILLs itself as soon as it has a child (AITBC_TEST_DIE_AT "command": a child other
#   than its reaper; "reaper": its first child, the reaper), having written that child's pid to the file;
# - AITBC_TEST_FORK: runs a first job (`true`: the reaper starts), then os.fork()s a child that sleeps, its pid
#   written to the file, before the job;
# - AITBC_TEST_REAPER_PID: writes its reaper's pid to the file once the job is done.
DRIVER = textwrap.dedent("""
    import asyncio, os, signal, sys, threading, time
    from aitbc import miner
    from aitbc.coordinator.v1 import job_pb2
    from aitbc.miner import subprocess_runner

    def children():
        found = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                found += [int(pid) for pid in f.read().split()]
        return found

    def die_at_spawn(pid_file, of_what):
        while True:
            reaper = miner._reaper
            if of_what == "command" and reaper is None:
                continue  # (a child now is the reaper, being started)
            for pid in children():
                if reaper is None or pid != reaper.process.pid:
                    with open(pid_file, "w") as f:
                        f.write(str(pid))
                    os.kill(os.getpid(), signal.SIGKILL)

    def write(variable, value):
        with open(os.environ[variable], "w") as f:
            f.write(str(value))

    async def main():
        job = job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000", payload_bytes=b"")
        if os.environ.get("AITBC_TEST_FORK"):
            await subprocess_runner(["true"])(job)
            child = os.fork()
            if child == 0:
                time.sleep(300)
                os._exit(0)
            write("AITBC_TEST_FORK", child)
        print(await subprocess_runner(sys.argv[1:])(job), flush=True)
        if os.environ.get("AITBC_TEST_REAPER_PID"):
            write("AITBC_TEST_REAPER_PID", miner._reaper.process.pid)

    if os.environ.get("AITBC_TEST_DIE_AT_SPAWN"):
        spawned = (os.environ["AITBC_TEST_DIE_AT_SPAWN"], os.environ.get("AITBC_TEST_DIE_AT", "command"))
        threading.Thread(target=die_at_spawn, args=spawned, daemon=True).start()
    asyncio.run(main())
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


async def recorded(pid_file: Path) -> str:
    return await eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), within=20.0)


async def recorded_pid(pid_file: Path) -> int:
    return int(await recorded(pid_file))


async def assert_group_ends(pgid: int) -> None:
    try:
        await eventually(lambda: not group_members(pgid), within=5.0, what=f"process group {pgid} gone")
    finally:
        for pid in group_members(pgid):
            os.kill(pid, signal.SIGKILL)


async def assert_ends(pid: int) -> None:
    try:
        await eventually(lambda: gone(pid), within=5.0, what=f"process {pid} gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop(miner: subprocess.Popen) -> None:
    miner.kill()
    miner.wait()


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
    """The reaper is in a session of its own (a command's `kill 0` in a cleanup trap does not reach it) and
    the command holds nothing of it (one closing every descriptor changes nothing)."""
    pid_file = tmp_path / "command.pid"
    script = f'{command_body}\necho $$ > "{pid_file}"\nexec sleep 300'
    miner = start_driver(tmp_path, ["/bin/sh", "-c", script])
    try:
        pgid = await recorded_pid(pid_file)
        assert group_members(pgid), "the command runs"
        miner.send_signal(signal.SIGKILL)
        miner.wait(5)
        await assert_group_ends(pgid)
    finally:
        stop(miner)


# A command whose child leaves the command's group and session (setsid), then sleeps; both pids written.
LEAVES_THE_GROUP = textwrap.dedent("""
    import os, sys, time
    child = os.fork()
    if child == 0:
        os.setsid()
        time.sleep(300)
        os._exit(0)
    with open(sys.argv[1] + ".part", "w") as f:
        f.write(f"{os.getpid()} {child}")
    os.rename(sys.argv[1] + ".part", sys.argv[1])
    time.sleep(300)
""")


async def test_a_child_that_left_the_commands_group_ends_with_the_killed_miner(tmp_path: Path) -> None:
    """It carries the miner's token (inherited with its environment): the reaper finds it out of the group."""
    pid_file = tmp_path / "pids"
    miner = start_driver(tmp_path, [PY, "-c", LEAVES_THE_GROUP, str(pid_file)])
    try:
        command, escaped = (int(pid) for pid in (await recorded(pid_file)).split())
        assert os.getpgid(escaped) == escaped != command, "the child leads a group of its own"
        miner.send_signal(signal.SIGKILL)
        miner.wait(5)
        await assert_group_ends(command)
        await assert_ends(escaped)
    finally:
        stop(miner)
        if pid_file.exists():
            for pid in pid_file.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


async def test_a_command_ends_with_a_miner_killed_the_moment_it_spawned_it(tmp_path: Path) -> None:
    """The miner SIGKILLed as soon as the command's process exists (forked, exec'd or not yet), its reaper
    perhaps still starting: the command's group still goes."""
    for attempt in range(10):
        pid_file = tmp_path / f"spawned-{attempt}.pid"
        miner = start_driver(tmp_path, ["sleep", "300"], AITBC_TEST_DIE_AT_SPAWN=str(pid_file))
        try:
            assert miner.wait(20) == -signal.SIGKILL
            await assert_group_ends(await recorded_pid(pid_file))
        finally:
            stop(miner)


async def test_a_reaper_ends_with_a_miner_killed_the_moment_it_spawned_it(tmp_path: Path) -> None:
    """The miner SIGKILLed before its reaper even ran (no command started yet): the reaper reads EOF, finds
    nothing and ends."""
    for attempt in range(5):
        pid_file = tmp_path / f"reaper-{attempt}.pid"
        miner = start_driver(
            tmp_path, ["sleep", "300"], AITBC_TEST_DIE_AT_SPAWN=str(pid_file), AITBC_TEST_DIE_AT="reaper"
        )
        try:
            assert miner.wait(20) == -signal.SIGKILL
            await assert_ends(await recorded_pid(pid_file))
        finally:
            stop(miner)


async def test_a_child_the_miner_forked_does_not_keep_its_commands_alive(tmp_path: Path) -> None:
    """A child os.fork()ed by the miner after its reaper started (multiprocessing's fork, a daemonizing
    library) closes its copy of the pipe's write end: the miner's death alone is the reaper's EOF."""
    pid_file, forked_file = tmp_path / "command.pid", tmp_path / "forked.pid"
    script = f'echo $$ > "{pid_file}"\nexec sleep 300'
    miner = start_driver(tmp_path, ["/bin/sh", "-c", script], AITBC_TEST_FORK=str(forked_file))
    try:
        pgid = await recorded_pid(pid_file)
        forked = await recorded_pid(forked_file)
        miner.send_signal(signal.SIGKILL)
        miner.wait(5)
        assert not gone(forked), "the forked child lives on"
        await assert_group_ends(pgid)
    finally:
        stop(miner)
        if forked_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(forked_file.read_text()), signal.SIGKILL)


async def test_a_command_of_a_miner_run_by_another_miners_command_ends_with_both(tmp_path: Path) -> None:
    """The outer miner killed: its reaper kills the inner miner (its command); the inner miner's reaper, which
    does not carry the outer token, lives to see that and kills the inner miner's command."""
    pid_file = tmp_path / "inner-command.pid"
    script = f'echo $$ > "{pid_file}"\nexec sleep 300'
    outer = start_driver(tmp_path, [PY, str(tmp_path / "driver.py"), "/bin/sh", "-c", script])
    try:
        pgid = await recorded_pid(pid_file)
        outer.send_signal(signal.SIGKILL)
        outer.wait(5)
        await assert_group_ends(pgid)
    finally:
        stop(outer)


async def test_the_reaper_ends_with_a_miner_that_exits_normally_and_is_reaped_by_it(tmp_path: Path) -> None:
    """Its pipe closed at exit, it finds nothing to kill and ends; the miner waits for it (it leaves no zombie to
    a parent that reaps only the miner): gone from /proc the moment the miner has exited."""
    reaper_file = tmp_path / "reaper.pid"
    miner = start_driver(tmp_path, ["true"], AITBC_TEST_REAPER_PID=str(reaper_file))
    try:
        assert miner.wait(30) == 0
        reaper = int(reaper_file.read_text())
        assert not Path(f"/proc/{reaper}").exists(), "the reaper gone, and reaped"
    finally:
        stop(miner)


async def test_a_reaper_that_died_is_reaped_and_another_started_at_the_next_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reaper killed by hand (kill -9, the OOM killer) leaves no zombie in the miner, and commands are guarded
    again from the next job on (this test's own process is the miner)."""
    caplog.set_level(logging.WARNING, logger="aitbc.miner")
    run = subprocess_runner(["true"])
    await run(JOB)
    dead = aitbc_miner._reaper.process.pid
    os.kill(dead, signal.SIGKILL)
    await eventually(lambda: gone(dead), what="the reaper killed")
    await run(JOB)
    assert aitbc_miner._reaper.process.pid != dead and aitbc_miner._reaper.process.poll() is None
    assert not Path(f"/proc/{dead}").exists(), "the dead reaper reaped"
    said = [r.getMessage() for r in caplog.records if "reaper ended" in r.getMessage()]
    assert said == ["cmd runner: the command reaper ended (returncode -9); starting another"]


MANY_JOBS = textwrap.dedent("""
    import asyncio, json, os, sys
    from aitbc.coordinator.v1 import job_pb2
    from aitbc.miner import subprocess_runner

    def children():
        found = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                for pid in f.read().split():
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        found.append(cmdline.read().decode(errors="replace").split("\\0"))
        return found

    async def main():
        run = subprocess_runner(["true"])
        job = job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000", payload_bytes=b"")
        await run(job)  # (the first job starts the reaper: kept for every later one)
        before = sorted(os.listdir("/proc/self/fd"))
        for _ in range(int(sys.argv[1])):
            await run(job)
        after = sorted(os.listdir("/proc/self/fd"))
        print(json.dumps({"fds_before": before, "fds_after": after, "children": children()}))

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


@pytest.fixture(scope="module")
def many_jobs_seen(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """200 jobs run by one miner under a parent that reaps only the miner."""
    tmp_path = tmp_path_factory.mktemp("many_jobs")
    (tmp_path / "many_jobs.py").write_text(MANY_JOBS)
    (tmp_path / "parent.py").write_text(NON_REAPING_PARENT)
    done = subprocess.run(
        [PY, str(tmp_path / "parent.py"), PY, str(tmp_path / "many_jobs.py"), "200"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_many_jobs_leave_no_descriptor_open_in_the_miner(many_jobs_seen: dict) -> None:
    assert many_jobs_seen["fds_after"] == many_jobs_seen["fds_before"]


def test_many_jobs_leave_one_reaper_and_no_other_process_in_the_miner(many_jobs_seen: dict) -> None:
    """One reaper per miner, however many jobs; no process of a job outlives it (no watcher per job)."""
    children = many_jobs_seen["children"]
    assert len(children) == 1, children
    assert children[0][1] == "-I" and children[0][2].endswith("/aitbc/command_reaper.py"), children


def test_many_jobs_leave_no_zombie_under_a_parent_that_reaps_only_the_miner(many_jobs_seen: dict) -> None:
    """Well-behaved commands (`true`) leave no process behind; a container whose PID 1 waits only for the miner
    (no --init) would gather what is orphaned as zombies until its pids limit. The reaper is reaped by the
    miner at its exit."""
    assert many_jobs_seen["zombies"] == 0
