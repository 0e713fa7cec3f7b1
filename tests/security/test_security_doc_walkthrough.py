"""docs/security.md walked as an operator and its users walk it, against `python -m coordinator serve` with an
env file: a miner key made with the doc's `keys create ... 2>> miners.keys`, TLS on the main listener and the
mutual-TLS miner listener (certificates made here), the CLI and grpcurl over TLS, a key that signs its calls
(signed by hand from the doc's string_to_sign and metadata table, then by the CLI), disabling a key, a SIGHUP
reload ending a removed miner key's stream, rate limits with RetryInfo, message size, roles, and the
failed-authentications budget. The settings tables are read from the doc and checked against the settings."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import re
import secrets
import signal
import time
from pathlib import Path

import grpc
from aitbc.coordinator.v1 import job_service_pb2, receipt_service_pb2

from coordinator.config import DEFAULT_RATE_LIMITS, RATE_GROUPS, Settings, parse_rate_limits
from tests.polyglot.test_grpcurl_readme import GRPCURL
from tests.security.doc_walk_support import (
    ROOT,
    blocks,
    eventually,
    free_port,
    ok,
    section,
    serving,
    sh,
    table_rows,
    user_env,
)
from tests.security.sec_support import Pki, fails, raw_unary

DOC = (ROOT / "docs" / "security.md").read_text()
CLIENT_KEY, BOB_KEY, ADMIN_KEY = "walk-alice-key-51ce", "walk-bob-key-77a0", "walk-admin-key-3f2d"
SECRET = "alice-own-signing-secret"
MINER = "gpu-box-7"  # the doc's miner
C = grpc.StatusCode


# ---------------------------------------------------------------------- the doc alone
def test_the_settings_the_doc_names_exist_with_the_defaults_it_gives() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    named = set()
    for title in ("API keys", "Limits", "TLS"):
        for cells in table_rows(section(DOC, title)):
            named |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]))
    named |= set(re.findall(r"`((?:HMAC|AUTH|STREAM)_[A-Z_]*(?:SECONDS|SIZE|SECRET))`", DOC))
    assert len(named) >= 20, named
    for name in named:
        assert name.lower() in fields, f"{name} is not a setting"
    sizes = {"8 MiB": 8 << 20, "1 MiB": 1 << 20}
    for cells in table_rows(section(DOC, "Limits")):
        match = re.fullmatch(r"`([A-Z_]+)`", cells[0])
        if match and match[1] != "RATE_LIMITS":
            default = sizes.get(cells[1]) or float(cells[1].replace(" ", ""))
            assert fields[match[1].lower()] == default, (match[1], cells[1])
    # the groups table: every group, with the default the coordinator has
    groups = {c[0].strip("`"): c[2].strip("`") for c in table_rows(section(DOC, "Limits")) if c[0] != "Group"
              and re.fullmatch(r"`[a-z_]+`", c[0]) and "/s" in c[2]}  # fmt: skip
    assert set(groups) == set(RATE_GROUPS)
    for group, spec in groups.items():
        assert parse_rate_limits(f"{group}={spec}")[group] == DEFAULT_RATE_LIMITS[group], group
    assert parse_rate_limits("submit=5/s")["submit"] == (
        5.0,
        5.0,
    )  # "the burst defaults to one second's worth"
    assert parse_rate_limits("submit=1/m")["submit"] == (1 / 60, 1.0)  # "(at least 1)"
    window = re.search(r"`HMAC_REPLAY_WINDOW_SECONDS` \((\d+)\)", DOC)
    cache = re.search(r"`HMAC_NONCE_CACHE_SIZE` \(([\d ]+)\)", DOC)
    assert window and fields["hmac_replay_window_seconds"] == float(window[1])
    assert cache and fields["hmac_nonce_cache_size"] == int(cache[1].replace(" ", ""))


def string_to_sign(method: str, timestamp: str, nonce: str, body_sha256: str) -> str:
    """The doc's formula, evaluated as written (its names bound to these values)."""
    (block,) = [b for b in blocks(DOC) if b.startswith("string_to_sign = ")]
    expression = block.split("=", 1)[1].strip()
    names = {"method": method, "timestamp": timestamp, "nonce": nonce, "body_sha256": body_sha256}
    return eval(expression, {"__builtins__": {}}, names)  # (the doc's own text: string literals and + only)


