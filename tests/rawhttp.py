"""A raw HTTP/1.1 client over a plain socket: sends header bytes as they are (CR, LF, NUL, non-UTF-8).

aiohttp's client refuses to send some of those, so the fuzz of the HTTP edge writes requests itself.
One request per connection (`Connection: close`), the answer read to the end and parsed leniently.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]


class NoAnswer(Exception):
    """The server closed the connection, or went silent, without a complete status line."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Headers
    body: bytes
    raw: bytes  # everything received: status line, headers and body

    def header(self, name: str) -> bytes | None:
        """The first value of a header (name case-insensitive), or None."""
        low = name.lower().encode()
        return next((v for k, v in self.headers if k.lower() == low), None)


def request_bytes(
    method: str,
    target: bytes,
    headers: Headers,
    body: bytes | None,
    length: int | None = None,
    chunked: bool = False,
) -> bytes:
    """The request as sent: our Host and Connection first, the caller's headers verbatim, then the body.

    The body is framed by a Content-Length (`length` when given, even if it lies), or, when chunked, sent
    as it is after `Transfer-Encoding: chunked` (the caller writes the chunks).
    """
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    elif body is not None or length is not None:
        lines.append(b"Content-Length: " + str(len(body or b"") if length is None else length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def parse_answer(raw: bytes) -> Answer:
    """Status, headers and body of a complete answer; NoAnswer if it has no status line and headers."""
    rest = raw
    while True:  # interim answers first (`100 Continue` to `Expect: 100-continue`)
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"HTTP/1."):
            raise NoAnswer(f"no HTTP answer, got {raw[:200]!r}")
        status_line, *lines = head.split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        if not 100 <= status < 200:
            break
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]
    answer = Answer(status, headers, rest, raw)
    length = answer.header("Content-Length")
    if length is not None:
        body = rest[: int(length)]
    elif (answer.header("Transfer-Encoding") or b"").lower() == b"chunked":
        body = _dechunk(rest)
    else:
        body = rest
    return Answer(status, headers, body, raw)


def send(host: str, port: int, data: bytes, half_close: bool = False, timeout: float = 5.0) -> Answer:
    """Send request bytes and read the answer until the server closes; NoAnswer if there is none.

    half_close shuts our sending side after the data, as a client that gave up mid-upload does.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before reading it all
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise NoAnswer(
                    f"no complete answer within {timeout}s, got {b''.join(chunks)[:200]!r}"
                ) from None
            except OSError as exc:  # a reset after (or instead of) the answer
                if not chunks:
                    raise NoAnswer(f"connection failed: {exc!r}") from None
                break
            if not chunk:
                break
            chunks.append(chunk)
    return parse_answer(b"".join(chunks))
