"""Shared test configuration: markers used across the suites, and a store's URL on either backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.store.store_support import create_schema, drop_schema, pg_url


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "coordinator(**settings): overrides of the integration coordinator's settings for one test",
    )
    config.addinivalue_line("markers", "integration: runs a real coordinator on a loopback port")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A coordinator's DATABASE_URL: a SQLite file, then a PostgreSQL schema of its own (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'c.db'}"
        return
    schema = await create_schema()
    try:
        yield pg_url(schema)
    finally:
        await drop_schema(schema)
