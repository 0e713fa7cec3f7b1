"""The README's walkthrough as a newcomer follows it: its `aitbc` command block and its Python SDK example, run
as written against a real coordinator, the block's miner running docs/miners.md's example worker.

Only the address and JOB_ID are substituted; the keys are those of .env.example. The SDK example used to be a
bare `async with` at the top level: pasted into a file, Python refuses it (SyntaxError)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path

from coordinator.config import load_settings
from coordinator.server import start
from tests.env_example import env_example

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README_ADDRESS = "localhost:50051"


def code_blocks(doc: str, language: str) -> list[str]:
    text = (ROOT / doc).read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def the_block(doc: str, language: str, marker: str) -> str:
    (block,) = [b for b in code_blocks(doc, language) if marker in b]
    return block


def exported(line: str) -> dict[str, str]:
    """`export A=1 B=2` as a dict."""
    words = shlex.split(line, comments=True)
    assert words[0] == "export", line
    return dict(word.split("=", 1) for word in words[1:])


async def run_line(line: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """One command line of the README, through bash (`&&`, comments), within a minute."""
    proc = await asyncio.create_subprocess_exec("bash", "-c", line, env=env, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_readme_cli_block_and_sdk_example_work_as_written(tmp_path: Path) -> None:
    keys = {k: v for k, v in env_example().items() if k.endswith("_API_KEYS")}
    coordinator = await start(load_settings(env={**keys, "APP_PORT": "0", "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"},
                                            env_file=None))  # fmt: skip
    address = f"127.0.0.1:{coordinator.port}"
    lines = [
        line for line in the_block("README.md", "sh", "export AITBC_ADDRESS").splitlines() if line.strip()
    ]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update({k: v.replace(README_ADDRESS, address) for k, v in exported(lines[0]).items()})
    (miner_line,) = [line for line in lines if line.startswith("aitbc miner run")]
    worker = the_block("docs/miners.md", "python", "# my_worker.py")
    (tmp_path / "my_worker.py").write_text(worker)
    miner = await asyncio.create_subprocess_exec(*shlex.split(miner_line, comments=True), env=env, cwd=tmp_path,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    try:
        job_id = ""
        for line in lines[1:]:
            if line == miner_line:
                continue
            code, out, err = await run_line(line.replace("JOB_ID", job_id), env, tmp_path)
            assert code == 0, f"{line}\n{err}"
            if line.startswith("aitbc submit"):
                done = json.loads(out)
                job_id = done["job"]["job_id"]
                assert done["job"]["state"] == "JOB_STATE_COMPLETED"
                assert done["result"]["result"] == {"upper": "HELLO"}, "docs/miners.md's worker ran the job"
            if line.startswith("aitbc receipts verify"):
                assert out.startswith(f"OK {done['result']['receipt_id']} job={job_id} "), out
        assert job_id and (tmp_path / "receipt.json").exists() and (tmp_path / "keys.json").exists()

        example = the_block("README.md", "python", "from aitbc.client import").replace(
            README_ADDRESS, address
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", example, env=env, cwd=tmp_path,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
        out_bytes, err_bytes = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err_bytes.decode()[-2000:]
        assert out_bytes.decode().startswith("{'upper': 'HELLO'} "), out_bytes
        assert out_bytes.decode().rstrip().endswith("['coordinator']"), out_bytes
    finally:
        if miner.returncode is None:
            miner.send_signal(signal.SIGTERM)  # docs/miners.md: SIGTERM drains, then exits 0
        _, miner_err = await asyncio.wait_for(miner.communicate(), 60)
        await coordinator.stop(grace=0.5)
    assert miner.returncode == 0, miner_err.decode()[-2000:]
    assert f"connected to the coordinator at {address}: session " in miner_err.decode(), (
        "docs/miners.md's line"
    )
