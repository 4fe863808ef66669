"""Snowplow request bodies for the open-loop client: the same events snowplow.lua sends to wrk."""

from __future__ import annotations

import base64
import json
import random
import time
from urllib.parse import urlencode

PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
URL = "https://shop.example.com/products/42-blue-widget?utm_source=newsletter&utm_medium=email"
CONTEXTS = json.dumps(
    {
        "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
        "data": [
            {
                "schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
                "data": {"id": "6c2f5e53-1e8b-4a7c-9d1b-2a1f2f3e4d5c"},
            },
            {
                "schema": "iglu:org.w3/PerformanceTiming/jsonschema/1-0-0",
                "data": {
                    "navigationStart": 1732270000000,
                    "responseEnd": 1732270000120,
                    "loadEventEnd": 1732270000490,
                },
            },
        ],
    },
    separators=(",", ":"),
)
COMMON = {
    "tv": "js-4.10.1",
    "tna": "sp1",
    "aid": "shop",
    "p": "web",
    "url": URL,
    "page": "Blue widget | Example Shop",
    "refr": "https://www.google.com/",
    "tz": "Europe/Berlin",
    "lang": "de-DE",
    "cs": "UTF-8",
    "res": "1920x1080",
    "cd": "24",
    "cookie": "1",
    "vp": "1280x720",
    "ds": "1280x3400",
}
IDS = {
    "duid": "0b7a1d9e-5c1f-4a39-9f0e-3c3b1f6d2a11",
    "sid": "e1c4a7b2-8d3f-4e6a-b5c9-7f2e1d0a9b8c",
    "vid": "3",
    "uid": "customer-1842",
}
KINDS: list[dict[str, str]] = [
    {"e": "pv"},
    {"e": "pp", "pp_mix": "0", "pp_max": "420", "pp_miy": "0", "pp_may": "1800"},
    {
        "e": "se",
        "se_ca": "checkout",
        "se_ac": "add-to-basket",
        "se_la": "blue-widget",
        "se_pr": "qty",
        "se_va": "2",
    },
]
# The JSON text after the event-specific fields; built once so a body costs a few string joins.
_COMMON_JSON = json.dumps({**COMMON, "co": CONTEXTS, **IDS}, separators=(",", ":"))[1:-1]
_KIND_JSON = [json.dumps(k, separators=(",", ":"))[1:-1] for k in KINDS]


class EventIds:
    """Unique UUID-shaped event ids: `<runtag>-<client id>-4rnd-arnd-<counter>` (like snowplow.lua)."""

    def __init__(self, runtag: str, client: int = 0xFFFF) -> None:
        self.prefix = f"{runtag}-{client:04x}-"
        self.counter = 0

    def next(self) -> str:
        self.counter += 1
        return f"{self.prefix}4{random.getrandbits(12):03x}-a{random.getrandbits(12):03x}-{self.counter:012x}"


def post_body(ids: EventIds, n: int) -> bytes:
    stm = str(int(time.time() * 1000))
    times = f'"dtm":"{stm}","stm":"{stm}"'
    kinds = _KIND_JSON
    events = [f'{{{kinds[i % len(kinds)]},"eid":"{ids.next()}",{times},{_COMMON_JSON}}}' for i in range(n)]
    return f'{{"schema":"{PAYLOAD}","data":[{",".join(events)}]}}'.encode()


def get_path(ids: EventIds) -> str:
    cx = base64.urlsafe_b64encode(CONTEXTS.encode()).rstrip(b"=").decode()
    stm = str(int(time.time() * 1000))
    params = {"e": "pv", **COMMON, **IDS, "cx": cx, "eid": ids.next(), "dtm": stm, "stm": stm}
    return "/i?" + urlencode(params)
