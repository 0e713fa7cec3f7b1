"""The "serving on" line names each listener as an address an operator can use as it is: an IPv6 host in brackets
(`[::1]:PORT`, `http://[::1]:PORT/metrics`). Unbracketed, `http://::1:PORT/metrics` is no URL (curl and urllib
refuse it) and `::1:PORT` reads as an address without a port."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import urllib.request
from pathlib import Path

import pytest
from coord_support import make_settings
from test_auth_rate_limit import ipv6_loopback

from coordinator.server import start


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


pytestmark = pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


def _free_ipv6_port() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


async def test_ipv6_listeners_are_named_with_bracketed_hosts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        tmp_path / "c.db", app_host="::1", metrics_host="::1", metrics_port=_free_ipv6_port()
    )
    caplog.set_level(logging.INFO, logger="coordinator")
    coordinator = await start(settings)
    try:
        line = next(r.getMessage() for r in caplog.records if "serving on" in r.getMessage())
        main = re.search(r"serving on (\S+) \(plaintext\)", line)
        assert main is not None and main.group(1) == f"[::1]:{coordinator.port}", line
        url = re.search(r"metrics on (\S+/metrics)", line)
        assert url is not None, line
        # the URL as printed works (urllib refuses "http://::1:PORT/metrics": nonnumeric port)
        body = await asyncio.to_thread(_fetch, url.group(1))
        assert b"# TYPE" in body
    finally:
        await coordinator.stop()
