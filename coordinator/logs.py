"""Logging set-up: key=value text (default) or JSON lines, chosen by LOG_FORMAT.

Fields passed with `extra=` (job_id, miner_id, client_id, session_id, reason, ...) become JSON keys or
trailing key=value pairs; the id of the RPC being served (request_id) is added to every line logged while
serving it. Nothing here ever logs a setting's value: secrets (API keys, signing keys) stay out of logs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import IO
from urllib.parse import urlsplit, urlunsplit

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def fields(record: logging.LogRecord) -> dict[str, object]:
    """The extra fields of record (those not part of every LogRecord), in the order they were given."""
    attrs = record.__dict__
    extra = attrs.keys() - _STANDARD  # one set difference instead of a test per attribute
    if not extra:
        return {}
    return {k: v for k, v in attrs.items() if k in extra and not k.startswith("_")}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            rid = request_id.get()
            if rid is not None:
                record.request_id = rid
        return True


class LineFormatter(logging.Formatter):
    """A record becomes `line(...)` of its parts; lines written without a LogRecord use `line` too."""

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        if record.stack_info:
            stack = self.formatStack(record.stack_info)
            exc = f"{exc}\n{stack}" if exc else stack
        return self.line(_iso(record.created), record.levelname, record.name, record.getMessage(),
                         fields(record), exc)  # fmt: skip

    @staticmethod
    def line(
        ts: str, level: str, logger: str, msg: str, extra: dict[str, object], exc: str | None = None
    ) -> str:
        raise NotImplementedError


class JsonFormatter(LineFormatter):
    @staticmethod
    def line(
        ts: str, level: str, logger: str, msg: str, extra: dict[str, object], exc: str | None = None
    ) -> str:
        entry: dict[str, object] = {"ts": ts, "level": level.lower(), "logger": logger, "msg": msg}
        for key, value in extra.items():
            if value is not None:
                entry.setdefault(key, value)
        if exc:
            entry["exc"] = exc
        return json.dumps(entry, default=str)


class TextFormatter(LineFormatter):
    """`ts=... level=... logger=... MESSAGE key=value ...` (values with spaces or quotes are JSON-quoted)."""

    @staticmethod
    def line(
        ts: str, level: str, logger: str, msg: str, extra: dict[str, object], exc: str | None = None
    ) -> str:
        head = f"ts={ts} level={level} logger={logger} {msg}"
        pairs = " ".join(f"{k}={_text(v)}" for k, v in extra.items() if v is not None)
        if pairs:
            head = f"{head} {pairs}"
        return f"{head}\n{exc}" if exc else head  # a traceback goes below the fields


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_NEEDS_QUOTES = re.compile(r'[ "=\n\t]').search  # one scan per value: job lines carry many fields


def _text(value: object) -> str:
    text = str(value)
    if not text or _NEEDS_QUOTES(text):
        return json.dumps(text)
    return text


class LineHandler(logging.StreamHandler):
    """The handler `configure_logging` installs. Besides records, it writes many ready-made lines in one
    call (`write_lines`): the per-transition job lines, thousands a second, skip LogRecord, filters and a
    write and flush per line."""

    formatter: LineFormatter

    def write_lines(self, level: str, logger: str, lines: list[tuple[str, dict[str, object]]]) -> None:
        """lines: (message, fields), all logged now at level by logger."""
        ts = _iso(time.time())
        fmt = self.formatter.line
        text = "".join(fmt(ts, level, logger, msg, extra) + self.terminator for msg, extra in lines)
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(text)
                self.flush()
            except Exception:  # as StreamHandler.emit: logging never takes the service down
                self.handleError(
                    logging.LogRecord(logger, logging.INFO, "", 0, "%d lines", (len(lines),), None)
                )


def line_handler() -> LineHandler | None:
    """The configured LineHandler when it is the only place root log lines go (else None: log records)."""
    handlers = logging.getLogger().handlers
    if len(handlers) == 1 and isinstance(handlers[0], LineHandler):
        return handlers[0]
    return None


def configure_logging(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> None:
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    # LogRecord fields no formatter here prints: not collecting them saves microseconds per line
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def redact_url(url: str) -> str:
    """url without its password (`postgres://user:***@host/db`), for log lines."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
