"""Signed device ids: pure functions, then forged cookies and params against the real app."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from collector import identity
from collector.config import Config, Secret
from storage.ids import UuidPool
from tests.conftest import TP2, batch, ev, rows

STORES = ("sqlite", "postgres")  # each test that uses cfg runs on both stores

KEY = b"k1"
DEV = "0b9f6a4e-3c1d-4f7e-9a2b-5c6d7e8f9a0b"


def test_sign_and_verify_round_trip() -> None:
    value = identity.sign(DEV, KEY)
    assert identity.verify(value, [KEY]) == DEV
    assert identity.verify(value, [b"other", KEY]) == DEV  # an older secret still verifies


@pytest.mark.parametrize(
    "shape", ["bare", "bad-mac", "other-key", "swapped-id", "truncated", "empty", "padded"]
)
def test_forged_values_do_not_verify(shape: str) -> None:
    good = identity.sign(DEV, KEY)
    other = "11111111-2222-3333-4444-555555555555"
    value = {
        "bare": DEV,
        "bad-mac": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "other-key": identity.sign(DEV, b"attacker"),
        "swapped-id": other + good[36:],
        "truncated": good[:-1],
        "empty": "",
        "padded": good + "=",
    }[shape]
    assert identity.verify(value, [KEY]) is None


def V(value: str) -> str | None:
    return identity.verify(value, [KEY])


def test_signer_caches_agree_with_the_pure_functions() -> None:
    signer = identity.Signer([KEY, b"old"])
    value = identity.sign(DEV, KEY)
    assert signer.sign(DEV) == value == signer.sign(DEV)
    assert signer.verify(value) == DEV == signer.verify(value)
    assert signer.verify(identity.sign(DEV, b"old")) == DEV
    assert signer.verify(DEV) is None and signer.verify(DEV) is None
    assert signer.verify("") is None


def test_resolve_order() -> None:
    param = identity.sign("22222222-2222-2222-2222-222222222222", KEY)
    assert identity.resolve(DEV, param, None, V) == (DEV, False)  # the verified cookie comes first
    assert identity.resolve(None, param, None, V) == ("22222222-2222-2222-2222-222222222222", False)
    assert identity.resolve(None, None, param, V) == ("22222222-2222-2222-2222-222222222222", False)
    assert identity.resolve(None, "y", param, V) == ("22222222-2222-2222-2222-222222222222", True)
    assert identity.resolve(None, "x", "y", V) == (None, True)  # the request's own device is used
    assert identity.resolve(None, None, None, V) == (None, False)


def test_generated_secret_is_kept_beside_the_database_0600(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "events.db"
    keys = identity.load_keys((), db)
    path = db.parent / "events.db.secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert identity.load_keys((), db) == keys  # the same on the next start
    assert identity.load_keys((Secret("configured"),), db) == [b"configured"]


async def test_forged_cookie_gets_a_new_device(client: Any, cfg: Config) -> None:
    victim = identity.sign(DEV, b"test-secret")
    ok = await client.get("/i", params=ev(eid="v"), headers={"Cookie": f"sp={victim}"})
    assert ok.status == 200
    for i, forged in enumerate([DEV, identity.sign(DEV, b"guess"), victim[:-3] + "xyz", "garbage"]):
        resp = await client.get("/i", params=ev(eid=f"f{i}"), headers={"Cookie": f"sp={forged}"})
        assert resp.status == 200
        new = resp.cookies["sp"].value.split(".")[0]
        assert new != DEV
    devices = {r[0]: r[1] for r in rows(cfg.db, "select event_id, network_userid from events")}
    assert devices["v"] == DEV  # a genuine cookie is honoured: the check can find the id
    assert all(devices[f"f{i}"] != DEV for i in range(4))


async def test_nuid_and_tnuid_count_only_with_a_valid_mac(client: Any, cfg: Config) -> None:
    signed = identity.sign(DEV, b"test-secret")
    await client.post(TP2, json=batch(ev(eid="n-ok", nuid=signed), ev(eid="n-ok2")))
    await client.get("/i", params=ev(eid="t-ok", tnuid=signed))
    await client.get("/i", params=ev(eid="n-bad", nuid=DEV))
    await client.get("/i", params=ev(eid="t-bad", tnuid="someone-else"))
    devices = {r[0]: r[1] for r in rows(cfg.db, "select event_id, network_userid from events")}
    assert devices["n-ok"] == devices["t-ok"] == DEV
    assert devices["n-ok2"] != DEV  # each event its own device: n-ok2 brought none
    assert DEV not in (devices["n-bad"], devices["t-bad"])
    assert "someone-else" not in str(rows(cfg.db, "select other_params from events"))


async def test_secret_rotation_keeps_old_cookies(make_client: Any, cfg: Config) -> None:
    old = identity.sign(DEV, b"old-secret")
    client = await make_client(cfg.replace(cookie_secret=(Secret("new-secret"), Secret("old-secret"))))
    resp = await client.get("/i", params=ev(eid="rot"), headers={"Cookie": f"sp={old}"})
    assert resp.cookies["sp"].value == identity.sign(DEV, b"new-secret")  # re-signed with the new one
    assert rows(cfg.db, "select network_userid from events")[0][0] == DEV


def test_random_uuid_is_a_valid_distinct_version_4_uuid() -> None:
    import uuid

    ids = [identity.random_uuid() for _ in range(2000)] + [
        UuidPool()() for _ in range(600)
    ]  # crosses several 4 KiB pool refills
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


def test_an_empty_secret_file_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    (tmp_path / "events.db.secret").write_text("")  # what a crash between create and write left
    keys = identity.load_keys((), db)
    assert keys and keys[0]
    assert identity.load_keys((), db) == keys
    assert not [p for p in tmp_path.iterdir() if p.name not in ("events.db.secret", "events.db.secret.lock")]
