"""The ceiling for a Python collector on this stack: aiohttp + uvloop + orjson, parse and answer only.

It does the unavoidable part of the collector's work (parse the query string or the JSON body, check
the payload_data envelope minimally) and answers the same as the collector (a 43-byte GIF for GET,
"ok" for POST), but stores nothing, sets no cookie and writes no access log. One process.

    python tests/bench/baseline.py --host 127.0.0.1 --port 8081
"""

from __future__ import annotations

import argparse
import base64

import orjson
import uvloop
from aiohttp import web

# A 43-byte transparent 1x1 GIF (the size nginx's empty_gif and Snowplow serve).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate"}
PAYLOAD_PREFIX = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-"
REQUIRED = ("e", "p", "tv")


def _valid_event(ev: object) -> bool:
    return isinstance(ev, dict) and all(isinstance(ev.get(k), str) for k in REQUIRED)


async def pixel(request: web.Request) -> web.Response:
    q = request.query  # parsing the query string is part of the work being measured
    if not _valid_event(dict(q)):
        return web.Response(status=400, text="bad event")
    return web.Response(body=PIXEL, content_type="image/gif", headers=NO_CACHE)


async def post(request: web.Request) -> web.Response:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.Response(status=400, text="bad json")
    data = doc.get("data") if isinstance(doc, dict) else None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if not (isinstance(schema, str) and schema.startswith(PAYLOAD_PREFIX) and isinstance(data, list)):
        return web.Response(status=400, text="bad envelope")
    if not all(_valid_event(ev) for ev in data):
        return web.Response(status=400, text="bad event")
    return web.Response(text="ok", headers=NO_CACHE)


async def ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app.router.add_get("/i", pixel)
    app.router.add_get("/com.snowplowanalytics.snowplow/tp2", pixel)
    app.router.add_post("/com.snowplowanalytics.snowplow/tp2", post)
    app.router.add_get("/health", ok)
    app.router.add_get("/ready", ok)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ns = ap.parse_args()
    web.run_app(
        make_app(), host=ns.host, port=ns.port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
