"""The `aitbc` CLI takes the connection settings the SDK has (open_channel's tls, tls_server_name, keepalive_s,
keepalive_timeout_s, reconnect_max_s; the Miner's welcome_timeout_s): a TLS coordinator whose certificate names
another host than the address dialled is reached with --tls-server-name, by the client commands, `aitbc admin`
and `aitbc miner run`; bad values are refused as other bad flags are (exit 2, nothing sent)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aitbc.channel import open_channel
from aitbc.cli import build_parser, main
from aitbc.client import NO_RETRY, Client
from coord_support import ADMIN_KEY, CLIENT_KEYS, COMPLETED, Harness, miner_key

from tests.security.sec_support import Pki

SERVER_NAME = "coordinator.test"  # the only name on the coordinator's certificate (not 127.0.0.1, dialled)
AITBC = str(Path(sys.executable).parent / "aitbc")  # the installed console script, as an operator runs it


class TlsCoordinator:
    def __init__(self, harness: Harness, ca: Path) -> None:
        self.harness, self.ca = harness, ca

    def tls(self, *extra: str) -> list[str]:
        """The CLI's connection flags for this coordinator: its address and CA, then extra."""
        return ["--address", self.harness.address, "--tls-ca", str(self.ca), *extra]

    def client(self) -> Client:
        channel = open_channel(self.harness.address, tls_ca=str(self.ca), tls_server_name=SERVER_NAME)
        return Client(self.harness.address, CLIENT_KEYS["alice"], channel=channel)


@pytest.fixture
async def tls_coord(tmp_path: Path) -> AsyncIterator[TlsCoordinator]:
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue(SERVER_NAME, sans=[SERVER_NAME])
    async with Harness(tmp_path, {"tls_cert_file": str(cert), "tls_key_file": str(key)}) as harness:
        yield TlsCoordinator(harness, pki.ca)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without AITBC_* settings a developer's shell may hold (they would stand in for flags)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AITBC_") and k != "PYTHONPATH"},
        **extra,
    }


