"""Support for the operability tests: a real coordinator in-process on loopback (SQLite in tmp_path, metrics
on a free port), real SDK clients and miners, and a scraper that parses the metrics endpoint.

Nothing here stands in for a product component; the helpers only start, drive and observe them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aitbc.client import Client
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import JobFailed, Miner, Outcome, job_input, probe_capabilities
from prometheus_client.parser import text_string_to_metric_families

from coordinator.config import ApiKeyEntry, Settings, validate
from coordinator.server import Coordinator, start

CLIENT, CLIENT_KEY = "ops-client", "ops-client-key-6f1d2a"
MINER, MINER_KEY = "ops-miner", "ops-miner-key-9b3c7e"
ADMIN, ADMIN_KEY = "ops-admin", "ops-admin-key-4a8e0d"
COMPLETED, FAILED, CANCELED = (
    job_pb2.JOB_STATE_COMPLETED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELED,
)

FAST = {
    "heartbeat_interval_seconds": 0.5,
    "heartbeat_timeout_seconds": 3.0,
    "lease_seconds": 3.0,
    "reconnect_grace_seconds": 0.5,
    "retry_backoff_base_seconds": 0.05,
    "retry_backoff_max_seconds": 0.2,
    "shutdown_grace_seconds": 0.5,
    "sqlite_synchronous": "NORMAL",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"app_host": "127.0.0.1", "app_port": 0, **FAST}
    values.update(overrides)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'coordinator.db'}",
        client_api_keys=(ApiKeyEntry(CLIENT, "client", CLIENT_KEY),),
        miner_api_keys=(ApiKeyEntry(MINER, "miner", MINER_KEY),),
        admin_api_keys=(ApiKeyEntry(ADMIN, "admin", ADMIN_KEY),),
        **values,
    )  # fmt: skip
    validate(settings)
    return settings


async def eventually(probe: Callable[[], Any], *, limit_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + limit_s
    last: Any = None
    while True:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what} (last value: {last!r})")
        await asyncio.sleep(0.02)


class GatedRunner:
    """An SDK runner: echoes its input once the gate opens; {"fail": "fatal"|"retry"} fails the job."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.seen_metadata: dict[str, dict[str, str]] = {}

    async def __call__(self, job: job_pb2.Job) -> Outcome:
        self.seen_metadata[job.job_id] = dict(job.metadata)
        await self.gate.wait()
        data = job_input(job)
        if isinstance(data, dict) and data.get("fail") == "fatal":
            raise JobFailed("BAD_INPUT", "the input asks to fail", retryable=False)
        if isinstance(data, dict) and data.get("fail") == "retry":
            raise JobFailed("FLAKY_GPU", "try again elsewhere", retryable=True)
        return Outcome(data, units="1.5", unit_type="gpu_seconds")


@dataclass
class Ops:
    """A running coordinator plus the clients and miners a test opened (closed by `running`)."""

    coordinator: Coordinator
    runner: GatedRunner = field(default_factory=GatedRunner)
    miners: list[tuple[Miner, asyncio.Task]] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    @property
    def metrics_url(self) -> str:
        assert self.coordinator.observability is not None
        return f"http://127.0.0.1:{self.coordinator.observability.metrics_port}/metrics"

    def client(self) -> Client:
        c = Client(self.address, CLIENT_KEY)
        self.clients.append(c)
        return c

    async def miner(self, slots: int = 2) -> Miner:
        m = Miner(self.address, MINER_KEY, self.runner, probe_capabilities(slots, price="0.25", region="ops"),
                  own_connection=True)  # fmt: skip
        self.miners.append((m, asyncio.create_task(m.run())))
        await eventually(lambda: MINER in self.coordinator.scheduler.by_miner, what="the miner's session")
        return m

    async def stop_miners(self) -> None:
        for m, task in self.miners:
            m.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
        self.miners.clear()

    async def scrape(self) -> Samples:
        text = await asyncio.to_thread(fetch_text, self.metrics_url)
        return Samples.parse(text)


def fetch_text(url: str, headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[Ops]:
    coordinator = await start(make_settings(tmp_path, **overrides))
    ops = Ops(coordinator)
    try:
        yield ops
    finally:
        await ops.stop_miners()
        for c in ops.clients:
            await c.close()
        await coordinator.stop(grace=0.5)


class Samples:
    """A parsed scrape: value(name, **labels) by sample name (with _total, _bucket, _count...)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = {f.name: f for f in families}
        self.values: dict[tuple[str, frozenset], float] = {}
        for f in families:
            for s in f.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    @classmethod
    def parse(cls, text: str) -> Samples:
        return cls(list(text_string_to_metric_families(text)))

    def value(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        if key not in self.values:
            raise AssertionError(f"no sample {name}{labels or ''} in the scrape")
        return self.values[key]

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(k[1]) for k in self.values if k[0] == name]


async def wait_terminal(client: Client, job_id: str) -> job_pb2.Job:
    return await asyncio.wait_for(client.wait(job_id), 15)


def random_seed_hex() -> str:
    return secrets.token_hex(32)


async def gather(*aws: Awaitable[Any]) -> list[Any]:
    return list(await asyncio.gather(*aws))
