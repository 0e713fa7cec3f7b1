"""A relay to the local PostgreSQL that silences the store's read connections (its pool's), leaving the writer's
alone: blackholed (no byte through, no FIN, no RST, the sockets open) either all at once once open, or each as it
sends a read naming some text (`silence_reads`), as a dropped NAT entry or a dead host would leave them."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tests.tcp_relay import UP, Link, Relay

from .store_support import PG_URL

# in the startup packet of the pool's connections only (PostgresStore._settings(read_only=True))
_READ_ONLY_SESSION = b"default_transaction_read_only"
# a Parse message naming a prepared statement (asyncpg's): a read asked again on the connection sends its name only
_PARSE = re.compile(rb"P.{4}(__asyncpg_[^\x00]+)\x00([^\x00]*)\x00", re.DOTALL)


class SilentReadsRelay(Relay):
    def __init__(self) -> None:
        target = urlsplit(PG_URL)
        super().__init__(target.hostname or "127.0.0.1", target.port or 5432)
        self.read_links: set[Link] = set()
        self.marker: bytes | None = None  # a read naming it goes silent, and its connection with it
        self.budget: int | None = None  # how many reads more to silence (None: every one)
        self.silenced = 0
        self.statements: dict[Link, dict[bytes, bytes]] = {}  # per link: prepared statement name -> its SQL

    def url(self, schema: str) -> str:
        parts = urlsplit(PG_URL)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return parts._replace(netloc=f"{user}127.0.0.1:{self.port}").geturl() + f"?schema={schema}"

    def silence_reads(self, marker: str, times: int | None = None) -> None:
        """From now on, a read on a pool connection whose SQL holds marker is swallowed and its link blackholed
        (times reads at most; None: all)."""
        self.marker, self.budget = marker.encode(), times

    def silence_read_links(self) -> int:
        """The pool's connections open now go silent for good; new ones work."""
        links = [link for link in self.read_links if not link.dead]
        for link in links:
            link.dead = True
        return len(links)

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        if direction != UP:
            return data
        if _READ_ONLY_SESSION in data:
            self.read_links.add(link)
        elif link in self.read_links and self._names_marker(link, data) and self.budget != 0:
            if self.budget is not None:
                self.budget -= 1
            self.silenced += 1
            link.dead = True
            return b""
        return data

    def _names_marker(self, link: Link, data: bytes) -> bool:
        statements = self.statements.setdefault(link, {})
        statements.update(_PARSE.findall(data))
        if self.marker is None:
            return False
        return self.marker in data or any(
            name in data for name, sql in statements.items() if self.marker in sql
        )
