"""Fuzzing the HTTP edge: whatever a client sends, the answer is never a 5xx and the store stays sane."""

from __future__ import annotations

import asyncio
import string
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.app import create_app
from collector.config import Config, Secret
from tests.conftest import SCHEMA, TP2

KEYS = st.sampled_from(
    [
        "e",
        "p",
        "tv",
        "eid",
        "uid",
        "duid",
        "sid",
        "vid",
        "nuid",
        "tnuid",
        "ip",
        "dtm",
        "stm",
        "se_va",
        "ue_pr",
        "ue_px",
        "co",
        "cx",
        "url",
        "u",
        "aid",
    ]
) | st.text(max_size=8)
VALUES = (
    st.sampled_from(
        ["pv", "web", "ue", "se", "", "1", "-1", "nan", "{}", "[]", '{"data":{}}', "e30", "%%%", "\x00"]
    )
    | st.text(max_size=40)
    | st.text(string.ascii_letters, max_size=30)
)
PARAMS = st.dictionaries(KEYS, VALUES, max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
BODIES = (
    st.builds(
        lambda evs: orjson.dumps({"schema": SCHEMA, "data": evs}), st.lists(PARAMS, min_size=0, max_size=4)
    )
    | st.builds(lambda evs: orjson.dumps({"schema": SCHEMA, "data": evs}), st.lists(JSON, max_size=4))
    | st.builds(orjson.dumps, JSON)
    | st.binary(max_size=200)
)


async def _check(db: Path, params: dict[str, str], body: bytes, anonymous: bool, ctype: str) -> None:
    cfg = Config(db=db, cookie_secret=(Secret("fuzz"),), redirect_domains=("shop.test",), access_log=False)
    headers = {"SP-Anonymous": "*"} if anonymous else {}
    async with TestClient(TestServer(create_app(cfg))) as client:
        for method, path, kw in (
            ("GET", "/i", {"params": params}),
            ("GET", "/r/tp2", {"params": params}),
            ("POST", TP2, {"data": body, "headers": {**headers, "Content-Type": ctype}}),
        ):
            resp = await client.request(method, path, allow_redirects=False, **{"headers": headers, **kw})  # type: ignore[arg-type]
            assert resp.status < 500, (method, path, resp.status, await resp.text())
            if resp.status >= 400:
                err: Any = (await resp.json())["error"]
                assert err["status"] == resp.status and err["reason"] and err["message"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=PARAMS,
    body=BODIES,
    anonymous=st.booleans(),
    ctype=st.sampled_from(["application/json", "application/json; charset=UTF-8", "text/plain", "image/png"]),
)
def test_no_input_gets_a_5xx(
    tmp_path: Path, params: dict[str, str], body: bytes, anonymous: bool, ctype: str
) -> None:
    asyncio.run(_check(tmp_path / "fuzz.db", params, body, anonymous, ctype))
