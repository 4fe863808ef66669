"""How far a rotation reaches: the tracker's ids in the self-describing event itself (a screen view's
`previousId`), in entities nested inside others, and ids the device used long before the rotation
(a landing link twenty pages back, a tab left idle while another browsed).

Each flow is checked with tests/test_linkage.py's generic linkage check and a search of the rows
after the rotation for the one value; each has its control, the same flow with the event not
configured to rotate, where the same checks find the value on both sides.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from collector import identifiers
from collector.config import Config
from tests import test_linkage as L
from tests import test_linkage_device_ids as D
from tests.conftest import Clock, rows

STORES = ("sqlite", "postgres")
SCREEN_VIEW = "iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0"
SCREEN = "iglu:com.snowplowanalytics.mobile/screen/jsonschema/1-0-0"
WEB_PAGE = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0"
BROWSER = "iglu:com.snowplowanalytics.snowplow/browser_context/jsonschema/2-0-0"
MOBILE = D.MOBILE
WRAPPER = "iglu:com.acme/device_report/jsonschema/1-0-0"
MEDIA_SESSION = "iglu:com.snowplowanalytics.snowplow.media/session/jsonschema/1-0-0"


def new_id() -> str:
    return str(uuid.uuid4())


def add_entities(ev: dict[str, str], *entities: dict[str, Any]) -> dict[str, str]:
    """The event with entities added to its contexts (co or cx, as the tracker sent it)."""
    co = (
        orjson.loads(ev.pop("co"))
        if "co" in ev
        else orjson.loads(base64.urlsafe_b64decode(ev.pop("cx") + "=="))
    )
    co["data"] += list(entities)
    ev["co"] = orjson.dumps(co).decode()
    return ev


@dataclass
class App(D.Device):
    """A tracker that clears its ids at the anonymize event, with what the flows below add to each event:
    a mobile app's screens (each screen view names the one before), a browser's tabs and page views,
    the app's own report that nests the mobile context inside its entity."""

    screens: bool = False
    screen: str | None = None  # the current screen view's id
    screen_name: str | None = None
    tab: str = field(default_factory=new_id)  # the tab the next event comes from
    pages: bool = False  # a web_page entity and the tab's browser_context on every event
    page: str = field(default_factory=new_id)
    nested: bool = False  # the mobile context only inside the app's own entity
    link: str = field(default_factory=new_id)  # the duid of a cross-domain link the visit lands through
    media: bool = False  # a video playing on: the media plugin's session entity on every event
    playback: str = field(default_factory=new_id)

    def event(self, e: str, path: str, **params: str) -> dict[str, str]:
        out = super().event(e, path, **params)
        if self.screens and self.screen:
            add_entities(out, {"schema": SCREEN, "data": {"id": self.screen, "name": self.screen_name}})
        if self.pages:
            add_entities(
                out,
                {"schema": WEB_PAGE, "data": {"id": self.page}},
                {"schema": BROWSER, "data": {"tabId": self.tab, "viewport": "1280x720"}},
            )
        if self.media:
            session = {"mediaSessionId": self.playback, "startedAt": "2027-01-15T08:00:00.000Z"}
            add_entities(out, {"schema": MEDIA_SESSION, "data": session})
        if self.nested:
            mobile = {"osType": "ios", "osVersion": "17", "deviceModel": "iPhone", "appleIdfv": self.idfv}
            report = {"battery": 80, "context": {"schema": MOBILE, "data": mobile}}
            add_entities(out, {"schema": WRAPPER, "data": {"reports": [report]}})
        return out

    def view(self, name: str) -> dict[str, str]:
        """A screen view as the mobile trackers send it: the new screen's id, and the previous one's."""
        data: dict[str, Any] = {"name": name, "id": new_id(), "type": "screen"}
        if self.screen:
            data |= {"previousId": self.screen, "previousName": self.screen_name}
        self.screen, self.screen_name = data["id"], name
        ue = {"schema": D.UNSTRUCT, "data": {"schema": SCREEN_VIEW, "data": data}}
        return self.event("ue", f"/{name.lower()}", ue_pr=orjson.dumps(ue).decode())

    def page_view(self, path: str) -> dict[str, str]:
        self.page = new_id()
        return self.event("pv", path)


