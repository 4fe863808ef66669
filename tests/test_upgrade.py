"""A rolling upgrade: replicas of an older version and of this one on the same store at once.

The older replicas run a real older commit's code (its tree, from this clone's history), in a process
of their own, as tests/upgrade_driver.py; this version's replica is the same driver on this tree.
Each older version predates a split of what a device remembers: 76872d6 keeps one list of ids
(`tracker_ids`), 6adf450 keeps brief ids apart (`brief_ids`, migration 0013). An older replica reads
and retires only the columns it knows, so this version writes every id it remembers to `tracker_ids`
too (sessions.state_row): a rotation on any replica retires what the device used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import rows

STORES = ("sqlite", "postgres")
ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("upgrade_driver.py")
OLDER = {"one list": "76872d6", "brief apart": "6adf450"}
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1"
WEB_PAGE = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0"
ANON_UE = orjson.dumps(
    {
        "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {"schema": "iglu:com.acme/anonymize/jsonschema/1-0-0", "data": {}},
    }
).decode()


@pytest.fixture(scope="session", params=sorted(OLDER))
def older_tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The older commit's tree, from this clone's history (`git archive`)."""
    commit = OLDER[request.param]
    out = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], capture_output=True, timeout=60, check=False
    )
    if out.returncode != 0:
        why = f"no commit {commit} in this clone's history: {out.stderr.decode()[-300:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    tree = tmp_path_factory.mktemp(f"older-{commit}")
    with tarfile.open(fileobj=BytesIO(out.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def replica(tree: Path, db: Any, cookie: str | None, *requests: list[dict[str, str]]) -> str | None:
    """One replica of the version in `tree` answering `requests` in turn; the cookie it leaves."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(DRIVER), str(db), cookie or "", json.dumps(requests)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["statuses"] == [200] * len(requests), got
    return got["cookie"]  # type: ignore[no-any-return]


class Tracker:
    """A browser tracker's ids; page views from its tabs, each with a page view id of its own."""

    def __init__(self) -> None:
        self.duid, self.sid = str(uuid.uuid4()), str(uuid.uuid4())

    def view(self, page: str, url: str = "https://shop.test/") -> dict[str, str]:
        co = orjson.dumps({"schema": CONTEXTS, "data": [{"schema": WEB_PAGE, "data": {"id": page}}]}).decode()
        eid = str(uuid.uuid4())
        return {
            "e": "pv",
            "p": "web",
            "tv": "js-4.1.0",
            "eid": eid,
            "duid": self.duid,
            "sid": self.sid,
            "co": co,
            "url": url,
        }

    def anonymize(self) -> dict[str, str]:
        return {**self.view(str(uuid.uuid4())), "e": "ue", "ue_pr": ANON_UE}


def retired(db: Any) -> set[str]:
    return {r[0] for r in rows(db, "select value from retired_ids")}


@pytest.mark.parametrize("rotating", ["older", "this"])
def test_a_rotation_on_any_replica_retires_what_the_device_used(
    store_db: Any, older_tree: Path, rotating: str
) -> None:
    # This version's replica takes the device's first views: an idle tab's page view id (a brief id), a
    # landing link (a link id); the rotation lands on the replica `rotating`, which retires them all.
    # The control: a view the device sent is found among them where it should be, and a view of
    # another device is not.
    replica(ROOT, store_db, None)  # migrates a new store to this version, as the upgrade would
    tracker, stranger = Tracker(), Tracker()
    idle, link = str(uuid.uuid4()), str(uuid.uuid4())
    other = str(uuid.uuid4())
    replica(ROOT, store_db, None, [stranger.view(other)])
    cookie = replica(
        ROOT,
        store_db,
        None,
        [tracker.view(idle)],
        [tracker.view(str(uuid.uuid4()), f"https://shop.test/?_sp={link}.1799999999000")],
        [tracker.view(str(uuid.uuid4())) for _ in range(3)],
    )
    replica(older_tree if rotating == "older" else ROOT, store_db, cookie, [tracker.anonymize()])
    gone = retired(store_db)
    assert {tracker.duid, tracker.sid, idle, link} <= gone, {tracker.duid, tracker.sid, idle, link} - gone
    assert other not in gone


def test_this_version_reads_what_an_older_replica_wrote(store_db: Any, older_tree: Path) -> None:
    # The older replica takes a device's views after this one did (it writes tracker_ids only, and
    # leaves the newer columns as they were); this version then rotates the device, and retires
    # what either replica remembered.
    replica(ROOT, store_db, None)
    tracker = Tracker()
    first, later = str(uuid.uuid4()), str(uuid.uuid4())
    cookie = replica(ROOT, store_db, None, [tracker.view(first)])
    cookie = replica(older_tree, store_db, cookie, [tracker.view(later)])
    replica(ROOT, store_db, cookie, [tracker.anonymize()])
    assert {first, later} <= retired(store_db)
