"""The miner's runners under misuse, as a GPU operator runs them for days (review round 17, helper).

The cmd runner (`subprocess_runner`, `aitbc miner run --runner cmd:...`) and the python runner
(`python_runner`, `--runner python:MODULE:FUNCTION`) against a real coordinator, with real child processes.
Each test failed on the code before this round:
- cmd: `communicate()` buffered all of stdout and stderr (a flood: gigabytes in the miner, and a hang until
  the timeout); only the direct child was killed (SIGKILL) on timeout or cancel, so a shell's background
  grandchildren ran on, and one holding stdout kept the job (and, on Python 3.11, the kill path's
  `proc.wait()`) waiting until it ended; a command that did not start leaked its workspace; the command runs
  in the workspace, so the README's `cmd:python3 my_worker.py` (and `cmd:./worker.sh`) never found its file.
- python: `asyncio.to_thread` ran callables on the loop's default pool (min(32, cores + 4) threads): that many
  callables stuck for good left every later job waiting for a thread, and the process could not exit on
  SIGINT (the pool's threads are joined at exit); a callable's SystemExit/KeyboardInterrupt left the thread
  and was re-raised by asyncio from the loop, ending the miner; an async callable failed INVALID_RESULT
  (its coroutine taken for the result).
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from aitbc import cli
from aitbc.miner import python_runner, subprocess_runner
from coord_support import (
    ASSIGNED,
    COMPLETED,
    FAILED,
    RUNNING,
    Harness,
    eventually,
    gone,
    miner_key,
    sdk_miner,
    struct,
)

PY = sys.executable


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def failed_with(job: Any, code: str) -> bool:
    """Whether job failed for code: its own reason (not retryable), or its last attempt's (attempts spent)."""
    return job.state == FAILED and (job.terminal_reason == code or f"last: {code} " in job.terminal_message)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run_one(coord: Harness, runner: Any, payload: Any, within: float = 10.0, **submit: Any) -> Any:
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, runner)
    task = coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    job = await alice.submit(payload, **{"max_attempts": 1, **submit})
    done = await coord.finished(alice, job.job_id, within=within)
    assert not task.done(), f"miner.run() ended: {task.exception()!r}"
    return done


