"""The unmodified @snowplow/node-tracker (POST and GET emitters) against the real collector.

A server-side tracker sends every identifier it was given (uid, duid, nuid, sid, vid, ip, ua) even
with `serverAnonymization: true`, which only adds the SP-Anonymous header: the collector has to
drop them. Each "nothing kept" check has a twin finding the same value kept without the header.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.support import Row, Store, device_cookie, run_node
from tests.procs import Collector

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("node_tools")]

METHODS = ["post", "get"]
LOOPBACK = "127.0.0.1"


def send(url: str, method: str, anonymous: bool, app_id: str, nuid: str | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "collector": url,
        "method": method,
        "serverAnonymization": anonymous,
        "appId": app_id,
    }
    if nuid is not None:
        options["networkUserId"] = nuid
    result = run_node("node.mjs", options)
    assert result["ok"], result
    assert result["failures"] == [] and result["acked"] == 3, result
    return result


def check_events(rows: list[Row]) -> None:
    """The events themselves arrive whole, with or without anonymisation."""
    assert [r["event"] for r in rows] == ["pv", "se", "ue"]
    assert [r["platform"] for r in rows] == ["srv"] * 3
    assert rows[0]["page_url"] == "https://shop.example/checkout?step=1"
    assert (rows[1]["se_category"], rows[1]["se_action"], rows[1]["se_label"], rows[1]["se_value"]) == (
        "shop",
        "order",
        "o-1",
        42.0,
    )
    assert (rows[2]["event_vendor"], rows[2]["event_name"]) == ("com.acme", "order_placed")
    assert json.loads(rows[2]["unstruct_event"])["data"]["data"] == {"orderId": "o-1", "total": 42}
    assert all(r["v_tracker"].startswith("node-") for r in rows)


@pytest.mark.parametrize("method", METHODS)
def test_node_tracker_identified(collector: Collector, store: Store, method: str) -> None:
    result = send(collector.url, method, False, f"node-{method}")
    ids = result["ids"]
    rows = store.events(f"node-{method}", result["eids"])
    check_events(rows)
    assert [r["anonymous"] for r in rows] == [0] * 3
    assert [r["user_id"] for r in rows] == [ids["userId"]] * 3
    assert [r["domain_userid"] for r in rows] == [ids["domainUserId"]] * 3
    assert [r["domain_sessionid"] for r in rows] == [ids["sessionId"]] * 3
    # The client may not choose its address: the `ip` param is not trusted by default.
    assert [r["user_ipaddress"] for r in rows] == [LOOPBACK] * 3
    # Nor its device: an unsigned nuid counts as absent, the collector mints its own id.
    assert all(r["network_userid"] and r["network_userid"] != ids["networkUserId"] for r in rows)
    assert ids["networkUserId"] not in json.dumps(rows)


@pytest.mark.parametrize("method", METHODS)
def test_node_tracker_forwards_the_device_cookie(collector: Collector, store: Store, method: str) -> None:
    """A server app forwarding the browser's signed sp value as nuid tracks on that device."""
    cookie = device_cookie(collector.url)
    result = send(collector.url, method, False, f"node-nuid-{method}", nuid=cookie)
    rows = store.events(f"node-nuid-{method}", result["eids"])
    assert [r["network_userid"] for r in rows] == [cookie.split(".", 1)[0]] * 3
    assert len({r["session_id"] for r in rows}) == 1


@pytest.mark.parametrize("method", METHODS)
def test_node_tracker_server_anonymization(collector: Collector, store: Store, method: str) -> None:
    # The same signed device value the previous test finds stored: under SP-Anonymous it must go.
    cookie = device_cookie(collector.url)
    result = send(collector.url, method, True, f"node-anon-{method}", nuid=cookie)
    ids = result["ids"]
    rows = store.events(f"node-anon-{method}", result["eids"])
    check_events(rows)
    assert [r["anonymous"] for r in rows] == [1] * 3
    for name in ("user_ipaddress", "network_userid", "domain_userid", "user_id", "session_id"):
        assert [r[name] for r in rows] == [None] * 3, name
    text = json.dumps(rows)
    for value in (ids["userId"], ids["domainUserId"], cookie.split(".", 1)[0], ids["ip"], f'"{LOOPBACK}"'):
        assert value not in text, value


@pytest.fixture(scope="module")
def ip_param_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """A collector told to believe a tracker's `ip` param (for trusted server-side senders)."""
    db = tmp_path_factory.mktemp("e2e-ip") / "events.db"
    proc = Collector(db, env={"COLLECTOR_TRUST_IP_PARAM": "true"}).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("method", METHODS)
def test_node_tracker_ip_param_when_trusted_but_never_when_anonymous(
    ip_param_collector: Collector,
    method: str,
) -> None:
    store = Store(ip_param_collector.db)
    identified = send(ip_param_collector.url, method, False, f"node-ip-{method}")
    anonymous = send(ip_param_collector.url, method, True, f"node-ip-anon-{method}")
    rows = store.events(f"node-ip-{method}", identified["eids"])
    assert [r["user_ipaddress"] for r in rows] == [identified["ids"]["ip"]] * 3
    rows = store.events(f"node-ip-anon-{method}", anonymous["eids"])
    assert [r["user_ipaddress"] for r in rows] == [None] * 3
    assert anonymous["ids"]["ip"] not in json.dumps(rows)
