"""Helpers of the store suites: the local PostgreSQL (a fresh schema per test) and domain rows to commit.

AITBC_TEST_POSTGRES_URL names the database (default: postgresql://postgres@127.0.0.1:5432/test). When it
cannot be reached the PostgreSQL cases are skipped, or fail when the CI variable is set: CI must run them.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from coordinator.domain.model import Constraints, Event, Job, JobResult, JobState, PayloadKind
from coordinator.store import Store, UnitOfWork, open_store
from coordinator.store.base import JOB_COLUMNS
from coordinator.store.schema import MIGRATIONS, POSTGRES_MIGRATIONS

PG_URL = os.environ.get("AITBC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def pg_admin() -> asyncpg.Connection:
    """A connection to the test database, or skip (fail under CI) with the reason."""
    try:
        return await asyncpg.connect(PG_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        message = (
            f"PostgreSQL is not reachable at {PG_URL} ({type(exc).__name__}: {exc}); "
            "start it or set AITBC_TEST_POSTGRES_URL"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: the PostgreSQL store must be tested)", pytrace=False)
        pytest.skip(message)


async def create_schema() -> str:
    conn = await pg_admin()
    try:
        schema = f"store_test_{secrets.token_hex(6)}"
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        return schema
    finally:
        await conn.close()


async def drop_schema(schema: str) -> None:
    conn = await pg_admin()
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def pg_url(schema: str) -> str:
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"


def sqlite_store_of_version(path: Path, version: int) -> sqlite3.Connection:
    """A SQLite store as a coordinator of schema `version` left it (its first migrations run); an open connection
    to it, to write what such a store held (closed by the caller)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for number, script in enumerate(MIGRATIONS[:version], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return conn


def job_rows(jobs: list[Job]) -> list[tuple]:
    """jobs as the writer inserts them: rows of JOB_COLUMNS."""
    unit = UnitOfWork()
    for job in jobs:
        unit.add_new_job(job)
    return unit.new_jobs


SQLITE_INSERT_JOB = f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({','.join('?' * 26)})"
PG_INSERT_JOB = f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({','.join(f'${i}' for i in range(1, 27))})"


async def postgres_schema_of_version(schema: str, version: int) -> asyncpg.Connection:
    """The PostgreSQL store in `schema` as a coordinator of schema `version` left it; an open connection whose
    search_path is that schema (closed by the caller)."""
    admin = await pg_admin()
    await admin.execute(f'SET search_path = "{schema}"')
    await admin.execute(
        "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, applied_us BIGINT NOT NULL)"
    )
    for number, script in enumerate(POSTGRES_MIGRATIONS[:version], start=1):
        async with admin.transaction():
            await admin.execute(script)
            await admin.execute("INSERT INTO schema_version VALUES ($1, $2)", number, time.time_ns() // 1000)
    return admin


def sqlite_store_of_version_with_jobs(path: Path, version: int, jobs: list[Job]) -> None:
    """A SQLite store of schema `version` holding jobs (written as its writer wrote them)."""
    conn = sqlite_store_of_version(path, version)
    try:
        conn.executemany(SQLITE_INSERT_JOB, job_rows(jobs))
    finally:
        conn.close()


async def postgres_schema_of_version_with_jobs(schema: str, version: int, jobs: list[Job]) -> None:
    """The PostgreSQL store in `schema` of schema `version`, holding jobs."""
    admin = await postgres_schema_of_version(schema, version)
    try:
        await admin.executemany(PG_INSERT_JOB, job_rows(jobs))
    finally:
        await admin.close()


@dataclass
class Backend:
    """Where a store lives: open as many stores on it as a test needs, or write to it behind their back."""

    name: str
    url: str
    sqlite_path: str = ""
    schema: str = ""

    def new_store(self) -> Store:
        return open_store(self.url)

    async def raw_execute(self, sql: str) -> None:
        """Runs one statement on a connection of its own (not the store's); raises the driver's error."""
        if self.name == "sqlite":
            conn = sqlite3.connect(self.sqlite_path, isolation_level=None)
            try:
                conn.execute(sql)
            finally:
                conn.close()
            return
        conn = await pg_admin()
        try:
            await conn.execute(f'SET search_path = "{self.schema}"')
            await conn.execute(sql)
        finally:
            await conn.close()

    async def raw_fetch(self, sql: str) -> list[tuple]:
        if self.name == "sqlite":
            conn = sqlite3.connect(self.sqlite_path)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        conn = await pg_admin()
        try:
            await conn.execute(f'SET search_path = "{self.schema}"')
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()


# --- domain rows -----------------------------------------------------------------------------------------
T0 = 1_750_000_000_000_000  # a fixed epoch in microseconds
CONSTRAINTS = Constraints(
    gpu="a100", cuda="12.4", min_vram_gb=40, models=("llama-3",), region="eu", max_price="2.5",
    labels=(("tier", "gold"),),
)  # fmt: skip


def make_job(
    job_id: str,
    client_id: str = "alice",
    *,
    state: JobState = JobState.QUEUED,
    miner_id: str = "",
    created_us: int = T0,
    idempotency_key: str = "",
    priority: int = 5,
) -> Job:
    payload = b'{"prompt":"hi"}\x00\xff' + job_id.encode()  # NUL and 0xff: bytes must round-trip exactly
    return Job(
        job_id=job_id,
        client_id=client_id,
        state=state,
        payload=payload,
        payload_kind=PayloadKind.STRUCT,
        input_sha256=hashlib.sha256(payload).digest(),
        constraints=CONSTRAINTS,
        priority=priority,
        ttl_us=900_000_000,
        max_attempts=3,
        execution_timeout_us=3_600_000_000,
        idempotency_key=idempotency_key,
        request_fingerprint=hashlib.sha256(b"fp" + job_id.encode()).digest(),
        created_us=created_us,
        updated_us=created_us,
        miner_id=miner_id,
        metadata=(("team", "ml"), ("run", job_id)),
        event_seq=1,  # the submission event (submitted_event) is sequence 1
        queued_us=created_us,
    )


def submitted_event(job: Job) -> Event:
    return Event(job.job_id, 1, None, JobState.QUEUED, 0, "", "SUBMITTED", "", job.created_us)


def transition(job: Job, to: JobState, at_us: int, reason: str = "", miner_id: str = "") -> Event:
    """Moves job to `to` in memory (as the scheduler would) and returns the event to store with it."""
    before = job.state
    job.state = to
    job.event_seq += 1
    job.updated_us = at_us
    if miner_id:
        job.miner_id = miner_id
    if to is JobState.ASSIGNED:
        job.attempt += 1
    if to is JobState.RUNNING:
        job.started_us = at_us
    if to.terminal:
        job.finished_us = at_us
        job.terminal_reason = reason
        job.terminal_message = f"{to.name.lower()} at {at_us}"
    return Event(job.job_id, job.event_seq, before, to, job.attempt, job.miner_id, reason, "", at_us)


def make_result(job: Job, attempt: int, receipt_id: str = "") -> JobResult:
    output = b"\x00result\xff" + job.job_id.encode() + bytes([attempt])
    return JobResult(
        job_id=job.job_id,
        attempt=attempt,
        output=output,
        output_kind=PayloadKind.BYTES,
        result_sha256=hashlib.sha256(output).digest(),
        units="2.5",
        unit_type="gpu_seconds",
        miner_id=job.miner_id,
        completed_us=job.updated_us,
        receipt_id=receipt_id,
    )