def signing_headers() -> list[str]:
    return [
        c[0].strip("`") for c in table_rows(section(DOC, "Request signing (HMAC)")) if c[0].startswith("`x-")
    ]


# ---------------------------------------------------------------------- against a coordinator
def env_file(tmp_path: Path, port: int, miner_port: int, pki: Pki) -> Path:
    cert, key = pki.issue("coordinator.test", server=True)
    path = tmp_path / "settings.env"
    path.write_text(
        f"APP_PORT={port}\nDATABASE_URL=sqlite:///{tmp_path / 'c.db'}\n"
        f"CLIENT_API_KEYS=alice:{CLIENT_KEY};hmac={SECRET},bob:{BOB_KEY}\n"
        f"MINER_API_KEYS_FILE={tmp_path / 'miners.keys'}\nADMIN_API_KEYS=ops:{ADMIN_KEY}\n"
        f"TLS_CERT_FILE={cert}\nTLS_KEY_FILE={key}\nTLS_CLIENT_CA_FILE={pki.ca}\n"
        f"TLS_MINER_ADDRESS=127.0.0.1:{miner_port}\n"
        "RATE_LIMITS=submit=1/m:burst=2,auth_failures=1/h:burst=30\nMAX_PAYLOAD_BYTES=4096\nMAX_MESSAGE_BYTES=8192\n"
        "HEARTBEAT_INTERVAL_SECONDS=0.5\nHEARTBEAT_TIMEOUT_SECONDS=5\nLEASE_SECONDS=5\n"
        "LOG_FORMAT=json\nSHUTDOWN_GRACE_SECONDS=1\nSQLITE_SYNCHRONOUS=NORMAL\n"
    )  # fmt: skip
    return path


def signed(method: str, body: bytes, nonce: str | None = None) -> tuple[tuple[str, str], ...]:
    """The three metadata entries of the doc's table, computed from the doc's formula."""
    timestamp, nonce = f"{time.time():.3f}", nonce or secrets.token_hex(16)
    text = string_to_sign(method, timestamp, nonce, hashlib.sha256(body).hexdigest())
    digest = hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
    return tuple(zip(signing_headers(), (timestamp, nonce, digest), strict=True))


