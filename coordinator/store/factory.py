"""Opens the store named by DATABASE_URL."""

from __future__ import annotations

from .base import Store


def open_store(url: str, synchronous: str = "FULL") -> Store:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` or a bare path select SQLite."""
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///") :], synchronous)
    if url.startswith(("postgres://", "postgresql://")):
        raise ValueError("DATABASE_URL: the PostgreSQL store is not implemented yet; use sqlite:///PATH")
    raise ValueError(f"DATABASE_URL: unsupported scheme in {url!r}; use sqlite:///PATH")
