"""The HTTP server around the app: aiohttp's own refusals (its parser's) in the one error shape too.

aiohttp answers a request its parser refuses (a header over the limit, bad chunking, a bad
Content-Length, control characters) before any handler or middleware runs, in plain text that quotes
the offending line. This runner's protocol handler answers them as JSON instead, naming the class of
error and echoing nothing of the request.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from collector.errors import error_response

MAX_LINE = 65536  # the request line: above COLLECTOR_MAX_QUERY, so a long query is the handler's 414
MAX_FIELD = 16384  # one header line
HANDLER_ARGS = {"max_line_size": MAX_LINE, "max_field_size": MAX_FIELD}


def refusal(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """(status, reason, message) for an error aiohttp's parser raised; nothing quoted from the request."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_FIELD,):
            return 431, "header_too_large", f"a header line is over {MAX_FIELD} bytes"
        return 414, "request_line_too_long", f"the request line is over {MAX_LINE} bytes"
    if isinstance(exc, ContentEncodingError):
        if "install" in str(exc):  # br or zstd, whose decoder is not installed
            return 415, "unsupported_encoding", "the Content-Encoding is not one of gzip, deflate"
        return 400, "bad_encoding", "the body could not be decoded (Content-Encoding)"
    if isinstance(exc, HttpProcessingError) or status == 400:
        return 400, "bad_http", "the request is not valid HTTP/1.1 (framing, headers or encoding)"
    return 500, "internal", "internal error"


class JsonErrors(RequestHandler):
    """aiohttp's protocol handler, answering its own refusals in the collector's error shape."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        self.log_exception("refused by the HTTP parser", exc_info=exc)  # redacted by collector.logs
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; the connection is dropped")
        code, reason, text = refusal(exc, status)
        resp = error_response(code, reason, text)
        resp.force_close()
        return resp


class Server(web.Server):
    """An aiohttp server whose connections use JsonErrors."""

    def __call__(self) -> RequestHandler:
        return JsonErrors(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """web.AppRunner with the JsonErrors protocol handler."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = Server  # the app built it (with its request factory); only the class changes
        return server
