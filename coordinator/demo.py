"""`aitbc-coordinator demo`: a coordinator on a free port with a temporary SQLite file, a local miner,
a few jobs from QUEUED to COMPLETED, and each job's receipt verified offline. Exits 0 on success."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from aitbc.client import Client
from aitbc.coordinator.v1 import job_pb2
from aitbc.miner import Miner, Outcome, job_input, probe_capabilities
from aitbc.receipts import KeySet, Policy, Signer, canonical_struct, verify_bundle
from google.protobuf.json_format import MessageToDict

from .config import ApiKeyEntry, Settings
from .server import start

JOBS = [
    {"prompt": "a lighthouse at dawn", "steps": 20},
    {"prompt": "hello"},
    {"task": "sum", "values": [1, 2, 3]},
]


async def demo_runner(job: job_pb2.Job) -> Outcome:
    await asyncio.sleep(0.05)  # stands in for real work
    data = job_input(job)  # the JSON as the client sent it: 20 stays 20
    if "values" in data:
        return Outcome({"sum": sum(data["values"])}, units="0.05", unit_type="gpu_seconds")
    return Outcome({"echo": data, "model": "demo"}, units="0.05", unit_type="gpu_seconds")


async def _path(client: Client, job_id: str, watching: asyncio.Event) -> list[str]:
    """The states a job goes through, as WatchJob reports them."""
    path = []
    async for update in client.watch(job_id):
        watching.set()  # the first message is the job as the watch began
        state = update.event.to_state if update.HasField("event") else update.job.state
        path.append(job_pb2.JobState.Name(state).removeprefix("JOB_STATE_"))
    return path


async def run_demo() -> int:
    with tempfile.TemporaryDirectory(prefix="aitbc-demo-") as tmp:
        settings = Settings(
            app_port=0, database_url=f"sqlite:///{Path(tmp) / 'demo.db'}",
            client_api_keys=(ApiKeyEntry("demo-client", "client", "demo-client-key"),),
            miner_api_keys=(ApiKeyEntry("demo-miner", "miner", "demo-miner-key"),),
            heartbeat_interval_seconds=1, heartbeat_timeout_seconds=5, lease_seconds=5,
        )  # fmt: skip
        coordinator = await start(settings)
        address = f"127.0.0.1:{coordinator.port}"
        print(f"coordinator serving on {address} (store {settings.database_url})")
        miner = Miner(address, "demo-miner-key", demo_runner,
                      probe_capabilities(slots=2, price="0.5", region="local"), signer=Signer.generate())  # fmt: skip
        miner_task: asyncio.Task | None = None
        ok = True
        try:
            async with Client(address, "demo-client-key") as client:
                # Jobs first, then the miner: each job is seen waiting in the queue, then pushed to the miner.
                jobs = [await client.submit(payload) for payload in JOBS]
                started = [asyncio.Event() for _ in jobs]
                watches = [
                    asyncio.create_task(_path(client, j.job_id, e))
                    for j, e in zip(jobs, started, strict=True)
                ]
                await asyncio.gather(*(e.wait() for e in started))
                miner_task = asyncio.create_task(miner.run())
                for job, watch in zip(jobs, watches, strict=True):
                    print(f"job {job.job_id}: {' -> '.join(await watch)}")
                    result = await client.result(job.job_id)
                    shown = canonical_struct(
                        MessageToDict(result.result.result)
                    ).decode()  # (as JSON, 6 not 6.0)
                    print(f"  result from {result.result.miner_id}: {shown}")
                keys = KeySet.load(await client.signing_keys())
                for job in jobs:
                    bundle = await client.bundle(job.job_id)
                    verified = verify_bundle(bundle, keys, Policy(frozenset({"coordinator", "miner"})))
                    print(f"  receipt {verified.receipt_id} verified offline: roles {sorted(verified.roles)}, "
                          f"leaf {verified.leaf_index} of {verified.checkpoint.size if verified.checkpoint else '?'}")  # fmt: skip
                    ok = ok and verified.payload["job_id"] == job.job_id
        finally:
            miner.stop()
            if miner_task is not None:
                await miner_task
            await coordinator.stop(grace=1)
        print("demo finished:", "all jobs completed with verified receipts" if ok else "FAILED")
        return 0 if ok else 1