async def test_the_security_doc_walked_against_a_real_coordinator(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    port, miner_port = free_port(), free_port()
    address, miners_address = f"127.0.0.1:{port}", f"127.0.0.1:{miner_port}"
    env = user_env(tmp_path, AITBC_ADDRESS=address)
    # API keys: the doc's example, then its way of appending the settings line to a key file
    (example,) = [b for b in blocks(DOC) if b.startswith("$ aitbc-coordinator keys create")]
    create = example.splitlines()[0].removeprefix("$ ")
    (append,) = re.findall(r"`(aitbc-coordinator keys create \.\.\. 2>> miners\.keys)`", DOC)
    miner_key = (await ok(append.replace("...", create.split("create ", 1)[1]), env, tmp_path)).strip()
    assert re.fullmatch(r"aitbc_miner_\S+", miner_key), miner_key
    lines = (tmp_path / "miners.keys").read_text().splitlines()
    assert lines[0].startswith("# the key above is shown once; the coordinator keeps only its hash. Add to "
                               "MINER_API_KEYS")  # fmt: skip
    assert lines[1] == f"{MINER}:sha256:{hashlib.sha256(miner_key.encode()).hexdigest()}"
    miner_cert, miner_cert_key = pki.issue(MINER)
    other_cert, other_key = pki.issue("someone-else")
    tls = f"--tls-ca {pki.ca}"
    ca = pki.ca.read_bytes()

    async with serving(env_file(tmp_path, port, miner_port, pki)) as coordinator:
        (line,) = coordinator.logged(" serving on ")
        assert f"on {address} (TLS), miners on {miners_address} (mutual TLS)" in line["msg"], line
        # TLS: grpcurl with -cacert instead of -plaintext; the CLI with --tls-ca or AITBC_TLS_CA
        assert GRPCURL
        listed = await ok(f"{GRPCURL} -cacert {pki.ca} {address} list", env)
        assert "aitbc.coordinator.v1.JobService" in listed
        code, _, err = await sh(f"{GRPCURL} -plaintext {address} list", env)
        assert code != 0, "plaintext to a TLS listener"
        # a key that signs must sign every call
        bob = {**env, "AITBC_API_KEY": BOB_KEY, "AITBC_TLS_CA": str(pki.ca)}
        assert (await ok("aitbc list", bob)).strip()  # bob has no secret: signs nothing
        alice = {**env, "AITBC_API_KEY": CLIENT_KEY}
        code, _, err = await sh(f"aitbc list {tls}", alice)
        assert code == 1 and "UNAUTHENTICATED (SIGNATURE_REQUIRED)" in err, err
        await ok(f"aitbc list {tls} --hmac-secret {SECRET}", alice)
        alice |= {"AITBC_TLS_CA": str(pki.ca), "AITBC_HMAC_SECRET": SECRET}
        await ok("aitbc list", alice)

        channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca))
        try:
            await check_signing_by_hand(channel)
            await check_roles_and_sizes(channel)
        finally:
            await channel.close()

        # miners: only on the mutual-TLS listener, with a certificate naming their key's identity
        miner_cmd = f"aitbc miner run --api-key {miner_key} --runner echo {tls} --give-up-after 10"
        code, _, err = await sh(f"{miner_cmd} --address {address}", env)
        assert code == 1 and "UNAUTHENTICATED (CLIENT_CERTIFICATE_REQUIRED)" in err, err
        code, _, err = await sh(f"{miner_cmd} --address {miners_address} --tls-cert {other_cert} "
                                f"--tls-key {other_key}", env)  # fmt: skip
        assert code == 1 and "PERMISSION_DENIED (CERTIFICATE_MISMATCH)" in err, err
        miner = await asyncio.create_subprocess_exec(
            "bash", "-c", f"exec {miner_cmd} --address {miners_address} --tls-cert {miner_cert} --tls-key "
            f"{miner_cert_key}", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)  # fmt: skip
        try:
            await eventually(lambda: coordinator.logged("miner connected"), what="the miner")
            job = await ok("aitbc submit '{\"n\": 1}' --wait", alice)
            assert '"state": "JOB_STATE_COMPLETED"' in job
            # rate limits: submit=1/m:burst=2, so the third submit is refused, with the group and RetryInfo
            await ok("aitbc submit '{\"n\": 2}'", alice)
            code, _, err = await sh("aitbc submit '{\"n\": 3}'", alice)
            assert code == 1 and "RESOURCE_EXHAUSTED (RATE_LIMITED)" in err and "retry after" in err, err
            # disabling a key without a restart, and enabling it again
            admin = {**env, "AITBC_API_KEY": ADMIN_KEY, "AITBC_TLS_CA": str(pki.ca)}
            assert "aitbc admin keys disable NAME --role ROLE" in DOC
            await ok("aitbc admin keys disable bob --role client", admin)
            code, _, err = await sh("aitbc list", bob)
            assert code == 1 and "UNAUTHENTICATED (UNAUTHENTICATED)" in err, err
            await ok("aitbc admin keys enable bob --role client", admin)
            await ok("aitbc list", bob)
            # removing the miner's entry and sending SIGHUP: its open stream ends (KEY_DISABLED)
            (tmp_path / "miners.keys").write_text("# gpu-box-7 removed\n")
            coordinator.proc.send_signal(signal.SIGHUP)
            await eventually(lambda: coordinator.logged("API keys reloaded"), what="the reload")
            assert await asyncio.wait_for(miner.wait(), 30) == 1
            assert miner.stderr is not None
            assert "UNAUTHENTICATED (KEY_DISABLED)" in (await miner.stderr.read()).decode()
        finally:
            if miner.returncode is None:
                miner.kill()
                await miner.wait()

        # failed authentications: charged per address; once spent, even a valid key is refused
        for _ in range(40):
            code, _, err = await sh("aitbc list --api-key not-a-key-00000", bob)
            if "AUTH_RATE_LIMITED" in err:
                break
            assert "UNAUTHENTICATED" in err, err
        assert "RESOURCE_EXHAUSTED (AUTH_RATE_LIMITED)" in err and "retry after" in err, err
        code, _, err = await sh("aitbc list", bob)
        assert code == 1 and "AUTH_RATE_LIMITED" in err, err


