"""`aitbc admin` against a real coordinator: stats, jobs, miners, drain (--json and tables), and top."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from aitbc import admin_cli, cli
from ops_support import ADMIN_KEY, CLIENT, CLIENT_KEY, COMPLETED, MINER, eventually, running, wait_terminal


async def aitbc(*argv: str) -> tuple[int, str, str]:
    """Run `aitbc ARGV` in-process (in a thread: the CLI runs its own event loop); exit code, stdout, stderr."""

    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(call)


async def test_admin_commands_against_a_real_server(tmp_path: Path) -> None:
    async with running(tmp_path) as ops:
        await ops.miner(slots=2)
        client = ops.client()
        jobs = [await client.submit({"n": i}, priority=i % 3) for i in range(4)]
        for job in jobs:
            assert (await wait_terminal(client, job.job_id)).state == COMPLETED
        auth = ("--address", ops.address, "--api-key", ADMIN_KEY)

        code, out, err = await aitbc("admin", "stats", "--json", *auth)
        assert code == 0, err
        stats = json.loads(out)
        assert stats["jobs_by_state"]["completed"] == 4 and stats["jobs_by_state"]["queued"] == 0
        assert stats["miners_online"] == 1 and stats["slots_free"] == 2 and stats["slots_busy"] == 0
        minute = next(w for w in stats["windows"] if w["window_s"] == 60)
        assert minute["submitted"] == 4 and minute["completed"] == 4
        assert stats["queue_wait"]["samples"] == 4 and isinstance(stats["queue_wait"]["p95_s"], float)

        code, out, _ = await aitbc("admin", "stats", *auth)
        assert code == 0 and "queue depth" in out and "COMPLETED/S" in out and "completed 4" in out

        code, out, err = await aitbc("admin", "jobs", "--json", "--state", "completed", "--client", CLIENT,
                                     "--limit", "3", *auth)  # fmt: skip
        assert code == 0, err
        listed = json.loads(out)
        assert len(listed) == 3 and all(
            j["state"] == "completed" and j["client_id"] == CLIENT for j in listed
        )
        assert [j["job_id"] for j in listed] == [j.job_id for j in reversed(jobs)][:3]  # newest first
        code, out, _ = await aitbc("admin", "jobs", "--json", "--miner", MINER, "--limit", "10", *auth)
        assert {j["job_id"] for j in json.loads(out)} == {j.job_id for j in jobs}
        code, out, _ = await aitbc("admin", "jobs", "--json", "--state", "queued", *auth)
        assert json.loads(out) == []
        code, out, _ = await aitbc("admin", "jobs", "--miner", MINER, *auth)
        assert code == 0 and out.splitlines()[0].split()[:3] == ["JOB", "STATE", "CLIENT"]
        assert jobs[0].job_id in out and len(out.splitlines()) == 5

        code, out, _ = await aitbc("admin", "miners", "--json", *auth)
        [miner] = json.loads(out)
        assert miner["miner_id"] == MINER and miner["status"] == "online" and miner["slots"] == 2
        assert miner["completed"] == 4 and miner["region"] == "ops" and miner["transport"] == "stream"
        code, out, _ = await aitbc("admin", "miners", *auth)
        assert out.splitlines()[0].startswith("MINER") and MINER in out and "online" in out

        code, out, _ = await aitbc("admin", "top", "--iterations", "1", "--interval", "0.1", *auth)
        assert code == 0 and "jobs/s" in out and "queue depth  0" in out and MINER in out
        assert "1 online" in out
        code, out, _ = await aitbc("admin", "top", "--iterations", "2", "--interval", "0.05", "--json", *auth)
        frames = [json.loads(line) for line in out.splitlines()]
        assert len(frames) == 2 and frames[1]["finished_per_s"] == 0.0
        assert (
            frames[0]["stats"]["jobs_by_state"]["completed"] == 4
            and frames[0]["miners"][0]["miner_id"] == MINER
        )

        code, out, err = await aitbc("admin", "drain", MINER, "--json", *auth)
        assert code == 0, err
        assert json.loads(out)["status"] == "draining"
        await eventually(
            lambda: MINER not in ops.coordinator.scheduler.by_miner, what="the drained miner gone"
        )
        code, out, _ = await aitbc("admin", "miners", "--json", *auth)
        assert json.loads(out) == []
        code, _, err = await aitbc("admin", "drain", MINER, *auth)
        assert code == 1 and "NOT_FOUND" in err


async def test_environment_variables_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path) as ops:
        monkeypatch.setenv("AITBC_ADDRESS", ops.address)
        monkeypatch.setenv("AITBC_API_KEY", ADMIN_KEY)
        code, out, err = await aitbc("admin", "stats", "--json")
        assert code == 0, err
        assert json.loads(out)["miners_online"] == 0
        code, _, err = await aitbc("admin", "stats", "--api-key", CLIENT_KEY)
        assert code == 1 and "PERMISSION_DENIED" in err
        code, _, err = await aitbc("admin", "miners", "--api-key", "no-such-key-123")
        assert code == 1 and "UNAUTHENTICATED" in err


async def test_console_script_in_a_subprocess(tmp_path: Path) -> None:
    async with running(tmp_path) as ops:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aitbc.cli", "admin", "stats", "--json", "--address", ops.address,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "AITBC_API_KEY": ADMIN_KEY},
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert json.loads(out)["jobs_by_state"]["completed"] == 0


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_top_redraws_with_ansi_on_a_terminal(tmp_path: Path) -> None:
    async with running(tmp_path) as ops:
        await ops.miner(slots=3)
        ops.runner.gate.clear()
        client = ops.client()
        for i in range(5):
            await client.submit({"i": i}, priority=2)
        await eventually(lambda: len(ops.runner.seen_metadata) == 3, what="three jobs running")
        out = Tty()
        async with admin_cli.AdminClient(ops.address, ADMIN_KEY) as admin:
            # The SDK accepts a job still running ACCEPT_AFTER_S (0.5 s) after it began: the three show ASSIGNED
            # until then, RUNNING from then on. The screens are drawn once all three are RUNNING, a state that
            # stays while the gate is shut (drawn at once, "assigned 3" held only if the host drew both screens
            # within those 0.5 s).
            async def all_running() -> bool:
                return admin_cli.stats_dict(await admin.stats())["jobs_by_state"].get("running", 0) == 3

            await eventually(all_running, what="the three jobs accepted (RUNNING)")
            await admin_cli.top(admin, ops.address, 0.05, 2, False, out)
        ops.runner.gate.set()
    screen = out.getvalue()
    assert screen.count(admin_cli.CLEAR) == 2 and screen.startswith(admin_cli.CLEAR)
    last = screen.rsplit(admin_cli.CLEAR, 1)[1]
    assert "queue depth  2   queued 2  assigned 0  running 3" in last, last
    assert "slots 3 busy / 0 free" in last, last
    row = next(line for line in last.splitlines() if line.startswith(MINER))
    assert row.split()[1:4] == ["online", "stream", "3"]