async def run_cli(
    *argv: str, env: dict[str, str] | None = None, within: float = 60.0
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        AITBC, *argv, env=env or clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_submit_reaches_a_coordinator_whose_certificate_names_another_host_with_tls_server_name(
    tls_coord: TlsCoordinator,
) -> None:
    code, out, err = await run_cli(
        "submit",
        '{"n": 1}',
        *tls_coord.tls("--tls-server-name", SERVER_NAME),
        "--api-key",
        CLIENT_KEYS["alice"],
    )
    assert code == 0, err
    assert '"state": "JOB_STATE_QUEUED"' in out, out


async def test_admin_fails_the_name_check_without_tls_server_name_and_passes_with_it(
    tls_coord: TlsCoordinator,
) -> None:
    """The coordinator's certificate does not name 127.0.0.1: without the flag the handshake fails (the call
    UNAVAILABLE until its deadline), with it the same call is answered."""
    admin = ("admin", "stats", "--api-key", ADMIN_KEY, "--timeout", "3", "--json")
    code, _, err = await run_cli(*admin, *tls_coord.tls())
    assert code == 1 and "UNAVAILABLE" in err, err
    code, out, err = await run_cli(*admin, *tls_coord.tls("--tls-server-name", SERVER_NAME))
    assert code == 0, err
    assert out.startswith("{"), out


async def test_tls_with_the_default_roots_and_tls_server_name_from_the_environment(
    tls_coord: TlsCoordinator,
) -> None:
    """--tls: TLS trusting the default roots (here the test CA, as gRPC's GRPC_DEFAULT_SSL_ROOTS_FILE_PATH makes
    it), the server name from AITBC_TLS_SERVER_NAME."""
    env = clean_env(GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(tls_coord.ca), AITBC_TLS_SERVER_NAME=SERVER_NAME)
    code, out, err = await run_cli(
        "usage", "--tls", "--address", tls_coord.harness.address, "--api-key", CLIENT_KEYS["alice"], env=env
    )
    assert code == 0, err
    assert '"receipts"' in out, out


async def test_miner_run_with_tls_server_name_serves_a_job(tls_coord: TlsCoordinator) -> None:
    settings = ("--tls-server-name", SERVER_NAME, "--keepalive", "30", "--keepalive-timeout", "5",
                "--reconnect-max", "2", "--welcome-timeout", "10")  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        AITBC, "miner", "run", *tls_coord.tls(*settings), "--api-key", miner_key("miner-00"), "--runner", "echo",
        "--give-up-after", "30", env=clean_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    client = tls_coord.client()
    try:
        job = await client.submit({"n": 7})
        try:
            done = await asyncio.wait_for(client.wait(job.job_id), 30)
        except TimeoutError:
            if proc.returncode is None:
                proc.kill()
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
            raise AssertionError(f"miner exited {await proc.wait()}: {err[-2000:]}") from None
        assert done.state == COMPLETED, done
        assert dict((await client.result(job.job_id)).result.result) == {"n": 7.0}
    finally:
        await client.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # drains and exits 0
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_the_flags_become_open_channels_and_the_miners_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from aitbc.channel import channel_options

    for name in [k for k in os.environ if k.startswith("AITBC_")]:
        monkeypatch.delenv(name)
    args = build_parser().parse_args(
        ["miner", "run", "--tls", "--tls-server-name", "coord.example", "--keepalive", "30",
         "--keepalive-timeout", "4", "--reconnect-max", "2.5", "--welcome-timeout", "40"]
    )  # fmt: skip
    assert channel_options(args) == {"tls": True, "tls_server_name": "coord.example", "keepalive_s": 30.0,
                                     "keepalive_timeout_s": 4.0, "reconnect_max_s": 2.5}  # fmt: skip
    assert args.welcome_timeout == 40.0
    # none given: open_channel's defaults (nothing passed)
    assert channel_options(build_parser().parse_args(["get", "JOB"])) == {}


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (("get", "J", "--keepalive", "5"), {}, "argument --keepalive: must be more than 5 seconds"),
        (("get", "J", "--keepalive", "often"), {}, "argument --keepalive: a number of seconds is needed"),
        (("get", "J", "--keepalive", "inf"), {}, "argument --keepalive: must be more than 5 seconds"),
        (("get", "J", "--keepalive-timeout", "0"), {}, "argument --keepalive-timeout: must be more than 0"),
        (("get", "J", "--reconnect-max", "0.5"), {}, "argument --reconnect-max: must be at least 1 second"),
        (("get", "J"), {"AITBC_KEEPALIVE": "2"}, "argument --keepalive: must be more than 5 seconds"),
        (("admin", "stats", "--keepalive", "1"), {}, "argument --keepalive: must be more than 5 seconds"),
        (("miner", "run", "--welcome-timeout", "0"), {}, "argument --welcome-timeout: must be more than 0"),
        (("miner", "run", "--welcome-timeout", "-3"), {}, "argument --welcome-timeout: must be more than 0"),
        (("miner", "run", "--welcome-timeout", "inf"), {}, "argument --welcome-timeout: must be more than 0"),
        (("miner", "run", "--stuck-timeout", "soon"), {}, "argument --stuck-timeout: a number of seconds"),
        (("get", "J", "--tls-server-name", "c.example"), {}, "aitbc: --tls-server-name needs TLS"),
        (("admin", "stats", "--tls-server-name", "c.example"), {}, "aitbc: --tls-server-name needs TLS"),
        (("miner", "run", "--tls-cert", "c.pem"), {}, "aitbc: --tls-cert and --tls-key go together"),
    ],
)  # fmt: skip
def test_bad_connection_settings_are_refused_with_exit_2(
    argv: tuple[str, ...], env: dict[str, str], says: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Refused before anything connects (a closed port): a usage error naming the flag, exit 2."""
    for name in [k for k in os.environ if k.startswith("AITBC_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        code = main([*argv, "--address", "127.0.0.1:9", "--api-key", "k"])
    except SystemExit as exc:  # (argparse's errors)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and "Traceback" not in err, err


async def test_sdk_clients_take_the_same_settings_as_channel_options(tls_coord: TlsCoordinator) -> None:
    """Client and AdminClient take open_channel's settings as Miner does (channel_options): the name on the
    certificate reaches a coordinator dialled by address; without it the handshake fails (UNAVAILABLE)."""
    from aitbc.admin_cli import AdminClient

    address, ca = tls_coord.harness.address, str(tls_coord.ca)
    named = {"tls_server_name": SERVER_NAME, "keepalive_s": 30.0}
    async with Client(address, CLIENT_KEYS["alice"], tls_ca=ca, channel_options=named) as client:
        job = await client.submit({"n": 3})
        assert job.job_id
    async with AdminClient(address, ADMIN_KEY, tls_ca=ca, channel_options=named) as admin:
        assert (await admin.stats()).ByteSize() > 0
    async with AdminClient(address, ADMIN_KEY, tls_ca=ca, timeout_s=3, retry=NO_RETRY) as admin:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.stats()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