async def check_signing_by_hand(channel: grpc.aio.Channel) -> None:
    """A call signed from the doc's formula and table passes; a replayed nonce, another method, a changed
    body and no signature are refused with the reasons the doc lists."""
    method = "/aitbc.coordinator.v1.JobService/ListJobs"
    body = job_service_pb2.ListJobsRequest(page_size=5).SerializeToString()
    key = (("x-api-key", CLIENT_KEY),)
    headers = signed(method, body)
    await raw_unary(channel, method)(body, metadata=key + headers)
    replayed = await fails(raw_unary(channel, method)(body, metadata=key + headers))
    assert (replayed.code, replayed.reason) == (C.UNAUTHENTICATED, "REPLAYED_NONCE")
    other = await fails(
        raw_unary(channel, "/aitbc.coordinator.v1.JobService/GetUsage")(
            body, metadata=key + signed(method, body)
        )
    )
    assert (other.code, other.reason) == (C.UNAUTHENTICATED, "BAD_SIGNATURE")
    changed = job_service_pb2.ListJobsRequest(page_size=6).SerializeToString()
    tampered = await fails(raw_unary(channel, method)(changed, metadata=key + signed(method, body)))
    assert (tampered.code, tampered.reason) == (C.UNAUTHENTICATED, "BAD_SIGNATURE")
    unsigned = await fails(raw_unary(channel, method)(body, metadata=key))
    assert (unsigned.code, unsigned.reason) == (C.UNAUTHENTICATED, "SIGNATURE_REQUIRED")
    two = await fails(
        raw_unary(channel, method)(body, metadata=(*key, ("authorization", f"Bearer {BOB_KEY}")))
    )
    assert (two.code, two.reason) == (C.UNAUTHENTICATED, "UNAUTHENTICATED")  # two different keys


async def check_roles_and_sizes(channel: grpc.aio.Channel) -> None:
    """The roles table (a client on AdminService: WRONG_ROLE; ReceiptService for each role) and the message
    size check (MESSAGE_TOO_LARGE with size and limit)."""
    admin_call = raw_unary(channel, "/aitbc.coordinator.v1.AdminService/GetStats")
    wrong = await fails(admin_call(b"", metadata=(("x-api-key", BOB_KEY),)))
    assert (wrong.code, wrong.reason) == (C.PERMISSION_DENIED, "WRONG_ROLE")
    (row,) = [c for c in table_rows(section(DOC, "Roles")) if c[0] == "`ReceiptService`"]
    assert row[1].startswith("client, miner, admin")
    keys = receipt_service_pb2.GetSigningKeysRequest().SerializeToString()
    for key in (BOB_KEY, ADMIN_KEY):  # (the miner's key: tests/security/test_sec_roles.py)
        await raw_unary(channel, "/aitbc.coordinator.v1.ReceiptService/GetSigningKeys")(
            keys, metadata=(("x-api-key", key),)
        )
    big = job_service_pb2.SubmitJobRequest(payload_bytes=b"x" * 9000).SerializeToString()
    too_large = await fails(
        raw_unary(channel, "/aitbc.coordinator.v1.JobService/SubmitJob")(
            big, metadata=(("x-api-key", BOB_KEY),)
        )
    )
    assert (too_large.code, too_large.reason) == (C.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
    assert too_large.metadata == {"size": str(len(big)), "limit": "8192"}
