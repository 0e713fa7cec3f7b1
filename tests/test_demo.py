"""The README's run command: `aitbc-coordinator demo` takes every job to COMPLETED with a verified receipt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end() -> None:
    script = Path(sys.executable).parent / "aitbc-coordinator"
    done = subprocess.run(
        [str(script), "demo"], capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    paths = [line for line in done.stdout.splitlines() if line.startswith("job ")]
    assert len(paths) == 3 and all(
        line.endswith("QUEUED -> ASSIGNED -> RUNNING -> COMPLETED") for line in paths
    ), done.stdout
    assert done.stdout.count("verified offline: roles ['coordinator', 'miner']") == 3
    assert "all jobs completed with verified receipts" in done.stdout
