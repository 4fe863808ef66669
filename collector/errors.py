"""The one error shape: `{"error": {"status", "reason", "message"}}`, for every client or overload error."""

from __future__ import annotations

import orjson
from aiohttp import web


class CollectorError(Exception):
    """An error that carries its HTTP status, a stable machine reason and a message for people."""

    status = 400

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}
        # the answer closes the connection: what is left of the request on it cannot be read
        self.close = close


class BadInput(CollectorError):
    """The client sent something the protocol does not allow (4xx, and a bad row)."""


class Unavailable(CollectorError):
    """The collector cannot take the request now: trackers retry a 503 later."""

    status = 503


def error_response(
    status: int, reason: str, message: str, headers: dict[str, str] | None = None, **extra: object
) -> web.Response:
    """The JSON body every error answer carries."""
    body = orjson.dumps({"error": {"status": status, "reason": reason, "message": message, **extra}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def from_exception(exc: CollectorError) -> web.Response:
    """The answer for a CollectorError."""
    return error_response(exc.status, exc.reason, exc.message, exc.headers)
