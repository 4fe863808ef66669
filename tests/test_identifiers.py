"""The room that decides what identifies a person or device: entity rules, tracker ids, forgetting."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import identifiers
from collector.errors import BadInput
from collector.events import base_row, build_row
from collector.identifiers import TrackerIds
from storage.base import COL, COLUMNS

CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"


def contexts(*entities: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"schema": CONTEXTS, "data": [{"schema": s, "data": d} for s, d in entities]}


def test_scrub_contexts_removes_identifying_fields_and_whole_entities() -> None:
    doc = contexts(
        (SESSION, {"userId": "u-1", "sessionId": "s-1", "previousSessionId": "s-0", "sessionIndex": 3}),
        ("iglu:com.snowplowanalytics.snowplow/geolocation_context/jsonschema/1-1-0", {"latitude": 51.5}),
        (
            "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3",
            {"osType": "ios", "appleIdfa": "a", "appleIdfv": "v", "appSetId": "s", "appSetIdScope": "app"},
        ),
        ("iglu:com.google.analytics/cookies/jsonschema/1-0-0", {"_ga": "GA1.1.x"}),
        ("iglu:com.google.ga4/cookies/jsonschema/1-0-0", {"_ga": "GA1.1.y"}),
        ("iglu:com.acme/profile/jsonschema/1-0-0", {"user_id": "u", "Email": "e", "plan": "pro"}),
    )
    out = identifiers.scrub_contexts(doc)
    assert out["data"] == [
        {"schema": SESSION, "data": {"sessionId": "s-1", "sessionIndex": 3}},
        {
            "schema": "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3",
            "data": {"osType": "ios"},
        },
        {"schema": "iglu:com.acme/profile/jsonschema/1-0-0", "data": {"plan": "pro"}},
    ]
    assert doc["data"][0]["data"]["userId"] == "u-1"  # the input is not modified


def test_anonymous_params_scrub_every_encoding_and_drop_what_cannot_be_read() -> None:
    co = contexts((SESSION, {"userId": "u-1", "sessionId": "s-1"}))
    cx = base64.urlsafe_b64encode(orjson.dumps(co)).rstrip(b"=").decode()
    drop = frozenset({"uid", "ip"})
    out = identifiers.anonymous_params({"e": "pv", "uid": "x", "ip": "1.2.3.4", "cx": cx}, drop, strict=True)
    assert set(out) == {"e", "co"} and "u-1" not in out["co"] and "s-1" in out["co"]
    with pytest.raises(BadInput):
        identifiers.anonymous_params({"e": "pv", "co": "{not json u-1"}, drop, strict=True)
    assert identifiers.anonymous_params({"e": "pv", "co": "{not json u-1"}, drop, strict=False) == {"e": "pv"}
    nested = '{"schema":"s","data":[{"schema":"iglu:a/b/jsonschema/1-0-0","data":{"d":' + "[" * 300
    nested += "]" * 300 + "}}]}"
    with pytest.raises(BadInput):
        identifiers.anonymous_params({"e": "pv", "co": nested}, drop, strict=True)
    assert identifiers.anonymous_params({"e": "pv", "co": nested}, drop, strict=False) == {"e": "pv"}


def test_tracker_ids_come_from_columns_and_the_session_entity() -> None:
    co = contexts(
        (SESSION, {"userId": "d-1", "sessionId": "s-1", "previousSessionId": "s-0", "firstEventId": "e"}),
        ("iglu:com.acme/x/jsonschema/1-0-0", {"userId": "not-a-tracker-id"}),
    )
    # each value once; the session's brief, the device's lasting
    assert identifiers.tracker_ids("d-1", "s-1", co) == TrackerIds(("d-1",), ("s-1", "s-0"))
    assert identifiers.tracker_ids(None, None, None) == TrackerIds()
    long = contexts((SESSION, {"userId": "x" * 200, "sessionId": 5}))
    assert (
        identifiers.tracker_ids(None, None, long) == TrackerIds()
    )  # over the cap or not a string: no lookup


def test_forget_drops_the_trackers_identity_only() -> None:
    row: list[Any] = [None] * len(COLUMNS)
    row[COL["domain_userid"]], row[COL["domain_sessionid"]], row[COL["domain_sessionidx"]] = "d", "s", 7
    row[COL["user_id"]] = "bob"
    row[COL["contexts"]] = orjson.dumps(
        contexts(
            (SESSION, {"userId": "d", "sessionId": "s"}), ("iglu:com.acme/page/jsonschema/1-0-0", {"k": 1})
        )
    ).decode()
    identifiers.forget_tracker(row)
    assert (row[COL["domain_userid"]], row[COL["domain_sessionid"]], row[COL["domain_sessionidx"]]) == (
        None,
        None,
        None,
    )
    assert row[COL["user_id"]] == "bob"
    assert [e["schema"] for e in orjson.loads(row[COL["contexts"]])["data"]] == [
        "iglu:com.acme/page/jsonschema/1-0-0"
    ]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(alphabet="_sp=?&#%5F3Dx.1d", max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
SCHEMAS = st.sampled_from(
    [f"iglu:{key}/jsonschema/1-0-0" for key in identifiers.ENTITY_RULES]
    + ["iglu:com.acme/x/jsonschema/1-0-0", 5]
)


@settings(max_examples=300, deadline=None)
@given(
    entities=st.lists(st.fixed_dictionaries({"schema": SCHEMAS, "data": JSON}), max_size=4),
    other=st.dictionaries(st.sampled_from(["vid", "mac", "ad_uid", "x"]), JSON, max_size=3),
    ue=JSON,
    url=st.text(alphabet="_sp=?&#%5F3Dx.1d/", max_size=20),
    retired=st.sets(st.text(alphabet="d1x", max_size=3), max_size=3),
)
def test_forget_never_raises_on_what_a_row_can_hold(
    entities: list[Any], other: dict[str, Any], ue: Any, url: str, retired: set[str]
) -> None:
    # It runs inside the store's transaction: an exception there would fail the whole commit group,
    # and again on every retry. Whatever JSON a named row keeps, it must only ever take things out.
    row: list[Any] = [None] * len(COLUMNS)
    row[COL["contexts"]] = orjson.dumps(
        {"schema": "iglu:x/contexts/jsonschema/1-0-0", "data": entities}
    ).decode()
    row[COL["other_params"]] = orjson.dumps(other).decode() if other else None
    row[COL["unstruct_event"]] = orjson.dumps(
        {"schema": "iglu:x/unstruct_event/jsonschema/1-0-0", "data": ue}
    ).decode()
    row[COL["page_url"]] = row[COL["page_urlquery"]] = url
    docs = orjson.loads(row[COL["contexts"]]), orjson.loads(row[COL["unstruct_event"]])
    ids = identifiers.tracker_ids("d", None, docs[0], ("x",), (), docs[1], nested=True)
    kept = identifiers.forget(row, retired | {"d"}, ids)
    assert set(kept.every) <= set(ids.every)
    for name in ("contexts", "other_params", "unstruct_event"):
        assert row[COL[name]] is None or isinstance(orjson.loads(row[COL[name]]), dict)


def test_every_rule_names_a_vendor_and_schema_name() -> None:
    for key, rule in identifiers.ENTITY_RULES.items():
        vendor, _, name = key.partition("/")
        assert vendor and name and "/" not in name
        assert rule.whole or rule.fields or rule.tracker or rule.forget, key
        # a whole entity (dropped under SP-Anonymous) whose ids are retired is forgotten whole too
        assert not (rule.whole and rule.tracker and not rule.forget), key


def test_a_named_bad_rows_nested_values_lose_the_link() -> None:
    # A refused event's param that is an object or a list (non_string_value) is kept for its shape,
    # and walked like the self-describing fields: the cross-domain link goes at any depth.
    params = {
        "e": "pv",
        "x": {"url": "https://a.test/?_sp=DUID9.1", "n": 1},
        "y": ["https://b.test/?_sp=DUID9.1&k=v"],
    }
    kept = identifiers.without_tracker_ids(params)
    assert "DUID9" not in orjson.dumps(kept).decode()
    assert kept["x"] == {"url": "https://a.test/", "n": 1} and kept["y"] == ["https://b.test/?k=v"]


SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"
GA_COOKIES = "iglu:com.google.analytics/cookies/jsonschema/1-0-0"


@pytest.mark.parametrize(
    "spell",
    [
        lambda s: s,  # the control: as the trackers send it
        lambda s: s + "/",
        lambda s: s.rsplit("/", 1)[0],  # no version
        lambda s: s.replace("snowplow/", "snowplow//").replace("analytics/", "analytics//"),
        lambda s: s.replace("session", "ses\u200bsion").replace("cookies", "coo\u200bkies"),
        lambda s: s.replace("iglu:", "IGLU: "),
    ],
)
def test_an_entity_rule_holds_however_its_schema_is_spelled(spell: Any) -> None:
    data = {"userId": "u", "previousSessionId": "p", "firstEventId": "f", "sessionId": "s"}
    keep, out = identifiers.scrub_data(spell(SESSION), data)
    assert keep and out == {"sessionId": "s"}
    assert identifiers.scrub_data(spell(GA_COOKIES), {"_ga": "GA1.1.1.1"}) == (False, None)


def test_the_protocol_s_own_id_names_are_dropped_inside_any_entity() -> None:
    names = (
        "uid",
        "duid",
        "nuid",
        "tnuid",
        "fp",
        "mac",
        "ip",
        "ad_uid",
        "clientId",
        "customerId",
        "username",
    )
    data = {**{n: f"id-{n}" for n in names}, "sku": "keep", "tip": "keep", "camp": "keep"}
    keep, out = identifiers.scrub_data("iglu:com.acme/custom/jsonschema/1-0-0", data)
    assert keep and out == {"sku": "keep", "tip": "keep", "camp": "keep"}


def test_what_a_form_s_fields_hold_is_dropped_their_names_kept() -> None:
    form = "iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0"
    data = {"formId": "signup", "elements": [{"name": "email", "value": "a@b.test", "nodeName": "INPUT"}]}
    assert identifiers.scrub_data(form, data) == (
        True,
        {"formId": "signup", "elements": [{"name": "email", "nodeName": "INPUT"}]},
    )
    change = "iglu:com.snowplowanalytics.snowplow/change_form/jsonschema/1-0-0"
    keep, out = identifiers.scrub_data(change, {"formId": "f", "elementId": "e", "value": "secret"})
    assert keep and out == {"formId": "f", "elementId": "e"}


# An erasure's reading of a bad row's payload: the id in each of the tracker's encodings, nested.
def _json_string(text: str) -> str:
    return orjson.dumps({"v": text}).decode()


def _escaped_json(text: str) -> str:  # every character as `\uXXXX`, in a document that does not parse
    units = text.encode("utf-16-be")  # past U+FFFF, a surrogate pair, as JSON spells it
    escaped = "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
    return '{"uid":"' + escaped + '","cut'


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _query(text: str) -> str:
    return "https://x.example/p?a=1&who=" + quote(text, safe="") + "#top"


def _form(text: str) -> str:
    return "e=pv&uid=" + quote_plus(text)


ENCODINGS = (_json_string, _escaped_json, _b64, _query, _form)
ids = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=24)


@settings(max_examples=300, deadline=None)
@given(ids, st.lists(st.sampled_from(ENCODINGS), min_size=1, max_size=4))
def test_a_payload_holds_an_id_in_any_nesting_of_the_trackers_encodings(value: str, chain: list[Any]) -> None:
    payload = value
    for encode in chain:
        payload = encode(payload)
    assert identifiers.payload_holds(payload, {value}), (chain, payload)


@pytest.mark.parametrize(
    "payload",
    [
        _json_string("alice-4f1e2"),  # a longer id
        _json_string("ALICE-4F1E"),  # another case
        _json_string("mail alice-4f1e today"),  # text that merely contains it
        _b64(_json_string("alice-4f1e2")),
        _query("alice-4f1e2"),
        _form("alice-4f1ex"),
        _escaped_json("alice-4f1e2"),
        "",
    ],
)
def test_a_payload_does_not_hold_an_id_it_only_contains(payload: str) -> None:
    assert not identifiers.payload_holds(payload, {"alice-4f1e"})
    assert identifiers.payload_holds(payload + _json_string("alice-4f1e"), {"alice-4f1e"})


def test_a_payload_holds_an_id_as_a_json_number_and_nothing_for_no_ids() -> None:
    assert identifiers.payload_holds('{"uid": 42, "e": "pv"}', {"42"})
    assert not identifiers.payload_holds('{"uid": 421}', {"42"})
    assert not identifiers.payload_holds(_json_string("x"), set())


PLAIN_LITERAL = r'"(?:[^"\\]|\\.)*"'  # the JSON string as the reference reads it (quadratic on `\"` runs)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet='"\\a\n{', max_size=16))
def test_the_literals_of_an_unparsed_text_are_the_plain_pattern_s(text: str) -> None:
    import re

    want = []
    for m in re.finditer(PLAIN_LITERAL, text):
        try:
            want.append(orjson.loads(m.group(0)))
        except orjson.JSONDecodeError:
            continue
    assert list(identifiers._literals(text)) == want


def test_an_id_after_a_long_run_of_escaped_quotes_is_found() -> None:
    # `{"\"\"...` (64 KiB) took 14 s with the plain pattern; the literal reading is unchanged
    value = "3f2b8c1e-9a4d-4c2e-8f1a-0b6d7e5c4a31"
    run = '\\"' * 32000
    assert identifiers.payload_holds('{"' + run + '", "uid": "' + value + '"}', [value])
    assert not identifiers.payload_holds('{"' + run, [value])
    assert not identifiers.payload_holds('{"' + run + '", "uid": "someone-else"}', [value])


# What an adversarial review of the reading found it missing (each seen failing before the fix)
DEVICE = "3f2b8c1e-9a4d-4c2e-8f1a-0b6d7e5c4a31"


def test_a_device_id_in_its_signed_cookie_form_is_found() -> None:
    from collector import identity

    signed = identity.sign(DEVICE, b"k" * 32)
    for payload in (
        _json_string(signed),  # a nuid param, whole
        _json_string(f"sp={signed}; _ga=GA1.2.3"),  # a cookie header pasted into a field
        _form(signed),
        _b64(_json_string(f"seen {DEVICE} twice")),  # free text naming the id
    ):
        assert identifiers.payload_holds(payload, {DEVICE}, {DEVICE}), payload
        assert not identifiers.payload_holds(payload, {DEVICE})  # as a user id: a value only
    # a longer hex run or another id that merely contains it is not the device's
    for other in (DEVICE + "0", "a" + DEVICE, DEVICE.replace("-", ""), "order_" + DEVICE, DEVICE + "_1"):
        assert not identifiers.payload_holds(_json_string(f"x {other} y"), {DEVICE}, {DEVICE}), other


def test_a_user_id_shaped_like_a_uuid_is_found_only_as_a_value() -> None:
    nil = "00000000-0000-0000-0000-000000000000"  # an app's placeholder: many people's rows hold it
    assert not identifiers.payload_holds(_json_string(f"https://a/?trace={nil}.1"), {nil})
    assert identifiers.payload_holds(_json_string(nil), {nil})


def test_base64_the_collector_reads_through_line_breaks_is_read_so() -> None:
    from collector import protocol

    doc = orjson.dumps({"schema": CONTEXTS, "data": [{"schema": SESSION, "data": {"userId": "bob-7"}}]})
    flat = base64.b64encode(doc).decode()
    wrapped = "\n".join(flat[i : i + 19] for i in range(0, len(flat), 19))
    assert protocol.decode_json(wrapped, "cx", base64=True)[0] == orjson.loads(doc)  # the collector reads it
    payload = orjson.dumps({"e": "pv", "cx": wrapped}).decode()
    assert identifiers.payload_holds(payload, {"bob-7"})
    assert not identifiers.payload_holds(payload, {"bob-"})


def test_an_id_deep_in_a_document_or_as_its_key_is_found() -> None:
    deep = "[" * 200 + orjson.dumps("bob-7").decode() + "]" * 200
    assert identifiers.payload_holds(deep, {"bob-7"})
    assert identifiers.payload_holds(orjson.dumps({"devices": {DEVICE: 1}}).decode(), {DEVICE})
    assert not identifiers.payload_holds(deep.replace("bob-7", "bob-8"), {"bob-7"})


@pytest.mark.parametrize(
    "url",
    [
        "https://x.example/p?next=/q?uid=bob-7",
        "https://x.example/p?a?uid=bob-7&b=2",
        "https://x.example/p?a=1;uid=bob-7",
        "/p?x=%3Fuid%3Dbob-7",
    ],
)
def test_an_id_in_a_query_after_another_question_mark_is_found(url: str) -> None:
    assert identifiers.payload_holds(_json_string(url), {"bob-7"}), url
    assert not identifiers.payload_holds(_json_string(url.replace("bob-7", "bob-77")), {"bob-7"})


# A named request refused whole keeps its body, without the tracker's ids (raw_without_tracker_ids)
DUID, SID = "5d1f0c2a-7b3e-4e8f-9a6d-2c4b1e0f3a57", "9e8d7c6b-5a49-4382-a716-0f1e2d3c4b5a"
RAW_EVENT = {
    "e": "pv",
    "page": "Shop",
    "duid": DUID,
    "sid": SID,
    "vid": "3",
    "nuid": DUID + ".mac",
    "url": f"https://shop.example/?a=1&_sp={DUID}.1799999999000",
    "cx": _b64(
        orjson.dumps(contexts((SESSION, {"userId": DUID, "sessionId": SID, "sessionIndex": 3}))).decode()
    ),
}
RAW_BODY = orjson.dumps(
    {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": [RAW_EVENT] * 2}
).decode()


def _holds_tracker_ids(text: str) -> bool:
    return identifiers.payload_holds(text, {DUID, SID}) or DUID[:8] in text or SID[:8] in text


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=1, max_value=len(RAW_BODY)))
def test_a_refused_body_cut_anywhere_keeps_no_tracker_id(cut: int) -> None:
    body = RAW_BODY[:cut]
    kept = identifiers.raw_without_tracker_ids(body)
    assert not _holds_tracker_ids(kept), (body, kept)
    assert RAW_BODY.startswith(kept[:10])  # what goes is after the envelope's start


def test_a_refused_body_keeps_its_shape_and_the_check_finds_the_ids_in_it() -> None:
    assert _holds_tracker_ids(RAW_BODY) and _holds_tracker_ids(RAW_BODY[:-40])  # the check can fail
    for body in (RAW_BODY, RAW_BODY[:-40]):  # parses (refused whole: a bad schema), or cut short
        kept = identifiers.raw_without_tracker_ids(body)
        assert not _holds_tracker_ids(kept), kept
        assert '"page":"Shop"' in kept and "https://shop.example/?a=1" in kept and '"e":"pv"' in kept
    parsed = orjson.loads(identifiers.raw_without_tracker_ids(RAW_BODY))["data"][0]
    assert parsed["co"] == orjson.dumps(contexts()).decode()  # the session entity forgotten, co kept
    assert "duid" not in parsed and "sid" not in parsed and parsed["url"] == "https://shop.example/?a=1"


@pytest.mark.parametrize(
    "body",
    [
        '{"data":[{"e":"pv","fp":1234567890,"vid":3, "d\\u0075id" : "'
        + DUID
        + '","page":"x',  # a number, an escape
        '{"data":[{"e":"pv","co":"{\\"data\\":[{\\"schema\\":\\"x\\",\\"data\\":{\\"userId\\":\\"'
        + DUID
        + '\\"}',
        "e=pv&duid=" + DUID + "&url=https%3A%2F%2Fs.example%2F%3F_sp%3D" + SID + ".1&page=x",  # a form
    ],
)
def test_a_refused_body_loses_numbers_escaped_names_undecodable_entities_and_form_pairs(body: str) -> None:
    kept = identifiers.raw_without_tracker_ids(body)
    assert not _holds_tracker_ids(kept) and "1234567890" not in kept, kept
    assert "pv" in kept


def test_a_cut_body_s_base64_entities_stay_base64_without_the_ids() -> None:
    cut = RAW_BODY[: RAW_BODY.rindex('"cx"')]  # the first event whole, its cx with it
    kept = identifiers.raw_without_tracker_ids(cut)
    value = kept.split('"cx":"')[1].split('"')[0]
    assert identifiers._decoded_base64(value) == orjson.dumps(contexts()).decode()
    assert not _holds_tracker_ids(kept)


def test_entity_links_are_the_link_duids_in_any_string_of_the_docs() -> None:
    ue = {"schema": "x", "data": {"schema": "y", "data": {"targetUrl": "https://b.example/?a=1&_sp=d1.17"}}}
    co = contexts(("iglu:com.acme/landing/jsonschema/1-0-0", {"at": ["https://c.example/#/p?_sp=d2.1"]}))
    inner = contexts(
        ("iglu:com.acme/x/jsonschema/1-0-0", {"u": "https://a/?next=https%3A%2F%2Fb%2F%3F_sp%3Dd3.1"})
    )
    assert identifiers.entity_links(co, ue, inner) == ["d2", "d1", "d3"]
    assert (
        identifiers.entity_links(contexts(("iglu:a/b/jsonschema/1-0-0", {"u": "x_sp=d4.1 and ?sp=d5"})), None)
        == []
    )


@pytest.mark.parametrize(
    "text",
    [
        "https://b.example/?a=1&_sp=d1.17",
        "https://b.example/?a=1&%5Fsp=d1.17",  # the name percent-encoded
        "https://b.example/#/p?_S%50=d1.17",  # in a hash route, any case
        "https://b.example/?_s\tp=d1.17",  # a tab URL parsers drop
        "https://b.example/?a=1&_sp%3Dd1.17",  # the `=` encoded
        "https://a.example/go?next=" + quote(quote("https://b.example/?_sp=d1.17", safe=""), safe=""),
        "https://a.example/x%3F_sp%3Dd1.17",  # a whole URL encoded into the path
    ],
)
def test_link_duids_finds_every_spelling_without_link_cuts(text: str) -> None:
    assert identifiers.link_duids(text) == ["d1"]
    assert "d1" not in identifiers.without_link(text) or "/x%3F" in text  # the cut takes what it finds


def test_link_duids_stop_at_the_encodings_they_read() -> None:
    link = "_sp=d1.17"
    for _ in range(identifiers.MAX_ENCODINGS + 1):  # the pair itself is read decoded once
        link = quote(link, safe="")
    assert identifiers.link_duids(f"https://a/?next={link}") == ["d1"]
    # one more is not read (each level costs a pass over the value; known-open in the README)
    assert identifiers.link_duids(f"https://a/?next={quote(link, safe='')}") == []
    assert identifiers.link_duids("https://b.example/?x_sp=d1.17&sp=d2&_sp") == []


def test_json_may_link_sees_what_orjson_reads_as_a_link() -> None:
    for text in ('{"u":"?\\u005f\\u0073\\u0070=d1.1"}', '{"u":"?_S\\u0050=d1.1"}', '{"u":"?_s\\tp=d1.1"}'):
        assert identifiers.json_may_link(text) and not identifiers.may_link(text)
        assert identifiers.entity_links(orjson.loads(text)) == ["d1"]
    assert not identifiers.json_may_link(orjson.dumps({"u": "https://a/?q=caf%C3%A9", "p": "x"}).decode())


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="_sSpP=%5fF7d3D0a9AcC\t\n\rx/?&", max_size=24))
def test_may_link_is_its_scan_after_the_tests_it_implies(text: str) -> None:
    assert bool(identifiers.may_link(text)) == bool(identifiers._MAY_LINK(text))


# What an adversarial review of raw_without_tracker_ids found it keeping (each seen failing first)
CX = RAW_EVENT["cx"]


@pytest.mark.parametrize(
    "body",
    [
        "\ufeff" + RAW_BODY,  # a byte-order mark (.NET's UTF-8 writers): orjson refuses it
        "\ufffd" + RAW_BODY,  # a first byte that is not UTF-8
        orjson.dumps(RAW_BODY).decode(),  # the body encoded twice
        f"e=pv&duid={DUID}&cx={CX}",  # a form keeps its entities
        "e=pv&co=" + quote_plus(orjson.dumps(contexts((SESSION, {"userId": DUID}))).decode()),
        f"e=pv;duid={DUID};page=x",
        '{"schema":"x","data":"[{\\"duid\\":\\"' + DUID + '\\"}]"}',  # JSON in a string
        '{"schema":"x","data":["{\\"duid\\":\\"' + DUID + '\\"}"],"e":"pv"}',
        '{"data":[{"e":"pv","duid":["a","' + DUID + '"]',  # cut, an id in an array
        '{"data":[{"e":"pv","duid":{"v":"' + DUID + '"}},{"sid":"x"',
        '{"data":[{"e":"pv","co":{"data":[{"schema":"s","data":{"userId":"' + DUID + '"}}]},"page":"x',
    ],
)
def test_a_refused_body_of_any_shape_keeps_no_tracker_id(body: str) -> None:
    assert _holds_tracker_ids(body) or DUID in body
    kept = identifiers.raw_without_tracker_ids(body)
    assert not _holds_tracker_ids(kept) and DUID not in kept, kept
    assert "pv" in kept or '"x"' in kept


def test_a_form_body_keeps_its_entities_scrubbed() -> None:
    kept = identifiers.raw_without_tracker_ids(f"e=pv&duid={DUID}&cx={CX}&page=Shop")
    pairs = dict(p.split("=", 1) for p in kept.split("&"))
    assert pairs["e"] == "pv" and pairs["page"] == "Shop" and "duid" not in pairs
    assert identifiers._decoded_base64(pairs["cx"]) == orjson.dumps(contexts()).decode()


COPIED = "5f1c2d3e-0000-4aaa-8bbb-123456789abc"  # a tracker id its app repeats elsewhere


def test_cuttable_keeps_only_ids_long_enough_to_cut_from_text() -> None:
    assert identifiers.cuttable([COPIED, "23", "1234567", None, 12345678, COPIED]) == (COPIED,)
    assert identifiers.cuttable(["12345678"]) == ("12345678",)


def test_without_values_cuts_every_copy_keys_and_numbers_too() -> None:
    doc = {
        "ref": f"v:{COPIED}",
        COPIED: [COPIED, {"n": 12345678, "k": 12345678.0}],
        "keep": "gold",
        "b": True,
    }
    out = identifiers.without_values(doc, (COPIED, "12345678"))
    assert out == {"ref": "v:", "": ["", {"n": None, "k": 12345678.0}], "keep": "gold", "b": True}
    # a cut that joins two halves into another copy takes that too
    assert identifiers.without_values(f"x{COPIED[:5]}{COPIED}{COPIED[5:]}y", (COPIED,)) == "xy"
    assert identifiers.without_values(doc, ()) == doc


def test_cut_everywhere_takes_copies_from_text_and_json_columns_but_not_the_rows_keys() -> None:
    row: list[Any] = [None] * len(COLUMNS)
    row[COL["event_id"]] = row[COL["network_userid"]] = COPIED  # a hostile tracker's choice: keys stay
    row[COL["page_url"]] = f"https://shop.test/?visitor={COPIED}"
    row[COL["page_title"]] = COPIED
    escaped = "".join(f"\\u{ord(c):04x}" for c in COPIED)
    row[COL["contexts"]] = (
        '{"schema":"c","data":[{"schema":"v","data":{"ref":"' + escaped + '","plan":"gold"}}]}'
    )
    row[COL["unstruct_event"]] = orjson.dumps({"data": {"data": {"to": f"/u/{COPIED}"}}}).decode()
    assert COPIED not in row[COL["contexts"]]  # only as escapes: a substring test alone would miss it
    identifiers.cut_everywhere(row, (COPIED,))
    assert row[COL["event_id"]] == row[COL["network_userid"]] == COPIED
    assert row[COL["page_url"]] == "https://shop.test/?visitor=" and row[COL["page_title"]] is None
    assert orjson.loads(row[COL["contexts"]])["data"][0]["data"] == {"ref": "", "plan": "gold"}
    assert orjson.loads(row[COL["unstruct_event"]]) == {"data": {"data": {"to": "/u/"}}}


def test_forget_cuts_the_rows_tracker_ids_from_everything_it_keeps() -> None:
    row: list[Any] = [None] * len(COLUMNS)
    row[COL["domain_userid"]] = COPIED
    row[COL["contexts"]] = orjson.dumps(
        contexts(("iglu:com.acme/v/jsonschema/1-0-0", {"ref": COPIED}))
    ).decode()
    assert identifiers.forget(row, {COPIED}, TrackerIds((COPIED,))) == TrackerIds()
    assert row[COL["domain_userid"]] is None and COPIED not in row[COL["contexts"]]
    assert orjson.loads(row[COL["contexts"]])["data"][0]["data"] == {"ref": ""}


def test_a_refused_events_tracker_ids_go_from_its_other_params_and_entities() -> None:
    co = contexts(("iglu:com.acme/v/jsonschema/1-0-0", {"ref": COPIED, "plan": "gold"}))
    params = {"duid": COPIED, "tv": f"js {COPIED}", "co": orjson.dumps(co).decode(), "p": "BAD", "vid": "2"}
    out = identifiers.without_tracker_ids(params)
    assert COPIED not in orjson.dumps(out).decode() and out["tv"] == "js " and out["p"] == "BAD"
    assert orjson.loads(out["co"])["data"][0]["data"] == {"ref": "", "plan": "gold"}
    # a short one (`vid`) goes by name only
    assert identifiers.without_tracker_ids({"vid": "2", "page": "Page 2"})["page"] == "Page 2"


@pytest.mark.parametrize("cut", [False, True])
def test_a_refused_bodys_tracker_ids_go_from_its_other_strings(cut: bool) -> None:
    event = {
        "duid": COPIED,
        "tv": f"js {COPIED}",
        "co": orjson.dumps(contexts(("v", {"ref": COPIED}))).decode(),
    }
    body = orjson.dumps({"schema": "s", "data": [event, event]}).decode()
    if cut:
        body = body[:-3]
    out = identifiers.raw_without_tracker_ids(body)
    assert COPIED in body and COPIED not in out and '"tv":"js ' in out and "ref" in out


@pytest.mark.parametrize(
    "schema",
    [
        "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
        "iglu:com.acme-co.app_x/my_thing/jsonschema/10-2-33",
    ],
)
def test_an_iglu_uri_is_kept_as_the_schema(schema: str) -> None:
    assert identifiers.kept_schema(schema) == schema
    scrubbed = identifiers.scrub_contexts({"schema": schema, "data": [{"schema": schema, "data": {}}]})
    assert scrubbed == {"schema": schema, "data": [{"schema": schema, "data": {}}]}


@pytest.mark.parametrize(
    "schema",
    [
        {"userId": "u1"},
        ["iglu:com.acme/x/jsonschema/1-0-0"],
        "iglu:com.acme/x/jsonschema/1-0-0?_sp=abc.1",
        "iglu:com.acme/alice@mail.test/jsonschema/1-0-0",
        "iglu:com.acme/x/jsonschema/1-0-0\nx",
        "urn:x:u1",
        "iglu:com.acme/x/jsonschema",
    ],
)
def test_a_schema_that_is_not_an_iglu_uri_goes(schema: Any) -> None:
    assert identifiers.kept_schema(schema) is None
    scrubbed = identifiers.scrub_unstruct({"schema": schema, "data": {"schema": schema, "data": {}}})
    assert scrubbed == {"schema": None, "data": {"schema": None, "data": {}}}


SCREEN_VIEW = "iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0"


def test_tracker_ids_take_the_self_describing_events_own() -> None:
    ue: dict[str, Any] = {
        "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {"schema": SCREEN_VIEW, "data": {"name": "Home", "id": "view-2", "previousId": "view-1"}},
    }
    assert identifiers.tracker_ids("d", None, None, event=ue) == TrackerIds(("d",), ("view-2", "view-1"))
    other = {**ue, "data": {**ue["data"], "schema": "iglu:com.acme/screen_view/jsonschema/1-0-0"}}
    assert identifiers.tracker_ids("d", None, None, event=other) == TrackerIds(("d",))  # not the rule's


def test_tracker_ids_read_nested_entities_when_the_text_may_nest_one() -> None:
    inner = {"schema": SESSION, "data": {"userId": "d-1", "sessionId": "s-1"}}
    nested = contexts(("iglu:com.acme/report/jsonschema/1-0-0", {"items": [{"ctx": inner}]}))
    flat = contexts((SESSION, {"userId": "d-1", "sessionId": "s-1"}))
    nested_text, flat_text = orjson.dumps(nested).decode(), orjson.dumps(flat).decode()
    assert identifiers.may_nest(nested_text, nested, contexts=True)
    assert not identifiers.may_nest(flat_text, flat, contexts=True)  # the common case: no walk
    # apart from the top level's: remembered where there is room (storage.sessions.remember)
    assert identifiers.tracker_ids(None, None, nested, nested=True) == TrackerIds(
        (), (), (), ("d-1",), ("s-1",)
    )
    assert identifiers.tracker_ids(None, None, flat) == TrackerIds(("d-1",), ("s-1",))
    # the top level alone does not see it: what may_nest is for
    assert identifiers.tracker_ids(None, None, nested) == TrackerIds()


def test_forget_takes_nested_entities_and_the_events_tracker_fields() -> None:
    row: list[Any] = [None] * len(COLUMNS)
    inner = {"schema": SESSION, "data": {"userId": "d-1", "sessionId": "s-1"}}
    row[COL["contexts"]] = orjson.dumps(
        contexts(("iglu:com.acme/report/jsonschema/1-0-0", {"kept": 1, "ctx": inner}))
    ).decode()
    ue: dict[str, Any] = {"schema": "iglu:x/unstruct_event/jsonschema/1-0-0", "data": {"schema": SCREEN_VIEW}}
    ue["data"]["data"] = {"name": "Home", "id": "v-2", "previousId": "v-1", "inner": inner}
    row[COL["unstruct_event"]] = orjson.dumps(ue).decode()
    before = (row[COL["contexts"]], row[COL["unstruct_event"]])
    assert "d-1" in before[0] and "v-1" in before[1]  # the check can fail
    identifiers.forget(row, {"v-1"}, TrackerIds((), ("v-2", "v-1")))
    [report] = orjson.loads(row[COL["contexts"]])["data"]
    assert report["data"] == {"kept": 1}  # the session entity went, from inside the app's entity
    view = orjson.loads(row[COL["unstruct_event"]])["data"]
    assert view["schema"] == SCREEN_VIEW and view["data"] == {"name": "Home"}  # still a screen view


def test_forget_never_changes_the_dedupe_key() -> None:
    # The group takes an event's dedupe key (dvce_created_tstamp, event_id) after forget: a retired id
    # that a client copied into them must not change the key, or the stored row would not be the one
    # the look-up checked (and two rows could meet on the unique index inside the commit).
    row: list[Any] = [None] * len(COLUMNS)
    row[COL["event_id"]] = row[COL["domain_userid"]] = COPIED
    row[COL["dvce_created_tstamp"]] = "2026-12-07 05:00:00.000"
    row[COL["page_title"]] = f"see {COPIED}"
    identifiers.forget(
        row, {COPIED, "2026-12-07 05:00:00.000"}, TrackerIds((COPIED, "2026-12-07 05:00:00.000"))
    )
    assert row[COL["page_title"]] == "see "  # the cut ran: the check can fail
    assert (row[COL["dvce_created_tstamp"]], row[COL["event_id"]]) == ("2026-12-07 05:00:00.000", COPIED)


def test_may_nest_counts_the_top_levels_schema_keys_as_they_are() -> None:
    # an envelope or entity without a `schema` must not make room for a nested one to hide in
    inner = {"schema": SESSION, "data": {"sessionId": "s-1"}}
    for doc in (
        {"data": [{"schema": "iglu:com.acme/w/jsonschema/1-0-0", "data": {"s": inner}}]},
        {"schema": CONTEXTS, "data": [{"data": {"s": inner}}]},
    ):
        assert identifiers.may_nest(orjson.dumps(doc).decode(), doc, contexts=True), doc
    flat: dict[str, Any] = {"data": [{"data": {}}, inner]}
    assert not identifiers.may_nest(orjson.dumps(flat).decode(), flat, contexts=True)
    event: dict[str, Any] = {"data": {"data": {"s": inner}}}
    assert identifiers.may_nest(orjson.dumps(event).decode(), event, contexts=False)


def test_forget_never_leaves_out_a_ruled_envelope() -> None:
    # a contexts envelope whose schema names a `forget` entity is still the row's contexts
    row: list[Any] = [None] * len(COLUMNS)
    row[COL["domain_userid"]] = COPIED
    web_page = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0"
    entity = {"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": {"kept": 1}}
    row[COL["contexts"]] = orjson.dumps({"schema": web_page, "data": [entity]}).decode()
    row[COL["unstruct_event"]] = orjson.dumps(
        {"schema": web_page, "data": {"schema": web_page, "data": {}}}
    ).decode()
    identifiers.forget(row, {COPIED}, TrackerIds((COPIED,)))
    assert orjson.loads(row[COL["contexts"]])["data"] == [entity]
    assert orjson.loads(row[COL["unstruct_event"]])["data"]["schema"] == web_page


ENVELOPED = {  # a self-describing event whose envelope, not its inner event, names the screen view
    "schema": SCREEN_VIEW,
    "data": {
        "schema": "iglu:com.acme/x/jsonschema/1-0-0",
        "data": {},
        "id": "old-scr",
        "previousId": "old-prev",
    },
}


def _event_row(params: dict[str, str]) -> tuple[list[Any], TrackerIds]:
    row, _, ids = build_row(
        {"e": "ue", "p": "web", "tv": "js", "eid": "e1", **params},
        base_row("2026-12-07 10:00:00.000", None, None, False),
        (),
    )
    return row, ids


def _ruled_strings(*docs: Any) -> set[str]:
    """What every reader of rules (device_ids, the scrubs, forget) takes for the tracker's fields."""
    return {
        v.replace("\x00", "\ufffd")
        for doc in docs
        for rule, data in identifiers._ruled(doc)
        for f in rule.tracker
        if isinstance(v := data.get(f), str) and v and len(v) <= identifiers.TRACKER_ID_MAX
    }


