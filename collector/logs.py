"""Logging set-up: text or JSON lines; the access line never carries an IP, cookie or identifier."""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import UTC, datetime
from logging.handlers import MemoryHandler
from typing import Any

import orjson

ACCESS = logging.getLogger("collector.access")
# Fields an access record may carry: an allow-list, so nothing else reaches a log line by accident.
ACCESS_FIELDS = ("method", "route", "status", "ms", "events")


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.name == ACCESS.name and isinstance(record.args, tuple):
            out.update(zip(ACCESS_FIELDS, record.args, strict=True))
            out["ms"] = round(out["ms"], 2)
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__
        return orjson.dumps(out).decode()


class TextFormatter(logging.Formatter):
    """`time level logger message`, exceptions by type only (their text may quote a payload)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatException(self, ei: Any) -> str:
        return f"[{ei[0].__name__}]" if ei and ei[0] else ""


class RedactLibraries(logging.Filter):
    """aiohttp's own records quote the peer address and raw request lines: keep only what went wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("aiohttp"):
            kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else "error"
            record.msg, record.args, record.exc_info, record.exc_text = (
                f"{kind} (details redacted)",
                (),
                None,
                None,
            )
            record.stack_info = None
        return True


FLUSH_SECONDS = 0.5


def setup(fmt: str, level: str) -> None:
    """Configure the root logger once, at start-up.

    Lines are buffered and written every FLUSH_SECONDS (at once for warnings, and at exit): one write
    to stderr per request cost a syscall, which also handed the GIL to the writer thread each time.
    A SIGKILL loses at most that half second of log lines, never an event.
    """
    # The logging HOWTO's "Optimization" switches: no caller lookup (a stack walk per record), no thread,
    # process or task names; the access line carries none of them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    stream.addFilter(RedactLibraries())
    buffered = MemoryHandler(capacity=1024, flushLevel=logging.WARNING, target=stream, flushOnClose=True)
    root = logging.getLogger()
    root.handlers[:] = [buffered]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True  # its default format prints the peer address

    def flush_forever() -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            buffered.flush()

    threading.Thread(target=flush_forever, name="log-flush", daemon=True).start()


def access(method: str, route: str, status: int, ms: float, events: int) -> None:
    """The one line per request (its args are the ACCESS_FIELDS, in order: no `extra` dict to merge)."""
    ACCESS.info("%s %s %d %.1fms events=%d", method, route, status, ms, events)