# ------------------------------------------------------------------------------------------- cmd runner
@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_stdout_flood_fails_the_job_at_once_without_buffering_it(coord: Harness) -> None:
    """A child printing 256 MiB to stdout (and then hanging): its job fails RESULT_TOO_LARGE as soon as stdout
    passes what a result may be, the child is killed, and the miner holds no more than that in memory."""
    flood = (
        "import sys, time\nfor _ in range(256): sys.stdout.buffer.write(b'x' * (1 << 20))\ntime.sleep(300)"
    )
    before = peak_rss_mib()
    done = await run_one(coord, subprocess_runner([PY, "-c", flood], timeout_s=30.0), {"a": 1}, within=8.0)
    assert peak_rss_mib() - before < 100, f"peak RSS grew {peak_rss_mib() - before:.0f} MiB"
    assert failed_with(done, "RESULT_TOO_LARGE"), (done.terminal_reason, done.terminal_message)


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_stderr_flood_keeps_only_its_tail(coord: Harness) -> None:
    flood = (
        "import sys\nfor _ in range(200): sys.stderr.buffer.write(b'e' * (1 << 20))\n"
        "print('the end', file=sys.stderr)\nsys.exit(3)"
    )
    before = peak_rss_mib()
    done = await run_one(coord, subprocess_runner([PY, "-c", flood]), {"a": 1}, within=20.0)
    assert peak_rss_mib() - before < 100, f"peak RSS grew {peak_rss_mib() - before:.0f} MiB"
    assert failed_with(done, "EXIT_STATUS"), (done.terminal_reason, done.terminal_message)
    assert "exit 3" in done.terminal_message and done.terminal_message.rstrip().endswith("eeethe end")


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_timeout_kills_the_commands_whole_process_group(coord: Harness, tmp_path: Path) -> None:
    """A shell command timing out: its background grandchild goes too, and the failure says it timed out."""
    pidfile = tmp_path / "grandchild.pid"
    runner = subprocess_runner(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], timeout_s=1.5)
    try:
        done = await run_one(coord, runner, {"a": 1})
        assert failed_with(done, "TIMEOUT"), (done.terminal_reason, done.terminal_message)
        pid = int(pidfile.read_text())
        await eventually(lambda: gone(pid), within=3.0, what=f"grandchild {pid} gone")
    finally:
        if pidfile.exists():
            kill_quietly(int(pidfile.read_text()))


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_background_process_holding_stdout_does_not_hold_the_result(
    coord: Harness, tmp_path: Path
) -> None:
    """The command exits 0 leaving a background process with its stdout: the result is what it printed, now
    (not when the timeout runs out), and the leftover process is killed with the job."""
    pidfile = tmp_path / "grandchild.pid"
    runner = subprocess_runner(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; echo done"], timeout_s=30.0)
    try:
        done = await run_one(coord, runner, {"a": 1}, within=8.0)
        assert done.state == COMPLETED, done
        result = await coord.client("alice").result(done.job_id)
        assert result.result.result_bytes == b"done\n"
        pid = int(pidfile.read_text())
        await eventually(lambda: gone(pid), within=3.0, what=f"grandchild {pid} gone")
    finally:
        if pidfile.exists():
            kill_quietly(int(pidfile.read_text()))


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_canceled_job_kills_the_commands_whole_process_group(coord: Harness, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # the shell ignores SIGTERM too: only SIGKILL (of the group) ends it
    runner = subprocess_runner(["sh", "-c", f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait"])
    alice = coord.client("alice")
    miner = sdk_miner(coord.address, runner)
    coord.run_miner(miner)
    try:
        job = await alice.submit({"a": 1}, max_attempts=1)
        await eventually(
            lambda: pidfile.exists() and pidfile.read_text().strip(), what="the grandchild started"
        )
        await alice.cancel(job.job_id)
        pid = int(pidfile.read_text())
        await eventually(lambda: gone(pid), within=3.0, what=f"grandchild {pid} gone")
        await eventually(lambda: not miner.running, what="the job off the miner")
    finally:
        if pidfile.exists():
            kill_quietly(int(pidfile.read_text()))


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_command_that_does_not_exist_leaves_no_workspace(
    coord: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspaces = tmp_path / "tmp"
    workspaces.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(workspaces))
    done = await run_one(coord, subprocess_runner([str(tmp_path / "no-such-command")]), {"a": 1})
    assert os.listdir(workspaces) == []
    assert failed_with(done, "COMMAND_NOT_STARTED"), (done.terminal_reason, done.terminal_message)
    assert "no-such-command" in done.terminal_message


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_the_readmes_cmd_example_finds_its_script(
    coord: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`aitbc miner run --runner 'cmd:python3 my_worker.py'` (README): the script, in the directory the miner
    was started in, runs (the command's working directory is the job's workspace)."""
    (tmp_path / "my_worker.py").write_text("import sys\nsys.stdout.write(sys.stdin.read().upper())\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "worker.sh").write_text("#!/bin/sh\ntr a-z A-Z\n")
    (tmp_path / "bin" / "worker.sh").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    done = await run_one(coord, cli._runner(f"cmd:{PY} my_worker.py", 30.0), {"a": "b"})
    assert done.state == COMPLETED, (done.terminal_reason, done.terminal_message)
    assert (await coord.client("alice").result(done.job_id)).result.result == struct({"A": "B"})  # JSON out
    done = await run_one(coord, cli._runner("cmd:bin/worker.sh", 30.0), {"a": "b"})
    assert done.state == COMPLETED, (done.terminal_reason, done.terminal_message)


# ------------------------------------------------------------------------------------------- python runner
@pytest.mark.coordinator(lease_seconds=30.0)
async def test_an_async_callable_runs(coord: Harness) -> None:
    async def fn(data: Any) -> Any:
        await asyncio.sleep(0.01)
        return {"got": data}

    done = await run_one(coord, python_runner(fn), {"a": 1})
    assert done.state == COMPLETED, (done.terminal_reason, done.terminal_message)


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_stuck_callables_do_not_starve_the_next_jobs(coord: Harness) -> None:
    """Callables that never return (canceled by the coordinator on their execution timeout) do not leave the
    miner unable to run anything: more of them than asyncio's default thread pool has threads, then a job on
    the one slot they leave. (Each holds its slot: test_miner_sdk_stuck_runners.)"""
    release = threading.Event()

    def fn(data: Any) -> Any:
        if data.get("stuck"):
            release.wait()
        return data

    alice = coord.client("alice")
    n_stuck = min(32, (os.cpu_count() or 1) + 4) + 1  # ThreadPoolExecutor's default size, + 1
    miner = sdk_miner(coord.address, python_runner(fn), slots=n_stuck + 1)
    coord.run_miner(miner)
    try:
        stuck = [
            await alice.submit({"stuck": True, "n": i}, max_attempts=1, execution_timeout_s=1.0)
            for i in range(n_stuck)
        ]
        for job in stuck:
            assert (await coord.finished(alice, job.job_id, within=20.0)).state == FAILED
        good = await alice.submit({"stuck": False}, max_attempts=1, execution_timeout_s=5.0)
        done = await coord.finished(alice, good.job_id, within=10.0)
        assert done.state == COMPLETED, (done.terminal_reason, done.terminal_message)
    finally:
        release.set()


WORKER = """
import sys, threading

def work(data):
    if data.get("exit") == "system":
        sys.exit(2)
    if data.get("exit") == "keyboard":
        raise KeyboardInterrupt
    if data.get("block"):
        open("started", "w").close()
        threading.Event().wait()
    return data
"""


def cli_miner(coord: Harness, tmp_path: Path, *options: str) -> subprocess.Popen:
    (tmp_path / "zz_worker_mod.py").write_text(textwrap.dedent(WORKER))
    return subprocess.Popen(
        [PY, "-m", "aitbc.cli", "miner", "run", "--address", coord.address, "--api-key", miner_key("miner-00"),
         "--runner", "python:zz_worker_mod:work", *options],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_callable_raising_systemexit_or_keyboardinterrupt_fails_its_job_not_the_miner(
    coord: Harness, tmp_path: Path
) -> None:
    alice = coord.client("alice")
    proc = cli_miner(coord, tmp_path)
    try:
        for payload in ({"exit": "system"}, {"exit": "keyboard"}, {"ok": 1}):
            job = await alice.submit(payload, max_attempts=1)
            done = await coord.finished(alice, job.job_id, within=15.0)
            assert proc.poll() is None, (
                f"the miner exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
            )
            want = COMPLETED if "ok" in payload else FAILED
            assert done.state == want, (payload, done.terminal_reason, done.terminal_message)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_the_cli_miner_stops_on_sigint_with_a_callable_stuck(coord: Harness, tmp_path: Path) -> None:
    alice = coord.client("alice")
    proc = cli_miner(coord, tmp_path)
    try:
        job = await alice.submit({"block": True}, max_attempts=1)
        await eventually(lambda: (tmp_path / "started").exists(), within=15.0, what="the callable started")
        assert coord.db.job_state(job.job_id) in (ASSIGNED, RUNNING)
        proc.send_signal(signal.SIGINT)
        await eventually(lambda: proc.poll() is not None, within=10.0, what="the miner exited")
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


async def test_a_command_may_run_for_its_jobs_execution_timeout_unless_the_miner_allows_less() -> None:
    """The runner's own limit is the job's execution timeout, or the miner's (`--timeout`) if that is shorter.
    The miner's limit used to apply alone (3600 s by default): a job given 2 hours was killed at 1 on every
    attempt."""
    from aitbc.coordinator.v1 import job_pb2
    from aitbc.miner import JobFailed

    job = job_pb2.Job(job_id="01a21df9-0000-7000-8000-000000000000", payload_bytes=b"")
    job.execution_timeout.FromMilliseconds(500)
    with pytest.raises(JobFailed, match=r"longer than 0\.5 s"):
        await asyncio.wait_for(subprocess_runner(["sleep", "30"])(job), 20)
    with pytest.raises(JobFailed, match=r"longer than 0\.5 s"):  # the job's, shorter than the miner's
        await asyncio.wait_for(subprocess_runner(["sleep", "30"], timeout_s=600)(job), 20)
    job.execution_timeout.FromSeconds(7200)
    with pytest.raises(JobFailed, match=r"longer than 0\.5 s"):  # the miner's, shorter than the job's
        await asyncio.wait_for(subprocess_runner(["sleep", "30"], timeout_s=0.5)(job), 20)


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_the_cli_miner_exits_1_when_its_every_slot_is_stuck(coord: Harness, tmp_path: Path) -> None:
    """Its one callable stuck past its job's execution timeout, for longer than --stuck-timeout: the miner drains
    and exits 1 saying why, for a supervisor to start it again (its thread cannot be stopped). (Review round 28:
    it took the next job on the slot the stuck thread still held.)"""
    alice = coord.client("alice")
    proc = cli_miner(coord, tmp_path, "--stuck-timeout", "1.5")
    try:
        job = await alice.submit({"block": True}, max_attempts=1, execution_timeout_s=1.0)
        assert (await coord.finished(alice, job.job_id, within=15.0)).state == FAILED
        await eventually(lambda: proc.poll() is not None, within=15.0, what="the miner exited")
        assert proc.returncode == 1
        assert (
            "every slot (1) was held by the runners of canceled jobs for 1.5 s" in proc.stderr.read().decode()
        )
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
