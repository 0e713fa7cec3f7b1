"""The metrics endpoint: a minimal HTTP/1.1 server on the event loop, answering GET /metrics.

It runs on the coordinator's own loop (no thread), so gauges read the scheduler's state between two of its
steps and never mid-change. Each connection gets one answer and is closed; a request must arrive within 10 s.
"""

from __future__ import annotations

import asyncio
import gzip
import logging

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ..config import host_port

log = logging.getLogger("coordinator.metrics")

READ_TIMEOUT_S = 10.0
INDEX = b"AITBC coordinator metrics: see /metrics\n"


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        # kept before it serves: start_server(start_serving=True) yields once after binding, and a start cancelled
        # there (a stop signal during start-up) left the listener open, held by nobody, its port bound
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True, start_serving=False
        )
        self.port = self._server.sockets[0].getsockname()[1]
        await self._server.start_serving()
        log.info("metrics on http://%s/metrics", host_port(self.host, self.port),
                 extra={"event": "metrics.listen", "port": self.port})  # fmt: skip
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            status, headers, body = self._answer(head)
            writer.write(_response(status, headers, body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:  # a scrape must never take the coordinator down
            log.exception("metrics request failed")
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return "400 Bad Request", [("Content-Type", "text/plain")], b"bad request\n"
        method, target = parts[0], parts[1]
        fields = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [("Allow", "GET, HEAD")], b""
        path = target.split("?", 1)[0]
        if path == "/":
            return "200 OK", [("Content-Type", "text/plain; charset=utf-8")], INDEX
        if path != "/metrics":
            return "404 Not Found", [("Content-Type", "text/plain")], b"not found: try /metrics\n"
        encoder, content_type = choose_encoder(fields.get("accept", ""))
        body = encoder(self.registry)
        headers = [("Content-Type", content_type)]
        if "gzip" in fields.get("accept-encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        if method == "HEAD":
            headers.append(("Content-Length", str(len(body))))
            return "200 OK", headers, b""
        return "200 OK", headers, body


def _response(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    if not any(name == "Content-Length" for name, _ in headers):
        headers = [*headers, ("Content-Length", str(len(body)))]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 {status}\r\n{head}Connection: close\r\n\r\n".encode("latin-1") + body
