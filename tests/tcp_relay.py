"""A TCP relay for tests that break the network between two real parts (a miner and the coordinator, the
coordinator and PostgreSQL).

`Relay` listens on a loopback port and relays each connection it accepts to its upstream as a `Link`: two
pipes, the client's bytes going up and the upstream's coming down. What a test needs of the network it asks
of the relay (cut every link with a reset or a FIN, stall all traffic, blackhole the links so far) or does in
a subclass's `passing` hook, which sees every chunk on its way and may hold it back, change it, or cut its
link instead of passing it on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

UP, DOWN = "up", "down"  # client -> upstream, upstream -> client


def abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close writer's socket with a TCP reset (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None and sock.fileno() >= 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Link:
    """One relayed connection: the client's side (down) and the upstream's side (up)."""

    def __init__(
        self,
        relay: Relay,
        down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.relay = relay
        (self.down_r, self.down_w), (self.up_r, self.up_w) = down, up
        self.dead = False  # blackholed for good: nothing flows, nothing closes (a NAT dropped its entry)
        self.first = not relay.accepted  # the relay's first connection (a store's writer opens its own first)
        self.notes: dict[str, object] = {}  # a subclass's hook's state for this link
        self.tasks = [
            asyncio.create_task(self._pipe(self.down_r, self.up_w, UP)),
            asyncio.create_task(self._pipe(self.up_r, self.down_w, DOWN)),
        ]
        self.done = asyncio.ensure_future(asyncio.gather(*self.tasks, return_exceptions=True))
        self.done.add_done_callback(lambda _: relay.links.discard(self))

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str) -> None:
        flowing = self.relay.flowing[direction]
        try:
            while True:
                await flowing.wait()
                data = await src.read(65536)
                if not data:
                    break
                await flowing.wait()  # bytes read just before a stall wait for its end
                if self.dead:
                    continue
                passed = await self.relay.passing(self, direction, data)
                if passed is None:  # the hook ended the link
                    return
                if passed:
                    dst.write(passed)
                    await dst.drain()
            if self.dead:  # nor does a FIN: the link stays open, silent, until cut
                await asyncio.Event().wait()
            if self.relay.half_close and dst.can_write_eof():
                dst.write_eof()  # pass the FIN on (the other direction may still flow)
            else:
                self.close()
        except (ConnectionError, OSError):
            self.reset()

    def reset(self) -> None:
        """Both sockets closed with a TCP reset (the upstream's kept open if the relay keeps it)."""
        for w in self._sides():
            abort_with_reset(w)
        self._stop()

    def close(self) -> None:
        """Both sockets closed cleanly, with a FIN (the upstream's kept open if the relay keeps it)."""
        for w in self._sides():
            w.close()
        self._stop()

    def _sides(self) -> tuple[asyncio.StreamWriter, ...]:
        return (self.down_w,) if self.up_w in self.relay.kept_open else (self.down_w, self.up_w)

    def drop_client_side(self) -> None:
        """The client's socket closed, the upstream's left open and silent: what a dropped NAT entry looks
        like to a server, which never hears of it."""
        self.relay.kept_open.append(self.up_w)
        abort_with_reset(self.down_w)
        self._stop()

    def _stop(self) -> None:
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()


class Relay:
    """Relays TCP from its own loopback port to (host, port). Subclasses override `passing` (and `accepting`)."""

    half_close = True  # a FIN read on one side is passed on and the other direction keeps flowing

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.links: set[Link] = set()
        self.accepted = 0  # connections relayed so far
        self.kept_open: list[asyncio.StreamWriter] = []  # upstream sides left open by drop_client_side
        self.flowing = {UP: asyncio.Event(), DOWN: asyncio.Event()}
        self.heal()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def accepting(self) -> bool:
        """Whether to relay a new connection; refused, the client sees a reset."""
        return True

    async def passing(self, link: Link, direction: str, data: bytes) -> bytes | None:
        """The bytes to pass on for data read going `direction` (b"" passes nothing); None when the hook cut
        the link. Awaiting here holds that direction of the link back."""
        return data

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting():
            abort_with_reset(writer)
            return
        try:
            up = await asyncio.open_connection(*self.target)
        except OSError:  # the upstream is down: the client sees a refused connection (a reset)
            abort_with_reset(writer)
            return
        self.links.add(Link(self, (reader, writer), up))
        self.accepted += 1

    def each_link(self, act: Callable[[Link], None]) -> int:
        links = list(self.links)
        for link in links:
            act(link)
        return len(links)

    def cut(self, how: str = "rst") -> int:
        """Every link so far closed, with a reset ("rst"), a FIN ("fin"), or on the client's side only, the
        upstream's left open ("half", see Link.drop_client_side); the number cut."""
        return self.each_link({"rst": Link.reset, "fin": Link.close, "half": Link.drop_client_side}[how])

    def stall(self, *directions: str) -> None:
        """No byte flows on any link, in the directions given (by default both), until heal()."""
        for direction in directions or (UP, DOWN):
            self.flowing[direction].clear()

    def heal(self) -> None:
        for event in self.flowing.values():
            event.set()

    def blackhole(self) -> int:
        """The links so far go silent for good (their sockets stay open); new ones work."""
        links = [link for link in self.links if not link.dead]
        for link in links:
            link.dead = True
        return len(links)

    async def close(self) -> None:
        self.heal()
        links = list(self.links)
        self.cut("rst")
        if self.server is not None:
            self.server.close()
        for w in self.kept_open:
            w.transport.abort()
        await asyncio.gather(*(link.done for link in links), return_exceptions=True)
