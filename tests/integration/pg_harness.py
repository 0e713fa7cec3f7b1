"""The integration coordinator on a PostgreSQL schema instead of a SQLite file, checked at every stop as the SQLite
harness is: the kept count of jobs by state (job_state_counts, schema 7) must be the jobs table's own."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from coord_support import Harness, eventually

from coordinator.config import Settings
from tests.store.store_support import create_schema, drop_schema, pg_admin, pg_url


async def pg_counts_off(schema: str) -> dict[int, tuple[int, int]]:
    """States whose kept count is not the jobs' own: state -> (kept, counted), read behind the coordinator's back."""
    conn = await pg_admin()
    try:
        kept = {
            r[0]: r[1]
            for r in await conn.fetch(f'SELECT state, jobs FROM "{schema}".job_state_counts')
            if r[1]
        }
        counted = {
            r[0]: r[1] for r in await conn.fetch(f'SELECT state, count(*) FROM "{schema}".jobs GROUP BY 1')
        }
    finally:
        await conn.close()
    return {s: (kept.get(s, 0), counted.get(s, 0)) for s in kept.keys() | counted.keys()
            if kept.get(s, 0) != counted.get(s, 0)}  # fmt: skip


async def pg_state(schema: str, job_id: str) -> int | None:
    conn = await pg_admin()
    try:
        return await conn.fetchval(f'SELECT state FROM "{schema}".jobs WHERE job_id = $1', job_id)
    finally:
        await conn.close()


@dataclasses.dataclass
class PgHarness(Harness):
    """The integration coordinator on a PostgreSQL schema (through `url` if set: a relay), its counts checked at
    every stop, as the SQLite harness checks its file's."""

    schema: str = ""
    url: str = ""

    @property
    def settings(self) -> Settings:
        return dataclasses.replace(super().settings, database_url=self.url or pg_url(self.schema))

    async def stop(self) -> None:
        running = self.coordinator is not None
        await super().stop()
        if running:
            assert await pg_counts_off(self.schema) == {}, "job_state_counts drifted from the jobs"

    async def state(self, job_id: str) -> int | None:
        return await pg_state(self.schema, job_id)

    async def stored(self, job_id: str, state: int, within: float = 10.0) -> None:
        async def there() -> bool:
            return await self.state(job_id) == state

        await eventually(there, within=within, what=f"job {job_id} stored in state {state}")


@contextlib.asynccontextmanager
async def started(tmp_path: Path, overrides: dict[str, Any], postgres: bool) -> AsyncIterator[Harness]:
    """The integration coordinator started on a SQLite file, or on a PostgreSQL schema of its own; stopped after
    (its checks run) and the schema dropped."""
    schema = await create_schema() if postgres else ""
    try:
        coord = PgHarness(tmp_path, overrides, schema=schema) if postgres else Harness(tmp_path, overrides)
        await coord.start()
        try:
            yield coord
        finally:
            await coord.stop()
    finally:
        if schema:
            await drop_schema(schema)
