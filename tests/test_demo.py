"""The README's run command: `aitbc-coordinator demo` takes every job to COMPLETED with a verified receipt."""

from __future__ import annotations

import signal
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


def test_demo_interrupted_with_ctrl_c_says_so_in_one_line_and_leaves_nothing() -> None:
    """Ctrl-C during `make demo` printed asyncio's KeyboardInterrupt traceback (two of them, chained)."""
    script = Path(sys.executable).parent / "aitbc-coordinator"
    demo = subprocess.Popen(
        [str(script), "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        serving = next(line for line in demo.stdout if line.startswith("coordinator serving on"))
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=60)
    finally:
        if demo.returncode is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "aitbc-coordinator: demo interrupted"
    store = Path(serving.split("(store sqlite:///", 1)[1].rstrip(")\n"))
    assert not store.parent.exists()  # the temporary directory, and its store, removed