async def run(
    make_client: Any, cfg: Config, clock: Clock, rotate: bool, flow: list[L.Step], **kind: Any
) -> tuple[App, dict[str, L.Shared]]:
    client = await make_client(cfg if rotate else cfg.replace(anonymize_events=("something_else",)))
    b = App(client, clock, ("alice", "bob"), vid=23, **kind)
    third = App(client, clock, ("carol", "dave"), vid=41, **kind)
    await L.run_flow(clock, [b, third], flow)
    got = {r["event_id"]: r["network_userid"] for r in rows(cfg.db, "select * from events")}
    old, new = ({got[e] for e in b.sent[side]} for side in ("old", "new"))
    assert (old != new) == rotate, (old, new)
    return b, L.linkage(cfg.db, b, third, [("old", "new")])


def stored_after(db: Any, b: App, value: str) -> dict[str, list[str]]:
    """The rows after the rotation that hold the value anywhere in their text, and where."""
    return D.holding(db, b.sent["new"], value)


# --- a screen view names the screen before it ------------------------------------------------------


async def s_login(b: Any) -> None:
    b.phase, b.uid = "old", b.users[0]
    await b.send(b.view("Home"))


async def s_browse(b: Any) -> None:
    await b.send(b.view("Product"), b.view("Basket"))
    b.marks["last screen"] = b.screen


async def s_other_user(b: Any) -> None:
    b.phase, b.uid = "new", b.users[1]
    await b.send(b.view("Home"))


async def s_other_user_browses(b: Any) -> None:
    await b.send(b.view("Product"))


SCREEN_FLOW = [s_login, s_browse, D.clear_after_anonymize, s_other_user, s_other_user_browses]


@pytest.mark.parametrize("rotate", [True, False])
async def test_a_screen_views_previous_id_leaves_no_link(
    make_client: Any, cfg: Config, clock: Clock, rotate: bool
) -> None:
    # the mobile tracker's screen view after the rotation names the last screen before it (previousId)
    b, found = await run(make_client, cfg, clock, rotate, SCREEN_FLOW, screens=True)
    last = b.marks["last screen"]
    assert last
    [first_after] = rows(cfg.db, "select unstruct_event from events where event_id = ?", (b.sent["new"][0],))
    if not rotate:  # the control: the same checks find it
        assert last in found["old/new"], L.report(found)
        assert "unstruct_event" in stored_after(cfg.db, b, last)[b.sent["new"][0]]
        return
    assert found == {}, L.report(found)
    assert stored_after(cfg.db, b, last) == {}
    assert "screen_view" in first_after["unstruct_event"]  # still a screen view


@pytest.mark.parametrize("rotate", [True, False])
async def test_a_playback_across_the_rotation_leaves_no_link(
    make_client: Any, cfg: Config, clock: Clock, rotate: bool
) -> None:
    # the media plugin's session entity names the playback (its mediaSessionId, the app's id for
    # it): a video playing on across the logout sent the same one before and after the rotation
    b, found = await run(make_client, cfg, clock, rotate, D.FLOW, media=True)
    if not rotate:  # the control: the same checks find it
        assert b.playback in found["old/new"], L.report(found)
        assert stored_after(cfg.db, b, b.playback)
        return
    assert found == {}, L.report(found)
    assert stored_after(cfg.db, b, b.playback) == {}
    marks = ",".join("?" * len(b.sent["new"]))
    after = rows(cfg.db, f"select network_userid from events where event_id in ({marks})", b.sent["new"])
    assert len(after) == len(b.sent["new"]) and after[0][0] is not None  # stored, on the new device
    assert len({r[0] for r in after}) == 1


