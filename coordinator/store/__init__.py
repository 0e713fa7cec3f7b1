"""Persistence: one `Store` interface; SQLite (embedded default) and PostgreSQL implement it."""

from .base import Store, UnitOfWork
from .factory import open_store

__all__ = ["Store", "UnitOfWork", "open_store"]
