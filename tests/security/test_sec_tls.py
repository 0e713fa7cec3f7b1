"""TLS and mutual TLS with certificates made inside the test: the server certificate from settings, miners'
certificate identity bound to their key identity, and a separate mutual-TLS listener for miners."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
from aitbc.channel import open_channel
from aitbc.client import Client
from aitbc.coordinator.v1 import job_service_pb2 as jpb
from aitbc.coordinator.v1 import job_service_pb2_grpc, miner_service_pb2_grpc
from aitbc.coordinator.v1 import miner_service_pb2 as mpb
from aitbc.miner import Miner, probe_capabilities
from sec_support import ALICE, M1, C, Pki, expect, fails, make_settings, md, serving

from coordinator.config import SettingsError

HELLO = mpb.RegisterMinerRequest(hello=mpb.Hello(capabilities=mpb.MinerCapabilities(slots=1)))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("pki")
    ca, rogue = Pki(root / "ca"), Pki(root / "rogue", name="rogue-ca")
    return {
        "ca": ca.ca, "server": ca.issue("coordinator.test", server=True), "m1": ca.issue("m1"),
        "m1_san": ca.issue("worker-host-7", sans=["m1"]), "m2": ca.issue("m2"), "alice": ca.issue("alice"),
        "rogue_ca": rogue.ca, "rogue_m1": rogue.issue("m1"),
    }  # fmt: skip


def tls(pki: dict, **more: object) -> dict:  # type: ignore[type-arg]
    cert, key = pki["server"]
    return {"tls_cert_file": str(cert), "tls_key_file": str(key), **more}


def channel(port: int, pki: dict, ca: str = "ca", client: str | None = None) -> grpc.aio.Channel:  # type: ignore[type-arg]
    cert, key = pki[client] if client else (None, None)
    return open_channel(f"127.0.0.1:{port}", tls_ca=str(pki[ca]), tls_cert=cert and str(cert),
                        tls_key=key and str(key))  # fmt: skip


async def code_of(awaitable) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        await awaitable
        return C.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def test_tls_handshake_and_plaintext_refused(tmp_path: Path, pki: dict) -> None:  # type: ignore[type-arg]
    async with serving(tmp_path, **tls(pki)) as coord:
        async with Client(f"127.0.0.1:{coord.port}", ALICE, tls_ca=str(pki["ca"])) as alice:
            job = await alice.submit({"over": "tls"})
            assert (await alice.get(job.job_id)).job_id == job.job_id
        usage = jpb.GetUsageRequest()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{coord.port}") as plain:
            got = await code_of(
                job_service_pb2_grpc.JobServiceStub(plain).GetUsage(usage, metadata=md(ALICE), timeout=2)
            )
            assert got == C.UNAVAILABLE
        async with channel(
            coord.port, pki, ca="rogue_ca"
        ) as untrusting:  # the client does not trust the server
            got = await code_of(
                job_service_pb2_grpc.JobServiceStub(untrusting).GetUsage(usage, metadata=md(ALICE), timeout=2)
            )
            assert got == C.UNAVAILABLE


async def test_mutual_tls_binds_the_miner_certificate_to_its_key(tmp_path: Path, pki: dict) -> None:  # type: ignore[type-arg]
    async with serving(tmp_path, **tls(pki, tls_client_ca_file=str(pki["ca"]))) as coord:
        port = coord.port

        async def register(client_cert: str | None) -> grpc.StatusCode | str:
            async with channel(port, pki, client=client_cert) as ch:
                try:
                    await miner_service_pb2_grpc.MinerServiceStub(ch).RegisterMiner(
                        HELLO, metadata=md(M1), timeout=3
                    )
                    return "OK"
                except grpc.aio.AioRpcError as exc:
                    from sec_support import failure_of

                    f = failure_of(exc)
                    return f.reason or f.code.name

        assert await register("m1") == "OK"  # CN m1 = key identity m1
        assert await register("m1_san") == "OK"  # a SAN naming m1
        assert await register("m2") == "CERTIFICATE_MISMATCH"  # a good certificate of another miner
        assert await register(None) == "UNAVAILABLE"  # no certificate: no handshake
        assert await register("rogue_m1") == "UNAVAILABLE"  # "m1" from a CA the server does not trust
        # the miner runtime over mutual TLS, streaming
        cert, key = pki["m1"]
        miner = Miner(f"127.0.0.1:{port}", M1, capabilities=probe_capabilities(1), tls_ca=str(pki["ca"]),
                      tls_cert=str(cert), tls_key=str(key))  # fmt: skip
        task = asyncio.create_task(miner.run())
        try:
            cert, key = pki["alice"]  # clients need a certificate on this listener, any name
            async with Client(f"127.0.0.1:{port}", ALICE, tls_ca=str(pki["ca"]), tls_cert=str(cert),
                              tls_key=str(key)) as alice:  # fmt: skip
                job = await alice.submit({"over": "mtls"})
                assert (await asyncio.wait_for(alice.wait(job.job_id), 10)).state == 4
        finally:
            miner.stop()
            await asyncio.wait_for(task, 5)


async def test_a_separate_mutual_tls_listener_for_miners(tmp_path: Path, pki: dict) -> None:  # type: ignore[type-arg]
    settings = tls(pki, tls_client_ca_file=str(pki["ca"]), tls_miner_address="127.0.0.1:0")
    async with serving(tmp_path, **settings) as coord:
        assert coord.miner_port and coord.miner_port != coord.port
        usage = jpb.GetUsageRequest()
        async with channel(coord.port, pki) as main:  # TLS, no client certificate
            await job_service_pb2_grpc.JobServiceStub(main).GetUsage(usage, metadata=md(ALICE))
            f = await fails(
                miner_service_pb2_grpc.MinerServiceStub(main).RegisterMiner(HELLO, metadata=md(M1))
            )
            expect(f, C.UNAUTHENTICATED, "CLIENT_CERTIFICATE_REQUIRED")
            stream = miner_service_pb2_grpc.MinerServiceStub(main).Connect(metadata=md(M1))
            await stream.write(mpb.ConnectRequest(hello=HELLO.hello))
            expect(await fails(stream.read()), C.UNAUTHENTICATED, "CLIENT_CERTIFICATE_REQUIRED")
        async with channel(coord.miner_port, pki, client="m1") as miners:
            await miner_service_pb2_grpc.MinerServiceStub(miners).RegisterMiner(HELLO, metadata=md(M1))
        async with channel(coord.miner_port, pki) as no_cert:
            got = await code_of(
                miner_service_pb2_grpc.MinerServiceStub(no_cert).RegisterMiner(
                    HELLO, metadata=md(M1), timeout=2
                )
            )
            assert got == C.UNAVAILABLE


async def test_tls_settings_and_the_plaintext_warning(
    tmp_path: Path, pki: dict, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[type-arg]
    cert, key = pki["server"]
    for bad in ({"tls_cert_file": str(cert)}, {"tls_client_ca_file": str(pki["ca"])},
                {**tls(pki), "tls_miner_address": "127.0.0.1:0"},
                {"tls_cert_file": str(tmp_path / "missing.crt"), "tls_key_file": str(key)}):  # fmt: skip
        with pytest.raises(SettingsError):
            make_settings(tmp_path, **bad)
    caplog.set_level(logging.WARNING, logger="coordinator")
    async with serving(tmp_path / "plain", app_host="0.0.0.0"):
        pass
    assert any("plaintext" in r.getMessage() for r in caplog.records)
    caplog.clear()
    async with serving(tmp_path / "tls", app_host="0.0.0.0", **tls(pki)):
        pass
    assert not any("plaintext" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("which", ["tls_cert_file", "tls_key_file", "tls_client_ca_file"])
def test_tls_files_that_are_not_pem_are_named_at_start(tmp_path: Path, pki: dict, which: str) -> None:  # type: ignore[type-arg]
    """A certificate, key or client CA that is not PEM (or a key that is not the certificate's) failed the
    listener's bind, and the start said `APP_HOST, APP_PORT: cannot listen on ... (in use by another process?)`."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    cert, key = pki["server"]
    files = {"tls_cert_file": str(cert), "tls_key_file": str(key), "tls_client_ca_file": str(pki["ca"])}
    make_settings(tmp_path, **files)  # (the good ones pass)
    with pytest.raises(
        SettingsError,
        match="TLS_CLIENT_CA_FILE" if which == "tls_client_ca_file" else "TLS_CERT_FILE, TLS_KEY_FILE",
    ):
        make_settings(tmp_path, **{**files, which: str(junk)})
    _, other_key = pki["m1"]
    with pytest.raises(SettingsError, match="TLS_CERT_FILE, TLS_KEY_FILE"):  # a key of another certificate
        make_settings(tmp_path, **{**files, "tls_key_file": str(other_key)})


def test_a_certificate_grpc_serves_is_not_refused_for_openssls_policy(tmp_path: Path) -> None:
    """A 1024-bit RSA key: gRPC's TLS serves it, this machine's OpenSSL refuses it by default (EE_KEY_TOO_SMALL),
    and the start check, made with Python's ssl, stopped the coordinator calling it "not a PEM certificate"."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coordinator.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "rsa1024.crt", tmp_path / "rsa1024.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    make_settings(tmp_path, tls_cert_file=str(cert_file), tls_key_file=str(key_file))