async def test_a_refused_screen_view_keeps_no_previous_id(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # a named request's bad row keeps none of the tracker's ids, the event's own among them
    b = App(await make_client(cfg), clock, ("alice", "bob"), vid=23, screens=True)
    await b.send(b.view("Home"))
    last = b.screen
    refused = {**b.view("Refused"), "p": "BAD"}
    own = b.screen
    assert last and own and last in refused["ue_pr"] and own in refused["ue_pr"]  # the check can fail
    await b.send(refused, b.view("Basket"))
    [br] = rows(cfg.db, "select payload from bad_rows")
    assert "Refused" in br["payload"] and "screen_view" in br["payload"]  # the refused shape is kept
    assert last not in br["payload"] and own not in br["payload"]
    [row] = rows(cfg.db, "select unstruct_event from events where event_id = ?", (b.sent["old"][0],))
    assert row["unstruct_event"] and b.sent["old"][0]  # the stored view keeps its ids
    assert last in row["unstruct_event"]


# --- entities nested in an app's own ------------------------------------------------------------


async def n_login(b: Any) -> None:
    b.phase, b.uid = "old", b.users[0]
    await b.send(b.event("pv", "/"))


async def n_browse(b: Any) -> None:
    await b.send(b.event("pv", "/product"))


NESTED_FLOW = [n_login, n_browse, D.clear_after_anonymize, L.a_other_user, L.a_other_user_browses]


@pytest.mark.parametrize("rotate", [True, False])
async def test_a_device_id_nested_in_an_apps_entity_leaves_no_link(
    make_client: Any, cfg: Config, clock: Clock, rotate: bool
) -> None:
    # the vendor id outlives the rotation; the app reports it only inside its own entity
    b, found = await run(make_client, cfg, clock, rotate, NESTED_FLOW, nested=True)
    if not rotate:
        assert b.idfv in found["old/new"], L.report(found)
        assert stored_after(cfg.db, b, b.idfv)
        return
    assert found == {}, L.report(found)
    assert stored_after(cfg.db, b, b.idfv) == {}
    [last] = rows(
        cfg.db, "select domain_userid, contexts from events where event_id = ?", (b.sent["new"][-1],)
    )
    # only the device's id went: the tracker's new ids and the app's entity stay
    assert last["domain_userid"] == b.duid and "battery" in last["contexts"]
    # kept before the rotation
    [first] = rows(cfg.db, "select contexts from events where event_id = ?", (b.sent["old"][0],))
    assert b.idfv in first["contexts"]


async def test_a_nested_device_entity_stays_out_of_a_named_bad_row(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # a bad row keeps no tracker field (EntityRule.tracker) of an entity, wherever the entity sits
    b = App(await make_client(cfg), clock, ("alice", "bob"), vid=23, nested=True)
    await b.send({**b.event("pv", "/refused"), "p": "BAD"}, b.event("pv", "/"))
    [br] = rows(cfg.db, "select payload from bad_rows")
    assert "battery" in br["payload"] and "refused" in br["payload"]  # the refused shape is kept
    assert b.idfv not in br["payload"]
    [row] = rows(cfg.db, "select contexts from events")
    assert b.idfv in row["contexts"]  # where it is kept


# --- ids used long before the rotation ------------------------------------------------------------


def browsing(views: int) -> L.Step:
    """`views` page views, ten a request, each with a new page view id."""

    async def step(b: Any) -> None:
        for i in range(0, views, 10):
            await b.send(*[b.page_view(f"/p{j}") for j in range(i, min(i + 10, views))])

    return step


def landed(views: int) -> list[L.Step]:
    """A visit that lands through a cross-domain link, then browses `views` pages of a single-page app
    (the link only on the landing page), rotates, and opens the landing URL again in a new tab (from
    the history: the tab's id is new, and the link is the one id the event keeps from before)."""

    async def land(b: Any) -> None:
        b.phase, b.uid = "old", b.users[0]
        landing = b.page_view("/")
        landing["url"] = f"{L.SHOP}/?_sp={b.link}.1799999999000"
        b.marks["landing"] = landing["url"]
        await b.send(landing)

    async def back(b: Any) -> None:
        b.phase, b.uid, b.tab = "new", b.users[1], new_id()
        ev = b.page_view("/")
        ev["url"] = b.marks["landing"]
        await b.send(ev)

    return [land, browsing(views), D.clear_after_anonymize, back, L.a_other_user_browses]


@pytest.mark.parametrize("rotate", [True, False])
async def test_a_link_landed_many_pages_before_the_rotation_leaves_no_link(
    make_client: Any, cfg: Config, clock: Clock, rotate: bool
) -> None:
    b, found = await run(make_client, cfg, clock, rotate, landed(40), pages=True)
    if not rotate:
        assert b.link in found["old/new"], L.report(found)
        return
    assert found == {}, L.report(found)
    assert stored_after(cfg.db, b, b.link) == {}


def tabs(views: int) -> list[L.Step]:
    """Two tabs: the first sends one page view and idles while the second browses `views` pages; a
    rotation; then the first tab sends again, with the tab id it kept (a tab's id lasts as the tab)."""

    async def first_tab(b: Any) -> None:
        b.phase, b.uid = "old", b.users[0]
        b.marks["first tab"] = b.tab
        await b.send(b.page_view("/"))
        b.tab = new_id()

    async def first_tab_again(b: Any) -> None:
        b.phase, b.uid = "new", b.users[1]
        b.tab = b.marks["first tab"]
        await b.send(b.page_view("/"))

    return [first_tab, browsing(views), D.clear_after_anonymize, first_tab_again, L.a_other_user_browses]


def many_links(links: int) -> L.Step:
    """A page view whose URL carries `links` cross-domain links (a crafted link someone was sent)."""

    async def step(b: Any) -> None:
        ev = b.page_view("/promo")
        ev["url"] = f"{L.SHOP}/promo?" + "&".join(f"_sp={new_id()}.1799999999000" for _ in range(links))
        await b.send(ev)

    return step


@pytest.mark.parametrize("between", ["views", "links"])
@pytest.mark.parametrize("rotate", [True, False])
async def test_an_idle_tabs_id_leaves_no_link(
    make_client: Any, cfg: Config, clock: Clock, rotate: bool, between: str
) -> None:
    # while the first tab idles, the second browses 40 pages, or lands on a URL with as many links as
    # the device keeps lasting ids: links are kept apart (LINK_IDS_KEPT), so neither pushes its id out
    flow = tabs(40)
    if between == "links":
        flow[1] = many_links(identifiers.LASTING_IDS_KEPT)
    b, found = await run(make_client, cfg, clock, rotate, flow, pages=True)
    tab = b.marks["first tab"]
    assert tab
    if not rotate:
        assert tab in found["old/new"], L.report(found)
        return
    assert found == {}, L.report(found)
    assert stored_after(cfg.db, b, tab) == {}


# --- what a tracker keeps across clearUserData(): not evidence of the old identity -------------------


async def bob_back_in_the_first_tab(make_client: Any, cfg: Config, clock: Clock) -> tuple[App, str]:
    """alice in a tab, her logout (clearUserData), bob's login in that tab, a second tab of his, then
    the first tab again: the browser and that first tab's id."""
    b = App(await make_client(cfg), clock, ("alice", "bob"), vid=23, pages=True)
    first_tab = b.tab
    b.phase, b.uid = "old", "alice"
    await b.send(b.page_view("/"))
    clock.t += 5
    await D.clear_after_anonymize(b)
    clock.t += 5
    b.phase, b.uid = "new", "bob"
    await b.send(b.page_view("/welcome"))  # bob logs in in the same tab
    clock.t += 5
    b.tab = new_id()
    await b.send(b.page_view("/offers"))  # a second tab
    clock.t += 5
    b.tab = first_tab
    return b, first_tab


async def test_a_tab_open_across_the_logout_keeps_the_new_users_device(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # clearUserData() keeps the tab's id (sessionStorage): the tab open before the logout sends its
    # retired id for as long as it lives. Once bob's second tab had stored anything, that first tab's
    # events (his own, after his login) were kept without a device, as if the old identity's.
    b, first_tab = await bob_back_in_the_first_tab(make_client, cfg, clock)
    await b.send(b.page_view("/product"), b.page_view("/basket"))
    await b.send(b.event("se", "/basket", se_ca="shop", se_ac="add-to-basket"))
    marks = ",".join("?" * len(b.sent["new"]))
    got = dict(
        rows(
            cfg.db, f"select event_id, network_userid from events where event_id in ({marks})", b.sent["new"]
        )
    )
    assert len(got) == len(b.sent["new"]) and None not in got.values(), got
    assert len(set(got.values())) == 1
    # the control: the tab id was retired, and stays out of every row after the rotation
    assert first_tab in {r[0] for r in rows(cfg.db, "select value from retired_ids")}
    assert stored_after(cfg.db, b, first_tab) == {}


async def test_a_logout_in_a_tab_open_across_the_last_one_rotates_the_device(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # As above, then bob logs out in that first tab and carol logs in: his anonymize event, kept
    # without a device, rotated nothing, and carol's events joined bob's device.
    b, _ = await bob_back_in_the_first_tab(make_client, cfg, clock)
    await b.send(b.page_view("/product"))
    clock.t += 5
    await D.clear_after_anonymize(b)  # bob logs out in the first tab
    clock.t += 5
    b.phase, b.uid = "carol", "carol"
    b.tab = new_id()
    await b.send(b.page_view("/"))
    assert b.marks["cookie after anonymize"] != b.marks["cookie before anonymize"]
    by_device: dict[str, set[str]] = {}
    for r in rows(cfg.db, "select network_userid, user_id from events where network_userid is not null"):
        by_device.setdefault(r[0], set()).add(r[1])
    assert sorted(sorted(u - {None}) for u in by_device.values()) == [["alice"], ["bob"], ["carol"]], (
        by_device
    )


async def test_the_new_users_first_screen_view_sent_late_keeps_his_device(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # A mobile emitter sends in parallel and retries a failed batch later: the new user's first screen
    # view (its previousId the last screen before the logout) came after his second, and was kept
    # without a device.
    b = App(await make_client(cfg), clock, ("alice", "bob"), vid=23, screens=True)
    b.phase, b.uid = "old", "alice"
    await b.send(b.view("Home"))
    await b.send(b.view("Basket"))
    last = b.screen
    clock.t += 5
    await D.clear_after_anonymize(b)
    clock.t += 5
    b.phase, b.uid = "new", "bob"
    first = b.view("Login")
    clock.t += 1
    second = b.view("Home")
    await b.send(second)
    await b.send(first)
    got = {r[0]: r[1] for r in rows(cfg.db, "select event_id, network_userid from events")}
    assert got[second["eid"]] is not None and got[first["eid"]] == got[second["eid"]], got
    assert last is not None and stored_after(cfg.db, b, last) == {}  # its previousId still went


async def test_a_late_logout_kept_apart_still_rotates_the_device(
    make_client: Any, cfg: Config, clock: Clock
) -> None:
    # An anonymize event made before the rotation and sent after it (a second tab's queued logout) is
    # the old identity's, kept without a device: it still rotates the device it came with.
    b = App(await make_client(cfg), clock, ("alice", "bob"), vid=23)
    b.phase, b.uid = "old", "alice"
    await b.send(b.event("pv", "/"))
    clock.t += 5
    queued_logout = b.event("ue", "/account", ue_pr=L.ANON_UE)  # made as alice, not sent yet
    await D.clear_after_anonymize(b)
    clock.t += 5
    b.phase, b.uid = "new", "bob"
    await b.send(b.event("pv", "/welcome"))
    bobs = b.device
    clock.t += 5
    await b.send(queued_logout)
    assert b.device not in (None, bobs)  # rotated again
    [late] = rows(cfg.db, "select network_userid from events where event_id = ?", (queued_logout["eid"],))
    assert late[0] is None
    assert rows(cfg.db, "select closed from device_state where device_id = ?", (bobs,))[0][0] == 1
