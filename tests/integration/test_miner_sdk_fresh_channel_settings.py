"""A connection the miner opens in place of a stale one is opened as the caller configured the miner: its tls_*
fields and its channel_options (open_channel's keepalive, reconnect and TLS settings the Miner has no field for). A
channel the caller passed cannot be read: its replacement follows channel_options, and the channel is left open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from aitbc.channel import open_channel
from coord_support import Harness, gated_sdk_miner

from tests.security.sec_support import Pki

SERVER_NAME = "coordinator.test"  # the only name on the coordinator's certificate (not 127.0.0.1)


@pytest.fixture
async def tls_coord(tmp_path: Path) -> tuple[Harness, Path]:  # type: ignore[misc]
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue(SERVER_NAME, sans=[SERVER_NAME])
    async with Harness(tmp_path, {"tls_cert_file": str(cert), "tls_key_file": str(key)}) as coord:
        yield coord, pki.ca


async def test_a_fresh_connection_keeps_the_callers_tls_server_name_and_leaves_the_callers_channel_open(
    tls_coord: tuple[Harness, Path],
) -> None:
    coord, ca = tls_coord
    theirs = open_channel(coord.address, tls_ca=str(ca), tls_server_name=SERVER_NAME)
    try:
        await asyncio.wait_for(theirs.channel_ready(), 10)
        miner, _ = gated_sdk_miner(coord.address, channel=theirs, tls_ca=str(ca),
                                   channel_options={"tls_server_name": SERVER_NAME})  # fmt: skip
        fresh = await miner._fresh_channel(theirs)  # (what run() does with a stale connection)
        try:
            # the TLS handshake checks the coordinator's certificate against the name: without it, never READY
            await asyncio.wait_for(fresh.channel_ready(), 10)
        finally:
            await fresh.close()
        assert theirs.get_state() == grpc.ChannelConnectivity.READY, "the caller's channel was closed"
    finally:
        await theirs.close()


def test_channel_options_the_miner_cannot_use_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="tls_ca"):
        gated_sdk_miner("127.0.0.1:1", channel_options={"tls_ca": "ca.pem"})  # (a field of its own)
