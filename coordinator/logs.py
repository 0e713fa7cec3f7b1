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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields(record).items():
            if value is not None:
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`ts=... level=... logger=... MESSAGE key=value ...` (values with spaces or quotes are JSON-quoted)."""

    def __init__(self) -> None:
        super().__init__("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso(record.created)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)  # ts: ISO 8601 UTC, one token
        extra = " ".join(f"{k}={_text(v)}" for k, v in fields(record).items() if v is not None)
        if not extra:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {extra}{sep}{tail}"


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_NEEDS_QUOTES = re.compile(r'[ "=\n\t]').search  # one scan per value: job lines carry many fields


def _text(value: object) -> str:
    text = str(value)
    if not text or _NEEDS_QUOTES(text):
        return json.dumps(text)
    return text


def configure_logging(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
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
