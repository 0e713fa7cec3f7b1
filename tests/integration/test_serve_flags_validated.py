"""`serve --port/--database` are checked as their settings are (review round 21): the flags replaced the settings
after validation, so `--port 70000` listened on another port (grpc wraps it) and `--database foo://x` died with a
traceback, exit 1, where APP_PORT=70000 or DATABASE_URL=foo://x in the environment is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from coord_support import empty_env_file


@pytest.mark.parametrize(
    ("flags", "setting"),
    [(["--port", "70000"], "APP_PORT"), (["--port", "0", "--database", "foo://x"], "DATABASE_URL")],
)
def test_a_bad_flag_is_refused_as_its_setting_is(tmp_path: Path, flags: list[str], setting: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "serve", "--env-file", str(empty_env_file(tmp_path)),
         "--database", f"sqlite:///{tmp_path / 'c.db'}", *flags],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert done.stderr.strip().startswith(f"aitbc-coordinator: bad setting: {setting}: "), done.stderr
    assert not (tmp_path / "c.db").exists()
