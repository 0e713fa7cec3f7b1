"""A relay (tests/tcp_relay.py) to the test PostgreSQL: the store tests' network, to break."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.tcp_relay import Relay

from .store_support import PG_URL, pg_url


class PgRelay(Relay):
    """Relays to PG_URL's server; `url()` is PG_URL through the relay."""

    def __init__(self) -> None:
        target = urlsplit(PG_URL)
        super().__init__(target.hostname or "127.0.0.1", target.port or 5432)

    def url(self, schema: str | None = None) -> str:
        """PG_URL (with ?schema=schema if given), reaching the server through this relay."""
        parts = urlsplit(PG_URL if schema is None else pg_url(schema))
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return parts._replace(netloc=f"{user}127.0.0.1:{self.port}").geturl()
