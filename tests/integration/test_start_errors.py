"""Start-up refusals of `aitbc-coordinator` are one line naming the setting, and exit 2 (review round 20, the
documentation against the behaviour: "a bad value stops start-up with a message naming the setting").

`serve` on a port another process holds died with a traceback of grpc's RuntimeError (APP_PORT) or asyncio's
OSError (METRICS_PORT) and exit 1, and so did a DATABASE_URL in a missing directory; `keys rotate` on a path
where no store was made an empty store and reported a rotation."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from coord_support import empty_env_file


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "serve", "--env-file", str(env_file),
         "--database", f"sqlite:///{tmp_path / 'c.db'}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.mark.parametrize("setting", ["APP_PORT", "METRICS_PORT"])
def test_a_port_in_use_is_refused_with_one_line_naming_the_setting(tmp_path: Path, setting: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        env = {"APP_PORT": "0", "METRICS_PORT": "0", setting: str(busy)}
        done = serve(tmp_path, **env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("aitbc-coordinator: bad setting: ") and setting in last and str(busy) in last, last


def test_a_store_in_a_missing_directory_is_refused_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "serve", "--env-file", str(empty_env_file(tmp_path)),
         "--port", "0", "--database", f"sqlite:///{tmp_path / 'missing' / 'c.db'}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith("aitbc-coordinator: bad setting: DATABASE_URL: cannot open"), (
        done.stderr
    )


def test_keys_rotate_never_makes_a_store_of_its_own(tmp_path: Path) -> None:
    """A mistyped path (or the wrong working directory) created an empty store, and the command reported a
    rotation ("the previous one is retired") that never touched the coordinator's store."""
    for url in (f"sqlite:///{tmp_path / 'typo.db'}", f"sqlite:///{tmp_path / 'missing' / 'c.db'}"):
        done = subprocess.run([sys.executable, "-m", "coordinator", "keys", "rotate", "--database", url],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "no store at" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []
