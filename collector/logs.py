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

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._prefix = ""

    def _ts(self, created: float) -> str:
        # datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"), the seconds formatted
        # once a second: like datetime, round to the microsecond first (half to even), then cut to ms
        second = int(created)
        micros = round((created - second) * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._second, self._prefix = (
                second,
                datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            )
        return f"{self._prefix}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._ts(record.created),
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
        self._second = -1
        self._prefix = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # logging's default asctime (local time, `,mmm`), its strftime done once a second, not a line
        second = int(record.created)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._prefix},{int(record.msecs):03d}"

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


class BatchWriter(logging.StreamHandler):  # type: ignore[type-arg]
    """The buffer's target: formats each record as StreamHandler does, and writes them at its flush.

    StreamHandler flushes the stream after every record, a write(2) each: the buffered lines were
    still written one system call a line, all at once every half second. The batch goes out in
    writes of whole lines up to PIPE_BUF bytes: `--workers` share the supervisor's stderr, and a pipe
    keeps a write of at most PIPE_BUF bytes whole, so no worker's line is torn by another's.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._last: logging.LogRecord | None = None  # for handleError, when a write fails

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + self.terminator)
            self._last = record
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report and go on
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()
        try:
            lines, self._lines = self._lines, []
            try:
                for chunk in chunks(lines, PIPE_BUF):
                    self.stream.write(chunk)
                    self.stream.flush()
                if not lines:
                    self.stream.flush()
            except Exception:  # noqa: BLE001 - a broken or closed stderr: reported, never raised to the caller
                if self._last is not None:
                    self.handleError(self._last)
        finally:
            self.release()


PIPE_BUF = 4096  # POSIX guarantees at least 512; Linux's is 4096


def chunks(lines: list[str], limit: int) -> list[str]:
    """The lines joined into texts of at most `limit` bytes each (a longer line alone), in order."""
    out: list[str] = []
    part: list[str] = []
    size = 0
    for line in lines:
        n = len(line) if line.isascii() else len(line.encode("utf-8", "surrogateescape"))
        if part and size + n > limit:
            out.append("".join(part))
            part, size = [], 0
        part.append(line)
        size += n
    if part:
        out.append("".join(part))
    return out


class Buffered(MemoryHandler):
    """MemoryHandler whose flush also writes its target's batch."""

    def flush(self) -> None:
        self.acquire()  # the same lock MemoryHandler.flush takes: close() cannot drop the target between
        try:
            super().flush()
            target = self.target
            if target is not None:
                target.flush()
        finally:
            self.release()


def flush_quietly(handler: logging.Handler) -> None:
    """One periodic flush; whatever it raises is reported, so the flush thread never stops."""
    try:
        handler.flush()
    except Exception as exc:  # noqa: BLE001 - by type only: the message may quote a log line
        print(f"log flush failed: {type(exc).__name__}", file=sys.__stderr__)


FLUSH_SECONDS = 0.5


def setup(fmt: str, level: str) -> None:
    """Configure the root logger once, at start-up.

    Lines are buffered and written every FLUSH_SECONDS (at once for warnings, and at exit), a few
    writes of whole lines for all of them (BatchWriter): one write to stderr per request cost a
    syscall, which also handed the GIL to the writer thread.
    A SIGKILL loses at most that half second of log lines, never an event.
    """
    # The logging HOWTO's "Optimization" switches: no caller lookup (a stack walk per record), no thread,
    # process or task names; the access line carries none of them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stream = BatchWriter(sys.stderr)
    stream.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    stream.addFilter(RedactLibraries())
    buffered = Buffered(capacity=1024, flushLevel=logging.WARNING, target=stream, flushOnClose=True)
    root = logging.getLogger()
    root.handlers[:] = [buffered]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True  # its default format prints the peer address

    def flush_forever() -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            flush_quietly(buffered)

    threading.Thread(target=flush_forever, name="log-flush", daemon=True).start()


# The methods a line names; any other is OTHER. aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS, or
# a platform without its C parser) takes any token as a method, up to the 64 KiB request line.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))


def method_of(method: str) -> str:
    """The request's method as a log line may name it: the client chooses it."""
    return method if method in METHODS else "OTHER"


def access(method: str, route: str, status: int, ms: float, events: int) -> None:
    """The one line per request (its args are the ACCESS_FIELDS, in order: no `extra` dict to merge)."""
    ACCESS.info("%s %s %d %.1fms events=%d", method_of(method), route, status, ms, events)
