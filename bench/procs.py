"""The bench's processes seen from the orchestrator: workers (JSON lines) and the coordinator under test."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.config import Settings

ROOT = Path(__file__).resolve().parent.parent
CLIENT_KEY = "bench-client-key-0001"
ADMIN_KEY = "bench-admin-key-0001"

# The coordinator's settings in the caller's environment are dropped so a developer's shell cannot change
# what is measured; the bench writes its own env file.
SETTING_NAMES = frozenset(f.name.upper() for f in dataclasses.fields(Settings))
# Per-key rate limits are policy, not capacity: the bench measures capacity, so they are off.
RATE_LIMITS_OFF = "submit=off,read=off,miner=off,admin=off,stream=off"


class WorkerDied(RuntimeError):
    pass


def miner_key(i: int) -> tuple[str, str]:
    return f"bm{i:05d}", f"bench-miner-key-{i:05d}"


def commit_seconds_in(metrics: str) -> float | None:
    """aitbc_store_commit_seconds' sum in a Prometheus text exposition, if there."""
    for line in metrics.splitlines():
        if line.startswith("aitbc_store_commit_seconds_sum "):
            return float(line.split()[1])
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "clients" / "python"), env.get("PYTHONPATH", "")]
    )
    return env


def traced_env(env: dict[str, str], name: str) -> dict[str, str]:
    """env with gRPC's tracing on when BENCH_GRPC_TRACE_PROCS names this process (see README, "Profiling")."""
    names = {n.strip() for n in os.environ.get("BENCH_GRPC_TRACE_PROCS", "").split(",") if n.strip()}
    if name in names:
        env = env | {"GRPC_TRACE": os.environ.get("BENCH_GRPC_TRACE", "subchannel,connectivity_state"),
                     "GRPC_VERBOSITY": "debug"}  # fmt: skip
    return env


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of a process's main thread (the coordinator's event loop); the rest is its other threads
    (the SQLite writer, gRPC's poller, the aiosqlite reader)."""
    return cpu_seconds_of(Path(f"/proc/{pid}/task/{pid}/stat"))


def cpu_seconds_of(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time of each of a process's threads, by thread id (threads gone meanwhile are left out)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = cpu_seconds_of(task / "stat")
        except (OSError, ValueError, IndexError):
            continue
    return out


def runqueue_wait_seconds(pid: int, tid: int) -> float | None:
    """Time a thread spent runnable but waiting for a core (/proc/PID/task/TID/schedstat's second field;
    None where the kernel keeps no such statistics)."""
    try:
        return int((Path(f"/proc/{pid}/task/{tid}/schedstat")).read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class Worker:
    """One `python -m bench.worker ROLE` process."""

    def __init__(self, workdir: Path, name: str, role: str, args: dict[str, Any]) -> None:
        self.workdir, self.name, self.role, self.args = workdir, name, role, args
        self.log = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, ready_within: float = 120.0) -> dict[str, Any]:
        raw = json.dumps(self.args)
        if len(raw) > 64_000:  # one argv string is limited to 128 KiB: pass big arguments in a file
            path = self.workdir / f"{self.name}.args.json"
            path.write_text(raw)
            raw = f"@{path}"
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.worker", self.role, raw, cwd=ROOT, env=traced_env(child_env(), self.name),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self.log.open("wb"),
            limit=1 << 26,
        )  # fmt: skip
        return await self.expect("ready", ready_within)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def expect(self, event: str, within: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), within)
            except TimeoutError:
                raise WorkerDied(f"{self.name}: no {event!r} within {within} s\n{tail(self.log)}") from None
            if not line:
                raise WorkerDied(f"{self.name} exited before {event!r}:\n{tail(self.log)}")
            msg = json.loads(line)
            if msg.get("event") == event:
                return msg

    async def call(self, cmd: str, within: float = 300.0, **args: Any) -> dict[str, Any]:
        await self.send(cmd, **args)
        return await self.expect(cmd, within)

    async def send(self, cmd: str, **args: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self, within: float = 15.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await self.send("exit")
            self.proc.stdin.close()  # type: ignore[union-attr]
            await asyncio.wait_for(self.proc.wait(), within)
        except (TimeoutError, ConnectionError, BrokenPipeError):
            self.proc.kill()
            await self.proc.wait()


async def stop_all(workers: list[Worker]) -> None:
    await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)


