"""Fixtures: a real coordinator started in-process on 127.0.0.1 port 0 with a SQLite file in tmp_path.

Settings are short (heartbeat 0.2 s, lease 1 s, grace 0.5 s...) so that timing rules play out in about a
second; a test may override any of them with `@pytest.mark.coordinator(name=value, ...)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from coord_support import Harness


@pytest.fixture
async def coord(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    marker = request.node.get_closest_marker("coordinator")
    overrides = dict(marker.kwargs) if marker else {}
    harness = Harness(tmp_path, overrides)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
