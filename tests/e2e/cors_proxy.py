"""A test-only reverse proxy that breaks the collector's CORS answers, to prove the browser tests can fail.

    python tests/e2e/cors_proxy.py --port P --upstream http://127.0.0.1:C --mode star

Every request goes to the real collector unchanged; on the way back the proxy rewrites the CORS
headers the way a misconfigured collector would:

- `star`: `Access-Control-Allow-Origin: *`, which a browser refuses for `credentials: 'include'`;
- `no-credentials`: drops `Access-Control-Allow-Credentials`, which the browser equally refuses;
- `record`: changes nothing; with `--record FILE` every mode appends one JSON line per request, the
  method, path and headers as they arrived (names lowercased), to see what reaches the collector.
"""

from __future__ import annotations

import argparse
import json

from aiohttp import ClientSession, web
from multidict import CIMultiDict

# Headers that describe one hop's framing, not the message: aiohttp recomputes them.
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "host",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
    }
)
MODES = ("star", "no-credentials", "record")


def rewrite(headers: CIMultiDict[str], mode: str) -> None:
    """Apply the misconfiguration to the upstream's answer headers, in place."""
    if mode == "star" and "Access-Control-Allow-Origin" in headers:
        headers["Access-Control-Allow-Origin"] = "*"
    elif mode == "no-credentials":
        headers.popall("Access-Control-Allow-Credentials", None)


def make_app(upstream: str, mode: str, record: str | None = None) -> web.Application:
    async def on_startup(app: web.Application) -> None:
        # No cookie jar of its own and no decompression: the browser's cookies and bodies pass as-is.
        app["client"] = ClientSession(auto_decompress=False, cookie_jar=None)

    async def on_cleanup(app: web.Application) -> None:
        await app["client"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        out = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS)
        body = await request.read()
        if record:
            seen = {k.lower(): v for k, v in request.headers.items()}
            line = json.dumps({"method": request.method, "path": request.path, "headers": seen})
            with open(record, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        async with request.app["client"].request(
            request.method,
            upstream + request.path_qs,
            headers=out,
            data=body or None,
            allow_redirects=False,
        ) as up:
            payload = await up.read()
            headers = CIMultiDict((k, v) for k, v in up.headers.items() if k.lower() not in HOP_HEADERS)
        rewrite(headers, mode)
        return web.Response(status=up.status, headers=headers, body=payload)

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the collector, e.g. http://127.0.0.1:8080")
    parser.add_argument("--mode", choices=MODES, default="star")
    parser.add_argument("--record", help="append each request (method, path, headers) as a JSON line")
    args = parser.parse_args()
    web.run_app(
        make_app(args.upstream.rstrip("/"), args.mode, args.record),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