def test_tracker_ids_read_a_ruled_envelope_of_the_event_as_forget_takes_it() -> None:
    row, ids = _event_row({"ue_pr": orjson.dumps(ENVELOPED).decode()})
    assert {"old-scr", "old-prev"} <= set(ids.every)  # checked against retired ids, and retired
    assert "old-prev" in row[COL["unstruct_event"]]  # the control: the row holds it
    identifiers.forget(row, {"old-prev"}, ids)
    assert "old-scr" not in row[COL["unstruct_event"]] and "old-prev" not in row[COL["unstruct_event"]]


RULED = st.sampled_from(
    [f"iglu:{key}/jsonschema/1-0-0" for key, rule in identifiers.ENTITY_RULES.items() if rule.tracker]
)
FIELD_NAMES = sorted({f for rule in identifiers.ENTITY_RULES.values() for f in rule.tracker})
ID_VALUES = st.text(alphabet="ab-\x00", min_size=1, max_size=10)
ENTITY = st.recursive(
    st.fixed_dictionaries(
        {"schema": RULED | SCHEMAS},
        optional={"data": st.dictionaries(st.sampled_from(FIELD_NAMES), ID_VALUES, max_size=3)},
    ),
    lambda inner: (
        st.fixed_dictionaries(
            {
                "schema": RULED | SCHEMAS,
                "data": st.dictionaries(
                    st.sampled_from([*FIELD_NAMES, "x", "data"]), inner | ID_VALUES, max_size=3
                ),
            }
        )
        | st.lists(inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    envelope=st.fixed_dictionaries(
        {}, optional={"schema": RULED | st.just(CONTEXTS), "id": ID_VALUES, "userId": ID_VALUES}
    ),
    entities=st.lists(ENTITY, max_size=3),
    event=st.builds(
        lambda entity, fields: {**fields, **entity} if isinstance(entity, dict) else entity,
        ENTITY,
        st.dictionaries(st.sampled_from(FIELD_NAMES), ID_VALUES, max_size=4),
    ),
)
def test_tracker_ids_see_every_field_a_rule_names_wherever_it_sits(
    envelope: dict[str, Any], entities: list[Any], event: Any
) -> None:
    # tracker_ids (read on the hot path, top level unless may_nest) must see what the walks see: an id
    # one reads and the other does not is neither checked against retired ids nor retired
    co, ue = {**envelope, "data": entities}, {**envelope, "data": event}
    try:
        row, ids = _event_row({"co": orjson.dumps(co).decode(), "ue_pr": orjson.dumps(ue).decode()})
    except BadInput:
        return
    assert _ruled_strings(co, ue) <= set(ids.every)
    assert set(ids.every) <= identifiers.row_tracker_ids(row[COL[c]] for c in identifiers.ID_COLUMNS)


def test_a_stored_row_gives_every_tracker_id_its_event_carried() -> None:
    # an erasure reads the stored rows for the ids their rotations retired: each kind, as the row keeps it
    landing = "https://shop.test/?_sp=linked-duid-0001.1700000000000"
    link = "https://other.test/?u=" + "https%3A%2F%2Fx.test%2F%3F_sp%3Dentity-duid-0001.1"
    session = ("iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2", {"userId": "cs-user-1"})
    clicked = ("iglu:com.acme/click/jsonschema/1-0-0", {"target": link})
    params = {
        "duid": "duid-0001",
        "sid": "sid-0001",
        "fp": "fp-0001",
        "mac": "mac-0001",
        "url": landing,
        "refr": "https://ref.test/?_sp=refr-duid-0001.1",
        "co": orjson.dumps(contexts(session, clicked)).decode(),
    }
    row, ids = _event_row(params)
    stored = identifiers.row_tracker_ids(row[COL[c]] for c in identifiers.ID_COLUMNS)
    assert set(ids.every) <= stored
    expected = {"duid-0001", "sid-0001", "fp-0001", "mac-0001", "linked-duid-0001", "refr-duid-0001"}
    assert expected | {"cs-user-1", "entity-duid-0001"} <= stored
    assert identifiers.row_tracker_ids([None] * len(identifiers.ID_COLUMNS)) == set()


def test_only_the_top_levels_ids_count_toward_the_bound() -> None:
    many = [
        (SESSION, {"userId": f"u-{i}", "sessionId": f"s-{i}"}) for i in range(identifiers.TRACKER_IDS_CHECKED)
    ]
    report = ("iglu:com.acme/report/jsonschema/1-0-0", {"all": contexts(*many)})
    ids = identifiers.tracker_ids(None, None, contexts(report), nested=True)  # all nested: not refused
    assert len(ids.every) == 2 * identifiers.TRACKER_IDS_CHECKED and not ids.lasting
    with pytest.raises(BadInput):  # the same at the top level, beside a nested entity, is refused
        identifiers.tracker_ids(None, None, contexts(*many, report), nested=True)


NEEDLE_TEXT = st.text(alphabet="ab0-", max_size=40)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.text(alphabet="ab0-", min_size=identifiers.CUT_MIN, max_size=12), max_size=30), NEEDLE_TEXT
)
def test_many_needles_are_cut_as_a_few_are(needles: list[str], text: str) -> None:
    # more than a few ids are found by their first CUT_MIN characters, so that a row of thousands of
    # nested ids and strings is cut in linear time: what is left holds none of them, as with a few
    many = identifiers.cuttable(needles)
    for haystack in (text, "".join(needles[:3]) + text, text + (needles[0] if needles else "")):
        cut = identifiers._cut(haystack, many)
        assert not any(n in cut for n in many), (haystack, cut)
        if not any(n in haystack for n in many):
            assert cut == haystack


