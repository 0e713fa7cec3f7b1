"""The README's "To run a coordinator of your own" paragraph, as a newcomer follows it: its miner command, then its
`aitbc admin miners` command, as written, against a real coordinator holding the keys of .env.example.

Only the address is substituted (the coordinator listens on a free port). The paragraph once said `aitbc admin
miners` alone: without the admin key it fails UNAUTHENTICATED, and the newcomer never sees the miner listed."""

from __future__ import annotations

import asyncio
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
README_ADDRESS = "127.0.0.1:50051"


def own_coordinator_commands() -> list[str]:
    """The inline commands (`aitbc ...`, `.venv/bin/aitbc ...`: the same program) of the README's paragraph on
    running a coordinator of your own."""
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("To run a coordinator of your own") : text.index("## Using it with grpcurl")]
    return [" ".join(c.split()) for c in re.findall(r"`(?:\.venv/bin/)?(aitbc [^`]+)`", paragraph)]


def the_command(prefix: str) -> list[str]:
    (command,) = [c for c in own_coordinator_commands() if c.startswith(prefix)]
    return shlex.split(command)


async def wait_for_line(stream: asyncio.StreamReader, text: str, timeout_s: float) -> str:
    """The first line of stream holding text; everything read before it is lost."""
    async with asyncio.timeout(timeout_s):
        while line := (await stream.readline()).decode():
            if text in line:
                return line
    raise AssertionError(f"the stream ended without {text!r}")


async def test_the_readme_own_coordinator_miner_is_listed_by_its_admin_command(tmp_path: Path) -> None:
    keys = {k: v for k, v in env_example().items() if k.endswith("_API_KEYS")}
    coordinator = await start(load_settings(env={**keys, "APP_PORT": "0", "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"},
                                            env_file=None))  # fmt: skip
    address = f"127.0.0.1:{coordinator.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITBC_")}  # (the README sets none here)
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "AITBC_ADDRESS": address})
    miner_words = [word.replace(README_ADDRESS, address) for word in the_command("aitbc miner run")]
    miner = await asyncio.create_subprocess_exec(*miner_words, env=env, cwd=tmp_path,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    try:
        assert miner.stderr is not None
        await wait_for_line(miner.stderr, f"connected to the coordinator at {address}", 30)
        admin = await asyncio.create_subprocess_exec(*the_command("aitbc admin miners"), env=env, cwd=tmp_path,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
        out, err = await asyncio.wait_for(admin.communicate(), 60)
        assert admin.returncode == 0, err.decode()
        listed = out.decode().splitlines()
        assert listed[0].split()[:2] == ["MINER", "STATUS"], out
        assert any(line.split()[:2] == ["gpu-box-1", "online"] for line in listed[1:]), out
    finally:
        if miner.returncode is None:
            miner.send_signal(signal.SIGTERM)  # docs/miners.md: SIGTERM drains, then exits 0
        await asyncio.wait_for(miner.communicate(), 60)
        await coordinator.stop(grace=0.5)
    assert miner.returncode == 0
