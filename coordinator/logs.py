"""Logging set-up: key=value text (default) or JSON lines, chosen by LOG_FORMAT.

Fields passed with `extra=` (job_id, miner_id, client_id, session_id, reason, ...) become JSON keys or
trailing key=value pairs; the id of the RPC being served (request_id) is added to every line logged while
serving it. Nothing here ever logs a setting's value: secrets (API keys, signing keys) stay out of logs.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import sys
import threading
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
        pairs = _pairs(extra)
        if pairs:
            head = f"{head} {pairs}"
        return f"{head}\n{exc}" if exc else head  # a traceback goes below the fields


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_NEEDS_QUOTES = re.compile(r'[ "=\n\t]').search


def _text(value: object) -> str:
    text = str(value)
    if not text or _NEEDS_QUOTES(text):
        return json.dumps(text)
    return text


def _pairs(extra: dict[str, object]) -> str:
    """`key=value ...` of the fields that are not None, each value as `_text` writes it.

    Lines come by the thousand a second, and most values need no quotes: the pairs are joined raw, then the
    whole text is checked at once (a few substring scans in C instead of a regex search per value: 0.7 us
    of a job line's 2.5). The raw join is the right text exactly when it holds no quote, tab or newline,
    one `=` per pair, one space between pairs and no empty value (no `= `, no final `=`); otherwise (a key
    holding one of those included) each value is quoted as it needs, one by one."""
    items = [f"{k}={v!s}" for k, v in extra.items() if v is not None]
    if not items:
        return ""
    text = " ".join(items)
    if (
        text.count("=") == len(items)
        and text.count(" ") == len(items) - 1
        and '"' not in text
        and "\n" not in text
        and "\t" not in text
        and "= " not in text
        and text[-1] != "="
    ):
        return text
    return " ".join(f"{k}={_text(v)}" for k, v in extra.items() if v is not None)


class LineHandler(logging.StreamHandler):
    """The handler `configure_logging` installs. Besides records, it writes many ready-made lines in one
    call (`write_lines`, fed by `info_later`): lines by the thousand a second skip LogRecord, filters and a
    write and flush each."""

    def emit(self, record: logging.LogRecord) -> None:
        if _later and _later_thread == threading.get_ident():
            flush_later()  # lines gathered earlier in this turn go first: the output keeps the order of events
        super().emit(record)

    def write_lines(
        self, level: str, lines: list[tuple[float, logging.Logger, str, dict[str, object]]]
    ) -> None:
        """lines: (time.time() when logged, logger, message, fields), all at level."""
        try:
            fmt = self.formatter.line  # type: ignore[union-attr]  # a LineFormatter: see line_handler
            out, ms, ts = [], -1, ""
            for created, logger, msg, extra in lines:
                if int(created * 1000) != ms:  # one timestamp text per millisecond, not per line
                    ms, ts = int(created * 1000), _iso(created)
                out.append(fmt(ts, level, logger.name, msg, extra) + self.terminator)
            with self.lock:  # type: ignore[union-attr]
                self.stream.write("".join(out))
                self.flush()
        except Exception:  # as StreamHandler.emit: logging never takes the service down
            self.handleError(
                logging.LogRecord("coordinator", logging.INFO, "", 0, "%d lines", (len(lines),), None)
            )


def line_handler() -> LineHandler | None:
    """The configured LineHandler when it is the only place root lines go and would take an INFO line
    unfiltered (its level, its formatter and its filters as configure_logging set them); else None, and
    each line becomes a record."""
    handlers = logging.getLogger().handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if (
        isinstance(handler, LineHandler)
        and isinstance(handler.formatter, LineFormatter)
        and handler.level <= logging.INFO
        and all(isinstance(f, RequestIdFilter) for f in handler.filters)
    ):
        return handler
    return None


# Lines gathered this turn, the loop whose turn it is and its thread: only that thread touches them.
_later: list[tuple[float, logging.Logger, str, dict[str, object]]] = []
_flush_loop: asyncio.AbstractEventLoop | None = None
_later_thread = 0


def info_later(logger: logging.Logger, message: str, extra: dict[str, object]) -> None:
    """An INFO line of logger, written at the end of this event-loop turn with the turn's other lines, in one
    write. For lines that come by the thousand a second (job transitions, a fleet of miners reconnecting):
    a record, the filters and a flushed write per line cost ~35 us. The time and request id are the caller's,
    as for any line; under any other logging set-up each line still becomes an ordinary record."""
    global _flush_loop, _later_thread
    if not logger.isEnabledFor(logging.INFO):
        return
    _later_thread = threading.get_ident()
    extra.setdefault("request_id", request_id.get())
    _later.append((time.time(), logger, message, extra))
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop (a synchronous caller): nothing would come back for the line
        flush_later()
        return
    if _flush_loop is not loop:  # a flush scheduled on a loop that closed before running it is replaced
        _flush_loop = loop
        loop.call_soon(flush_later)


def flush_later() -> None:
    """Write the lines info_later gathered (also called at shutdown, so that none is lost)."""
    global _flush_loop
    _flush_loop = None
    if not _later:
        return
    lines = _later[:]
    _later.clear()
    handler = line_handler()
    if handler is not None and all(_plain(logger) for logger in {logger for _, logger, _, _ in lines}):
        handler.write_lines("INFO", lines)
        return
    for created, logger, message, extra in lines:
        # makeRecord + handle: logger.info without its caller lookup (a stack walk per line; nothing prints it)
        record = logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None, "", extra)
        record.created = created
        logger.handle(record)


def _plain(logger: logging.Logger) -> bool:
    """Whether logger's lines go to the root handlers and nowhere else, unfiltered."""
    while logger.parent is not None:  # up to the root
        if logger.handlers or logger.filters or not logger.propagate:
            return False
        logger = logger.parent
    return True


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