class CoordinatorProcess:
    """`python -m coordinator serve` with durable SQLite (synchronous FULL), auth on, receipts signed and logged."""

    def __init__(self, workdir: Path, name: str, db: Path, port: int, n_miner_keys: int) -> None:
        self.workdir, self.name, self.db, self.port = workdir, name, db, port
        self.metrics_port = free_port()  # the writer's time in group commits (commit_seconds)
        while self.metrics_port == port:  # (two free ports in a row may be the same one)
            self.metrics_port = free_port()
        self.env_file = workdir / f"{name}.env"
        miners = ",".join("{}:{}".format(*miner_key(i)) for i in range(n_miner_keys))
        # The key lists go in an env file: 10,000 miner keys exceed what one environment string may hold.
        self.env_file.write_text(
            f"CLIENT_API_KEYS=bench-client:{CLIENT_KEY}\nADMIN_API_KEYS=bench-admin:{ADMIN_KEY}\n"
            f"MINER_API_KEYS={miners}\nSQLITE_SYNCHRONOUS=FULL\nLOG_LEVEL=INFO\n"
            f"RATE_LIMITS={RATE_LIMITS_OFF}\nMETRICS_PORT={self.metrics_port}\n"
            # experiments: BENCH_COORD_ENV="LOG_LEVEL=WARNING,SQLITE_SYNCHRONOUS=NORMAL" (figures then differ)
            + "".join(
                f"{item.strip()}\n"
                for item in os.environ.get("BENCH_COORD_ENV", "").split(",")
                if item.strip()
            )
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.profiler: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def commit_seconds(self) -> float | None:
        """Seconds its store's writer has spent in group commits so far (aitbc_store_commit_seconds' sum, read
        from its metrics endpoint); None if it cannot be read."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        return commit_seconds_in(text)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, within: float = 120.0) -> float:
        """Start the process; returns seconds from spawn to health SERVING."""
        self.starts += 1
        log = (self.workdir / f"{self.name}.{self.starts}.log").open("wb")
        started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coordinator", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--database", f"sqlite:///{self.db}", "--env-file", str(self.env_file),
            cwd=self.workdir, env=traced_env(self._env(), self.name), stdin=asyncio.subprocess.DEVNULL, stdout=log,
            stderr=log,
        )  # fmt: skip
        await self.wait_serving(within)
        elapsed = time.monotonic() - started
        await self._profile()
        return elapsed

    async def _profile(self) -> None:
        """With BENCH_PROFILE_DIR set (see README): py-spy samples the coordinator until it exits."""
        out = os.environ.get("BENCH_PROFILE_DIR")
        if not out:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        Path(out).mkdir(
            parents=True, exist_ok=True
        )  # (py-spy does not make it: it would sample nothing, silently)
        path = Path(out) / f"{self.name}.{self.starts}.txt"
        self.profiler = await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "250",
            *os.environ.get("BENCH_PROFILE_ARGS", "--nonblocking").split(), "-o", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=(self.workdir / f"{self.name}.py-spy.log").open("ab"),
        )  # fmt: skip

    @staticmethod
    def _env() -> dict[str, str]:
        env = child_env()
        extra = os.environ.get("BENCH_COORD_PYTHONPATH")  # experiments: e.g. a sitecustomize.py
        if extra:
            env["PYTHONPATH"] = extra + os.pathsep + env["PYTHONPATH"]
        return env

    async def wait_serving(self, within: float) -> None:
        options = [("grpc.initial_reconnect_backoff_ms", 10), ("grpc.min_reconnect_backoff_ms", 10),
                   ("grpc.max_reconnect_backoff_ms", 50), ("grpc.use_local_subchannel_pool", 1)]  # fmt: skip
        deadline = time.monotonic() + within
        async with grpc.aio.insecure_channel(self.address, options=options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is not None and self.proc.returncode is not None:
                    raise WorkerDied(f"coordinator exited with {self.proc.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise WorkerDied(f"coordinator not serving within {within} s:\n{self.log_tail()}")
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(), timeout=0.5, wait_for_ready=True
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.005)

    def log_tail(self) -> str:
        return tail(self.workdir / f"{self.name}.{self.starts}.log")

    def rss_mib(self) -> float:
        """Resident memory of the coordinator process (VmRSS in /proc/PID/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the coordinator so far."""
        return cpu_seconds(self.pid)

    async def stop(self, within: float = 60.0) -> None:
        """SIGTERM: the coordinator's graceful shutdown (go-away to miners), then wait."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self.profiler is not None:
            await self.profiler.wait()
            self.profiler = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
