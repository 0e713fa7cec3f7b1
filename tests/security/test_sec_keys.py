"""API keys: wrong, hashed, disabled and re-enabled without a restart, key files, reloads (also by SIGHUP to
a real `aitbc-coordinator serve` process), and `keys create`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import signal
import sys
from pathlib import Path

import grpc
import pytest
from aitbc.coordinator.v1 import admin_service_pb2 as apb
from aitbc.coordinator.v1 import admin_service_pb2_grpc, job_service_pb2_grpc
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from sec_support import (
    ALICE,
    BOB,
    HASHED_KEY,
    M1,
    OPS,
    C,
    StreamMiner,
    address,
    eventually,
    expect,
    fails,
    md,
    serving,
)

from coordinator.cli import main as coordinator_cli
from coordinator.config import SettingsError, load_settings, parse_key_entry

ROOT = Path(__file__).resolve().parents[2]


async def test_wrong_hashed_and_plain_keys(tmp_path: Path) -> None:
    async with serving(tmp_path) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        usage = jpb.GetUsageRequest()
        for wrong in ("x", ALICE + "x", ALICE[:-1], ALICE.upper(), hashlib.sha256(ALICE.encode()).hexdigest(),
                      "sha256:" + hashlib.sha256(HASHED_KEY.encode()).hexdigest()):  # fmt: skip
            expect(
                await fails(jobs.GetUsage(usage, metadata=md(wrong))), C.UNAUTHENTICATED, "UNAUTHENTICATED"
            )
        # a key configured only as its hash works, under the name it was configured with
        got = await jobs.GetUsage(usage, metadata=md(HASHED_KEY))
        assert got.account.account_id == "carol"
        assert (await jobs.GetUsage(usage, metadata=md(ALICE))).account.account_id == "alice"
        # the settings never hold a plain key
        text = repr(coord.settings) + repr([(e.secret, e.key_hash) for e in coord.settings.api_keys])
        for key in (ALICE, BOB, M1, OPS):
            assert key not in text
        assert all(e.secret == "" and len(e.key_hash) == 32 for e in coord.settings.api_keys)


async def test_disable_and_enable_a_key_without_a_restart(tmp_path: Path) -> None:
    async with serving(tmp_path) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        admin = admin_service_pb2_grpc.AdminServiceStub(ch)
        usage = jpb.GetUsageRequest()
        await jobs.GetUsage(usage, metadata=md(ALICE))
        miner = StreamMiner(ch, M1)
        await miner.hello()

        async def switch(role: str, name: str, enabled: bool) -> None:
            req = apb.SetApiKeyEnabledRequest(role=role, name=name, enabled=enabled)
            assert (await admin.SetApiKeyEnabled(req, metadata=md(OPS))).enabled == enabled

        await switch("client", "alice", False)
        expect(await fails(jobs.GetUsage(usage, metadata=md(ALICE))), C.UNAUTHENTICATED, "UNAUTHENTICATED")
        await jobs.GetUsage(usage, metadata=md(BOB))  # only that key
        await switch("miner", "m1", False)
        # the open stream of the disabled key ends at its next message
        await miner.send(heartbeat=mpb.MinerHeartbeat())
        expect(await fails(miner.next("welcome")), C.UNAUTHENTICATED, "KEY_DISABLED")
        again = StreamMiner(ch, M1)
        await again.call.write(
            mpb.ConnectRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=1)))
        )
        expect(await fails(again.call.read()), C.UNAUTHENTICATED)
        # unknown names and roles are refused, and change nothing
        expect(await fails(admin.SetApiKeyEnabled(apb.SetApiKeyEnabledRequest(role="client", name="nobody"),
                                                  metadata=md(OPS))), C.NOT_FOUND, "KEY_NOT_FOUND")  # fmt: skip
        expect(await fails(admin.SetApiKeyEnabled(apb.SetApiKeyEnabledRequest(role="root", name="alice"),
                                                  metadata=md(OPS))), C.INVALID_ARGUMENT)  # fmt: skip
        # a reload of the same keys does not re-enable a key an admin disabled
        coord.reload_keys(coord.settings)
        expect(await fails(jobs.GetUsage(usage, metadata=md(ALICE))), C.UNAUTHENTICATED)
        await switch("client", "alice", True)
        await switch("miner", "m1", True)
        await jobs.GetUsage(usage, metadata=md(ALICE))
        third = StreamMiner(ch, M1)
        await third.hello()
        miner.cancel()
        third.cancel()


def test_key_settings_formats_and_files(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"dave-key-123456").hexdigest()
    keyfile = tmp_path / "clients.keys"
    keyfile.write_text(
        f"# clients\n\ndave:sha256:{digest}\n  erin:erin-plain-key-1;hmac=erin-signing-secret-1\n"
    )
    env = {"CLIENT_API_KEYS": "alice:alice-key-000001", "CLIENT_API_KEYS_FILE": str(keyfile),
           "ADMIN_API_KEYS": f"ops:sha256:{hashlib.sha256(b'ops-key-1234').hexdigest()}"}  # fmt: skip
    s = load_settings(env=env, env_file=None)
    by_name = {e.name: e for e in s.api_keys}
    assert set(by_name) == {"alice", "dave", "erin", "ops"}
    assert by_name["dave"].key_hash.hex() == digest
    assert by_name["erin"].key_hash == hashlib.sha256(b"erin-plain-key-1").digest()
    assert by_name["erin"].hmac_secret == "erin-signing-secret-1"
    assert by_name["ops"].role == "admin"
    bad = [
        {"CLIENT_API_KEYS": "alice:short"},
        {"CLIENT_API_KEYS": "alice:sha256:abcd"},
        {"CLIENT_API_KEYS": "alice:sha256:" + "zz" * 32},
        {"CLIENT_API_KEYS": "alice:alice-key-1,alice:alice-key-2"},
        {"CLIENT_API_KEYS": "dave:dave-key-1234", "CLIENT_API_KEYS_FILE": str(keyfile)},  # dave twice
        {"CLIENT_API_KEYS": "alice:alice-key-1;hmac=short"},
        {"CLIENT_API_KEYS": "alice:alice-key-1;color=blue"},
        {"CLIENT_API_KEYS_FILE": str(tmp_path / "missing.keys")},
        {"CLIENT_API_KEYS": "a:same-key-123", "MINER_API_KEYS": "b:same-key-123"},
        {"HMAC_SECRET": "too-short"},
    ]
    for case in bad:
        with pytest.raises(SettingsError):
            load_settings(env=case, env_file=None)


def test_keys_create_prints_the_key_once_and_its_hashed_settings_line() -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert coordinator_cli(["keys", "create", "--role", "miner", "--name", "gpu-7"]) == 0
    key = out.getvalue().strip()
    assert key.startswith("aitbc_miner_") and len(key) > 30
    line = next(x for x in err.getvalue().splitlines() if not x.startswith("#"))
    assert key not in err.getvalue()
    entry = parse_key_entry("MINER_API_KEYS", "miner", line)
    assert entry.name == "gpu-7" and entry.key_hash == hashlib.sha256(key.encode()).digest()


async def test_reload_replaces_keys_and_keeps_disabled_ones_disabled(tmp_path: Path) -> None:
    keyfile = tmp_path / "clients.keys"
    keyfile.write_text("frank:frank-key-0001\n")
    env_file = tmp_path / "coord.env"
    env_file.write_text(f"CLIENT_API_KEYS_FILE={keyfile}\n")
    async with serving(tmp_path) as coord, grpc.aio.insecure_channel(address(coord)) as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        usage = jpb.GetUsageRequest()
        expect(await fails(jobs.GetUsage(usage, metadata=md("frank-key-0001"))), C.UNAUTHENTICATED)
        assert coord.reload_keys(load_settings(env={}, env_file=env_file)) == 1
        await jobs.GetUsage(usage, metadata=md("frank-key-0001"))
        expect(
            await fails(jobs.GetUsage(usage, metadata=md(ALICE))), C.UNAUTHENTICATED
        )  # no longer configured
        keyfile.write_text(f"gina:sha256:{hashlib.sha256(b'gina-key-0001').hexdigest()}\n")
        coord.reload_keys(load_settings(env={}, env_file=env_file))
        await jobs.GetUsage(usage, metadata=md("gina-key-0001"))
        expect(await fails(jobs.GetUsage(usage, metadata=md("frank-key-0001"))), C.UNAUTHENTICATED)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sighup_reloads_the_key_file_of_a_running_server(tmp_path: Path) -> None:
    keyfile = tmp_path / "clients.keys"
    keyfile.write_text("hank:hank-key-00001\n")
    env_file = tmp_path / "coord.env"
    port = _free_port()
    env_file.write_text(f"CLIENT_API_KEYS_FILE={keyfile}\nDATABASE_URL=sqlite:///{tmp_path / 'c.db'}\n"
                        "SQLITE_SYNCHRONOUS=NORMAL\n")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEYS", "_API_KEYS_FILE"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator", "serve", "--env-file", str(env_file), "--host", "127.0.0.1",
        "--port", str(port), cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            usage = jpb.GetUsageRequest()

            async def works(key: str) -> bool:
                try:
                    await jobs.GetUsage(usage, metadata=md(key), timeout=1)
                    return True
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (C.UNAUTHENTICATED, C.UNAVAILABLE), exc
                    return False

            await eventually(lambda: works("hank-key-00001"), within=15, what="the server to start")
            assert not await works("ivan-key-000001")
            keyfile.write_text("ivan:ivan-key-000001\n")
            proc.send_signal(signal.SIGHUP)
            await eventually(lambda: works("ivan-key-000001"), what="the reloaded key to work")
            assert not await works("hank-key-00001")
            # a broken key file is refused and the keys in force stay
            keyfile.write_text("broken-line-without-a-key\n")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.3)
            assert await works("ivan-key-000001")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
    stderr = err.decode()
    assert re.search(r"key reload refused", stderr), stderr[-2000:]


def test_the_example_settings_load_and_require_no_signature() -> None:
    """A copy of .env.example starts: no comment is read as a value (python-dotenv reads `KEY=  # text`
    as the value `# text`, which would turn HMAC_SECRET on with a comment for a secret)."""
    s = load_settings(env={}, env_file=ROOT / ".env.example")
    assert s.hmac_secret == "" and not any(e.hmac_secret for e in s.api_keys)
    assert len(s.api_keys) == 3
