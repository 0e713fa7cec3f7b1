"""Time-ordered ids (UUIDv7): the client package's, one implementation for both."""

from aitbc.ids import uuid7

__all__ = ["uuid7"]
