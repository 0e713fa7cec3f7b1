"""Fixtures of the store suites: `backend` runs a test once on SQLite (a tmp file) and once on PostgreSQL
(a fresh schema of the local database, dropped afterwards); `store` is an open store on that backend;
`schema` a fresh PostgreSQL schema alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.store import Store

from .store_support import Backend, create_schema, drop_schema, pg_url


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        yield Backend("sqlite", f"sqlite:///{path}", sqlite_path=str(path))
        return
    schema = await create_schema()
    try:
        yield Backend("postgres", pg_url(schema), schema=schema)
    finally:
        await drop_schema(schema)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.new_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A fresh schema of the local PostgreSQL database, dropped afterwards."""
    name = await create_schema()
    try:
        yield name
    finally:
        await drop_schema(name)
