"""Support for the doc walkthroughs (docs/security.md, docs/receipts.md, docs/operations.md): the doc's text
and its code blocks, `python -m coordinator serve --env-file FILE` as a subprocess (JSON log lines read as they
come), and shell commands run as a user types them (`aitbc`, `aitbc-coordinator`, `grpcurl` from the venv on
PATH).

Nothing of the product is replaced: the coordinator is the real server with a real SQLite file, the commands
the installed entry points.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.operability.ops_support import eventually as ops_eventually
from tests.operability.ops_support import free_port as free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def blocks(doc: str, language: str = "") -> list[str]:
    """The fenced code blocks of a doc with that info string ("" for plain fences)."""
    return re.findall(rf"```{language}\n(.*?)```", doc, flags=re.S)


def section(doc: str, title: str, level: str = "##") -> str:
    """The text of `<level> title` up to the next heading of that level."""
    return doc.split(f"\n{level} {title}\n", 1)[1].split(f"\n{level} ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    """The cells of each markdown table row in text (header and rule rows included)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ")]  # fmt: skip


# ops_support's, with a longer default bound: here every step goes through a subprocess
eventually = functools.partial(ops_eventually, limit_s=20.0)


@dataclass
class Serving:
    proc: asyncio.subprocess.Process
    lines: list[dict]
    reader: asyncio.Task

    def logged(self, text: str) -> list[dict]:
        """The lines whose message holds text."""
        return [x for x in self.lines if text in x.get("msg", "")]

    def said(self, start: str, **fields: object) -> list[dict]:
        """The lines whose message starts with start, with these field values."""
        return [x for x in self.lines if x.get("msg", "").startswith(start)
                and all(x.get(k) == v for k, v in fields.items())]  # fmt: skip


async def _read_lines(stream: asyncio.StreamReader, into: list[dict]) -> None:
    async for raw in stream:
        with contextlib.suppress(ValueError):  # (LOG_FORMAT=json: every line of the coordinator is an object)
            into.append(json.loads(raw))


@contextlib.asynccontextmanager
async def serving(env_file: Path) -> AsyncIterator[Serving]:
    """`python -m coordinator serve --env-file env_file` (which must set LOG_FORMAT=json), until its
    serving-on line; SIGTERM and wait at the end."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "coordinator", "serve", "--env-file",
                                                str(env_file), cwd=ROOT, env={"PATH": os.environ["PATH"]},
                                                stderr=asyncio.subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    lines: list[dict] = []
    run = Serving(proc, lines, asyncio.create_task(_read_lines(proc.stderr, lines)))
    try:
        await eventually(lambda: run.logged(" serving on ") or proc.returncode is not None, limit_s=30,
                         what="the serving-on line")  # fmt: skip
        assert proc.returncode is None, f"the coordinator stopped: {lines[-3:]}"
        yield run
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        await run.reader


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A shell environment with only the venv's commands on PATH (and the system's), as the README says."""
    return {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(home), **extra}


async def sh(line: str, env: dict[str, str], cwd: Path = ROOT) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec("bash", "-c", line, env=env, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


async def ok(line: str, env: dict[str, str], cwd: Path = ROOT) -> str:
    code, out, err = await sh(line, env, cwd)
    assert code == 0, f"{line}: exit {code}\n{out}\n{err}"
    return out
