"""Opens the store named by DATABASE_URL."""

from __future__ import annotations

from .base import Store


def open_store(
    url: str,
    synchronous: str = "FULL",
    *,
    wait_for_lock: bool = True,
    must_exist: bool = False,
    pool_size: int | None = None,
    read_timeout_s: float | None = None,
) -> Store:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` select SQLite; `postgresql://user@host:5432/db`
    (or `postgres://`) selects PostgreSQL, `?schema=NAME` putting its tables in that schema (see postgres.py).

    synchronous is SQLite's PRAGMA synchronous; PostgreSQL's durability is the server's synchronous_commit.
    wait_for_lock=False: a PostgreSQL store held by another process is refused at once (not after its wait for
    a crashed holder's session to be reaped), as SQLite's always is.
    must_exist=True: a PostgreSQL schema holding no store is refused (StoreMissing), not made into one (SQLite:
    the caller checks that the file is there).
    pool_size, read_timeout_s: PostgreSQL's read connections and a read's timeout (None: the store's defaults);
    SQLite reads on its own threads.
    """
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///") :], synchronous)
    if url.startswith(("postgres://", "postgresql://")):
        from .postgres import POOL_SIZE, READ_TIMEOUT_S, PostgresStore

        return PostgresStore(
            url,
            pool_size=POOL_SIZE if pool_size is None else pool_size,
            read_timeout_s=READ_TIMEOUT_S if read_timeout_s is None else read_timeout_s,
            lock_wait_s=None if wait_for_lock else 0.0,
            must_exist=must_exist,
        )
    raise ValueError(
        f"DATABASE_URL: unsupported scheme in {url!r}; use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )
