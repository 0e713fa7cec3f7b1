"""`keys rotate --database sqlite:///file:...` (review round 21): a SQLite URI names a file as the store reads it
(SQLite opens `file:` names as URIs), so a URI naming no store is refused like a plain path. The check of round
20 skipped every `file:` name: a mistyped one made an empty store and reported its key 'retired', exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def rotate(cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator", "keys", "rotate", "--database", url],
                          capture_output=True, text=True, timeout=60, cwd=cwd)  # fmt: skip


def test_a_file_uri_naming_no_store_is_refused(tmp_path: Path) -> None:
    for url in ("sqlite:///file:typo.db", f"sqlite:///file:{tmp_path / 'typo.db'}?cache=private"):
        done = rotate(tmp_path, url)
        assert done.returncode == 2 and "no store at" in done.stderr, (
            done.returncode,
            done.stdout,
            done.stderr,
        )
    assert list(tmp_path.iterdir()) == []


def test_a_file_uri_naming_a_store_rotates_its_key(tmp_path: Path) -> None:
    (tmp_path / "my store.db").touch()  # (an empty file is an empty SQLite database)
    for url in ("sqlite:///file:my%20store.db", f"sqlite:///file:{tmp_path / 'my%20store.db'}?cache=private"):
        done = rotate(tmp_path, url)
        assert done.returncode == 0 and "new active coordinator key" in done.stdout, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
        "my store.db", "my store.db.lock"
    ]  # fmt: skip
