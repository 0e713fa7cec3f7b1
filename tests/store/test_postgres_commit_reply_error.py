"""A COMMIT the server carried out, whose answer never comes back as "COMMIT": its backend ended before the answer
left (pg_terminate_backend from another session, a fast shutdown: FATAL 57P01), or an error in its place (as a
pooler or proxy between may answer). Whatever the error, once the COMMIT was sent the outcome is in doubt: the
writer reads back whether the group landed, and reports it committed. (Review round 26: only a lost connection
was taken as in doubt; any other error was taken as a rollback, the unit tried again alone on its own rows and
reported failed although stored: a job both failed and completed, a receipt or a charge twice.)"""

from __future__ import annotations

import asyncio
import struct

import pytest

from coordinator.store.base import UnitOfWork
from coordinator.store.postgres import PostgresStore
from tests.tcp_relay import DOWN, UP, Link

from .store_support import create_schema, drop_schema, make_job, pg_admin, submitted_event
from .test_postgres_chaos import PgProxy


def error_response(sqlstate: str, message: str) -> bytes:
    fields = f"SERROR\x00VERROR\x00C{sqlstate}\x00M{message}\x00\x00".encode()
    return b"E" + struct.pack("!I", 4 + len(fields)) + fields


READY_IDLE = b"Z" + struct.pack("!I", 5) + b"I"


class CommitReplyProxy(PgProxy):
    """PgProxy; armed, it swallows the answer to the writer's next COMMIT (the first connection is the writer's),
    and sends `instead` in its place (nothing: what follows, if anything, flows as it comes)."""

    half_close = False

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.instead = b""
        self.swallowed = asyncio.Event()

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction == UP and link.first and self.armed and b"COMMIT" in data:
            self.armed = False
            link.notes["swallow"] = True
        elif direction == DOWN and link.notes.pop("swallow", False):
            # (the answer to COMMIT: CommandComplete and ReadyForQuery, one small packet)
            self.swallowed.set()
            return self.instead
        return data


def submit_unit(job_id: str) -> UnitOfWork:
    job = make_job(job_id)
    unit = UnitOfWork()
    unit.add_new_job(job)
    unit.add_event(submitted_event(job))
    return unit


@pytest.mark.parametrize(
    "answer",
    [
        "backend terminated",  # the real server: FATAL 57P01, then the connection closed
        "57P01 in its place",  # an ErrorResponse and ReadyForQuery, the connection kept open
        "XX000 in its place",
    ],
)
async def test_a_commit_that_landed_is_reported_committed_whatever_error_replaced_its_answer(
    answer: str,
) -> None:
    admin = await pg_admin()
    schema = await create_schema()
    proxy = CommitReplyProxy()
    await proxy.start()
    store = PostgresStore(proxy.url(schema))
    await store.open()
    try:
        if answer != "backend terminated":
            sqlstate = answer.split()[0]
            proxy.instead = error_response(sqlstate, "an error in place of the COMMIT's answer") + READY_IDLE
        proxy.armed = True
        pending = store.enqueue(submit_unit("job-in-doubt"))
        await asyncio.wait_for(proxy.swallowed.wait(), 30)
        rows = await admin.fetchval(
            f'SELECT count(*) FROM "{schema}".job_events WHERE job_id = $1', "job-in-doubt"
        )
        assert rows == 1, "the COMMIT landed (the situation under test)"
        if answer == "backend terminated":
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", store._writer_pid)
        try:
            await asyncio.wait_for(pending, 60)
        except Exception as exc:
            pytest.fail(f"the store reported {exc!r}, yet the unit's rows landed")
        # and the writer goes on writing (a new connection: the one in doubt is not used again)
        await asyncio.wait_for(store.commit(submit_unit("job-after")), 30)
        jobs = await admin.fetch(f'SELECT job_id FROM "{schema}".jobs ORDER BY job_id')
        assert [r["job_id"] for r in jobs] == ["job-after", "job-in-doubt"]
    finally:
        await store.close()
        await proxy.close()
        await admin.close()
        await drop_schema(schema)
