"""Fixtures of the receipts-server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.store.store_support import create_schema, drop_schema, pg_url


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store's DATABASE_URL: a SQLite file, then a PostgreSQL schema of its own (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'c.db'}"
        return
    schema = await create_schema()
    try:
        yield pg_url(schema)
    finally:
        await drop_schema(schema)
