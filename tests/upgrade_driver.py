"""Play one replica of whichever collector version is importable (PYTHONPATH names its tree) against a
store: send requests in turn with the device cookie a browser would keep, print the last cookie and
the answers' statuses as JSON. tests/test_upgrade.py runs it with an older commit's tree.

argv: the store (a SQLite path or a postgresql:// URL), the cookie ("" for none), a JSON list of
requests, each a list of events."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from collector.app import create_app
from collector.config import Config, DatabaseUrl, Secret

PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
TP2 = "/com.snowplowanalytics.snowplow/tp2"


async def main(store: str, cookie: str | None, requests: list[list[dict[str, str]]]) -> None:
    db = DatabaseUrl(store) if store.startswith("postgresql") else Path(store)
    app = create_app(Config(db=db, cookie_secret=(Secret("test-secret"),)), clock=lambda: 1_800_000_000.0)
    client = TestClient(TestServer(app))
    await client.start_server()
    statuses = []
    try:
        for events in requests:
            headers = {"Cookie": f"sp={cookie}"} if cookie else {}
            resp = await client.post(TP2, json={"schema": PAYLOAD, "data": events}, headers=headers)
            statuses.append(resp.status)
            if "sp" in resp.cookies:
                cookie = resp.cookies["sp"].value or None
    finally:
        await client.close()
    print(json.dumps({"cookie": cookie, "statuses": statuses}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] or None, json.loads(sys.argv[3])))