@pytest.mark.parametrize("others", [0, identifiers.FEW_NEEDLES])
def test_an_id_a_cut_forms_is_cut_too_or_its_text_goes(others: int) -> None:
    # Cutting the sid out of `abcd<sid>efgh` forms the duid: it is cut in the next pass, however many
    # ids there are. A text built to form one again after every cut goes whole, after CUT_PASSES.
    duid, sid = "abcdefgh-0000-4000-8000-00000000000a", "12345678-0000-4000-8000-00000000000b"
    needles = identifiers.cuttable([duid, sid, *(f"zzzzzzzz{i}" for i in range(others))])
    assert identifiers._cut(f"see {duid[:4]}{sid}{duid[4:]}!", needles) == "see !"
    formed = "abcd" * 100 + "efgh" * 100
    assert identifiers._cut(formed, identifiers.cuttable(["abcdefgh", *needles])) == ""
    assert identifiers._cut(formed, needles) == formed  # the control: it holds none of these


def test_nested_ids_come_in_the_documents_order() -> None:
    # remember keeps an event's first nested ids (NESTED_FIRST) with its own: "first" is as the app
    # wrote them, so an app state's `current` screen, before its `stack`, is among them
    screen = "iglu:com.snowplowanalytics.mobile/screen/jsonschema/1-0-0"
    stack = [{"schema": screen, "data": {"id": f"stack-{i}"}} for i in range(5)]
    app = {"current": {"schema": screen, "data": {"id": "current"}}, "stack": stack}
    ids = identifiers.tracker_ids(
        None, None, contexts(("iglu:com.acme/app/jsonschema/1-0-0", app)), nested=True
    )
    assert ids.nested_brief == ("current", *(f"stack-{i}" for i in range(5)))
    assert [1] not in identifiers.cuttable(["abcdefgh"])  # an unhashable value is simply not one
