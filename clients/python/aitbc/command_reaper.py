"""A miner's command reaper: kills the miner's `cmd:` commands, and all they started, once the miner is gone.

The miner (aitbc.miner) starts one per process, at its first command, as
`python -I .../command_reaper.py TOKEN` with stdin the read end of a pipe whose write end only the miner holds.
Every command the miner starts carries `AITBC_MINER_TOKEN=TOKEN` in its environment, and its children inherit it.
The reaper blocks reading stdin. At EOF (the miner gone, however it died: SIGKILL, the OOM killer, a crash; or
closing the pipe on purpose at exit) it SIGKILLs the process group of every process whose environment holds that
exact entry, and the process itself (one that left its group, `setsid`), then scans again until a scan finds
nothing new (a command still between fork and exec at the first scan, a child forked meanwhile), and exits.

Standard library only, run by path in isolated mode: it starts without importing the aitbc package or reading
PYTHON* variables, however the miner found its own modules.
"""

from __future__ import annotations

import os
import signal
import sys
import time

TOKEN_VARIABLE = "AITBC_MINER_TOKEN"
RESCAN_AFTER_S = 0.2  # a command between fork and exec shows the miner's environment, not its own, until exec
MAX_SCANS = 10  # (a process forking faster than it is killed cannot keep the reaper for ever)
PROC = "/proc"


def wait_for_the_miner_to_go(stdin: int = 0) -> bool:
    """Returns at EOF on stdin: once no process holds the pipe's write end, the miner's alone. True when the miner
    wrote before it closed: it is exiting normally (no command of its is being started: one scan will do)."""
    told = False
    while os.read(stdin, 4096):
        told = True
    return told


def carries(pid: int, marker: bytes) -> bool:
    """Whether process pid's environment holds marker as one whole entry. Processes of other users, setuid ones,
    zombies and vanished ones are skipped: their environment is unreadable, or empty."""
    try:
        with open(f"{PROC}/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def marked_processes(marker: bytes) -> list[int]:
    me = os.getpid()
    try:
        entries = os.listdir(PROC)
    except OSError:
        return []
    return [int(e) for e in entries if e.isdigit() and int(e) != me and carries(int(e), marker)]


def kill_with_its_group(pid: int) -> None:
    """SIGKILLs pid's process group (the command's, or one its child made), then pid (one that left the group)."""
    try:
        pgid = os.getpgid(pid)
        if pgid > 1 and pgid != os.getpgrp():  # (never every process, nor the reaper's own session)
            os.killpg(pgid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # gone meanwhile, or not ours to kill
        pass


def reap(token: str, sleep: float = RESCAN_AFTER_S, max_scans: int = MAX_SCANS) -> int:
    """Kills every process carrying the miner's token, with its group; scans again `sleep` later, until a scan
    finds none not killed yet (two scans at least, max_scans at most). Returns how many processes carried it."""
    marker = f"{TOKEN_VARIABLE}={token}".encode()
    killed: set[int] = set()
    for scan in range(max_scans):
        found = [pid for pid in marked_processes(marker) if pid not in killed]
        for pid in found:
            kill_with_its_group(pid)
        killed.update(found)
        if (scan > 0 and not found) or scan + 1 == max_scans:
            break
        time.sleep(sleep)
    return len(killed)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1]:
        print(f"usage: {argv[0]} TOKEN (stdin: a pipe the miner holds open)", file=sys.stderr)
        return 2
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):  # (it ends with the miner, not before)
        signal.signal(signum, signal.SIG_IGN)
    exiting = wait_for_the_miner_to_go()
    reap(argv[1], max_scans=1 if exiting else MAX_SCANS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
