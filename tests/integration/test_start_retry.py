"""A start refused for a port in use leaves nothing bound behind it (review round 21): a second start in the
same process, once the port is free, listens on the same ports and opens the same store.

A METRICS_PORT in use was found after the gRPC ports were bound, and a gRPC server that never started keeps
its listeners until the process ends (grpcio frees them only on a stop after a start): the retry was refused
'APP_HOST, APP_PORT: cannot listen' on its own leftover."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from coord_support import make_settings

from coordinator.config import SettingsError
from coordinator.server import start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("busy_setting", ["metrics_port", "app_port"])
async def test_a_start_refused_for_a_port_in_use_can_be_retried(tmp_path: Path, busy_setting: str) -> None:
    ports = {"app_port": free_port(), "metrics_port": free_port()}
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports[busy_setting]))
        held.listen()
        with pytest.raises(SettingsError, match=busy_setting.upper()):
            await start(make_settings(tmp_path / "c.db", **ports))
    coordinator = await start(make_settings(tmp_path / "c.db", **ports))
    try:
        assert coordinator.port == ports["app_port"]
    finally:
        await coordinator.stop()
