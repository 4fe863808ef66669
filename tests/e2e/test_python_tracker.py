"""The unmodified `snowplow-tracker` from PyPI (GET and POST emitters) against the real collector.

The tracker runs in this process; its Subject carries a user id, an IP, a user agent and tracker-side
device ids. It cannot send SP-Anonymous by itself, but it accepts a `requests.Session`, and a session
with that default header is how an application asks for server-side anonymisation from Python.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any, Literal

import pytest

from tests.e2e.support import Row, Store, device_cookie, require
from tests.procs import Collector

pytestmark = pytest.mark.e2e

Method = Literal["get", "post"]
METHODS: list[Method] = ["get", "post"]
LOOPBACK = "127.0.0.1"
IDS = {
    "user_id": "py-user-1",
    "ip": "198.51.100.23",
    "useragent": "py-e2e/1.0 (+https://example.test)",
    "domain_user_id": "5f0e7d8c-0000-4000-8000-00000000d0d0",
    "network_user_id": "5f0e7d8c-0000-4000-8000-00000000a1a1",
    "session_id": "5f0e7d8c-0000-4000-8000-00000000c3c3",
}


@pytest.fixture(scope="session")
def python_tracker() -> None:
    if importlib.util.find_spec("snowplow_tracker") is None:
        require(["the snowplow-tracker package (pip install -e '.[e2e]', pins snowplow-tracker==1.1.0)"])


def send(collector: Collector, method: Method, app_id: str, anonymous: bool, tnuid: str) -> dict[str, Any]:
    """Track a page view, a structured and a self-describing event; return what the tracker saw."""
    import requests
    from snowplow_tracker.emitters import Emitter
    from snowplow_tracker.events.page_view import PageView
    from snowplow_tracker.events.self_describing import SelfDescribing
    from snowplow_tracker.events.structured_event import StructuredEvent
    from snowplow_tracker.self_describing_json import SelfDescribingJson
    from snowplow_tracker.subject import Subject
    from snowplow_tracker.tracker import Tracker

    sent: list[str] = []
    failed: list[Any] = []
    session = requests.Session()
    if anonymous:
        session.headers["SP-Anonymous"] = "*"
    emitter = Emitter(
        LOOPBACK,
        protocol="http",
        port=collector.port,
        method=method,
        batch_size=10,
        on_success=lambda events: sent.extend(e["eid"] for e in events),
        on_failure=lambda _ok, events: failed.extend(events),
        session=session,
    )
    subject = (
        Subject()
        .set_user_id(IDS["user_id"])
        .set_ip_address(IDS["ip"])
        .set_useragent(IDS["useragent"])
        .set_domain_user_id(IDS["domain_user_id"])
        .set_network_user_id(tnuid)
        .set_domain_session_id(IDS["session_id"])
        .set_domain_session_index(2)
    )
    tracker = Tracker("e2e-py", emitter, subject=subject, app_id=app_id)
    tracked = [
        tracker.track(PageView(page_url="https://shop.example/cart", page_title="Cart")),
        tracker.track(StructuredEvent("shop", "checkout", label="c-1", property_="eur", value=19.5)),
        tracker.track(
            SelfDescribing(
                SelfDescribingJson(
                    "iglu:com.acme/order_placed/jsonschema/1-0-0", {"orderId": "c-1", "total": 19.5}
                )
            )
        ),
    ]
    tracker.flush()  # Emitter (not AsyncEmitter): blocks until every request has been answered
    session.close()
    assert failed == [], failed
    assert None not in tracked and sorted(sent) == sorted(e for e in tracked if e)
    return {"eids": tracked}


def check_events(rows: list[Row]) -> None:
    assert [r["event"] for r in rows] == ["pv", "se", "ue"]
    assert [r["platform"] for r in rows] == ["pc"] * 3
    assert rows[0]["page_url"] == "https://shop.example/cart"
    assert (rows[1]["se_action"], rows[1]["se_label"], rows[1]["se_value"]) == ("checkout", "c-1", 19.5)
    assert (rows[2]["event_vendor"], rows[2]["event_name"]) == ("com.acme", "order_placed")
    assert json.loads(rows[2]["unstruct_event"])["data"]["data"] == {"orderId": "c-1", "total": 19.5}
    assert all(r["v_tracker"].startswith("py-") for r in rows)


@pytest.mark.usefixtures("python_tracker")
@pytest.mark.parametrize("method", METHODS)
def test_python_tracker_identified(collector: Collector, store: Store, method: Method) -> None:
    app_id = f"py-{method}"
    rows = store.events(app_id, send(collector, method, app_id, False, IDS["network_user_id"])["eids"])
    check_events(rows)
    assert [r["anonymous"] for r in rows] == [0] * 3
    assert [r["user_id"] for r in rows] == [IDS["user_id"]] * 3
    assert [r["domain_userid"] for r in rows] == [IDS["domain_user_id"]] * 3
    assert [r["domain_sessionid"] for r in rows] == [IDS["session_id"]] * 3
    assert [r["useragent"] for r in rows] == [IDS["useragent"]] * 3
    # The socket's address, not the `ip` the client claims (untrusted unless configured).
    assert [r["user_ipaddress"] for r in rows] == [LOOPBACK] * 3
    # An unsigned tnuid cannot pick the device: the collector's own id is used.
    assert all(r["network_userid"] and r["network_userid"] != IDS["network_user_id"] for r in rows)
    assert IDS["network_user_id"] not in json.dumps(rows)


@pytest.mark.usefixtures("python_tracker")
@pytest.mark.parametrize("method", METHODS)
def test_python_tracker_forwards_the_device_cookie(
    collector: Collector, store: Store, method: Method
) -> None:
    """A signed sp value passed to Subject.set_network_user_id (tnuid) tracks on that device."""
    cookie = device_cookie(collector.url)
    app_id = f"py-tnuid-{method}"
    rows = store.events(app_id, send(collector, method, app_id, False, cookie)["eids"])
    assert [r["network_userid"] for r in rows] == [cookie.split(".", 1)[0]] * 3
    assert len({r["session_id"] for r in rows}) == 1


@pytest.mark.usefixtures("python_tracker")
@pytest.mark.parametrize("method", METHODS)
def test_python_tracker_with_sp_anonymous_session(collector: Collector, store: Store, method: Method) -> None:
    # The same signed device value the previous test finds stored: under SP-Anonymous it must go.
    cookie = device_cookie(collector.url)
    app_id = f"py-anon-{method}"
    rows = store.events(app_id, send(collector, method, app_id, True, cookie)["eids"])
    check_events(rows)
    assert [r["anonymous"] for r in rows] == [1] * 3
    for name in ("user_ipaddress", "network_userid", "domain_userid", "user_id", "session_id"):
        assert [r[name] for r in rows] == [None] * 3, name
    text = json.dumps(rows)
    for value in (IDS["user_id"], IDS["domain_user_id"], cookie.split(".", 1)[0], IDS["ip"], f'"{LOOPBACK}"'):
        assert value not in text, value
