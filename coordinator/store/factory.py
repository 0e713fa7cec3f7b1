"""Opens the store named by DATABASE_URL."""

from __future__ import annotations

from .base import Store


def open_store(url: str, synchronous: str = "FULL") -> Store:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` select SQLite; `postgresql://user@host:5432/db`
    (or `postgres://`) selects PostgreSQL, `?schema=NAME` putting its tables in that schema (see postgres.py).

    synchronous is SQLite's PRAGMA synchronous; PostgreSQL's durability is the server's synchronous_commit.
    """
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///") :], synchronous)
    if url.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"DATABASE_URL: unsupported scheme in {url!r}; use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )
