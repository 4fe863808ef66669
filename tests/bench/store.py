"""After the load: does each collector's store hold exactly the events it acknowledged?

Every event id of a round starts with the round's 8-hex-digit runtag, so rows are counted per round.
A round is exact when nothing was in flight at the end and no socket errors happened (the Lua script
stops sending before wrk exits, the open-loop client waits for every answer): then each 2xx answer
means its events are committed and nothing else may be stored; a non-2xx answer means "not stored"
(the tracker retries or drops it), so its events must be absent.

When a round ends with requests still unanswered (the drain was shorter than the slowest answer,
e.g. on a loaded machine) those requests may or may not have been committed after the client left:
the round is then only checked within bounds, acknowledged <= stored <= acknowledged + unanswered,
and reported as inexact (not a failure). Stored rows outside the bounds, or rows from no round, fail.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.bench.drive import EVENTS_PER_REQUEST, Round


@dataclass
class RoundCheck:
    runtag: str
    workload: str
    client: str
    exact: bool
    acknowledged: int  # events in 2xx answers
    stored: int
    at_most: int  # acknowledged + events of requests whose fate the client does not know
    anonymous: tuple[int, int]  # (lowest, highest) anonymous events that may be stored
    stored_anonymous: int
    anonymize: tuple[int, int]
    stored_anonymize: int
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class StoreCheck:
    target: str
    db: str
    rounds: list[RoundCheck]
    total_rows: int
    acknowledged: int
    bad_rows: int
    privacy: dict[str, int]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.rounds)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


PER_TAG_SQL = """
SELECT substr(event_id, 1, 8) AS tag, count(*), coalesce(sum(anonymous), 0),
       coalesce(sum(CASE WHEN event_name = 'anonymize' THEN 1 ELSE 0 END), 0)
FROM events WHERE rowid > {after} GROUP BY tag
"""

# "Nothing leaks" paired with "found where it belongs": anonymous rows carry no IP and no device id,
# the other rows of the same run carry both.
PRIVACY_SQL = """
SELECT coalesce(sum(CASE WHEN anonymous = 1 AND user_ipaddress IS NOT NULL THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN anonymous = 1 AND network_userid IS NOT NULL THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN anonymous = 0 AND user_ipaddress IS NULL THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN anonymous = 0 AND network_userid IS NULL THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN anonymous = 1 THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN anonymous = 0 THEN 1 ELSE 0 END), 0)
FROM events WHERE rowid > {after}
"""


def _check_round(rnd: Round, stored: int, s_anon: int, s_anonymize: int) -> RoundCheck:
    r = rnd.result
    n = EVENTS_PER_REQUEST[rnd.workload]
    acked = int(r["ok2xx"]) * n
    unknown = rnd.inflight + rnd.socket_errors  # answers never read: committed or not, we cannot tell
    refused = int(r["non2xx"])
    at_most = acked + unknown * n
    anon_sent, anonymize_sent = int(r.get("anon_events", 0)), int(r.get("anonymize_events", 0))
    # anonymous events sit in requests of any fate: only refused/unknown requests widen the range
    slack = (unknown + refused) * n
    anon = (max(0, anon_sent - slack), anon_sent)
    anonymize = (max(0, anonymize_sent - slack), anonymize_sent)
    problems, notes = [], []
    if unknown:
        notes.append(
            f"{rnd.inflight} request(s) unanswered at the end, {rnd.socket_errors} socket "
            "error(s): checked within bounds only"
        )
    if not acked <= stored <= at_most:
        want = str(acked) if acked == at_most else f"{acked}..{at_most}"
        problems.append(f"round {rnd.runtag} ({rnd.workload}): stored {stored} events, acknowledged {want}")
    if not anon[0] <= s_anon <= anon[1]:
        problems.append(f"round {rnd.runtag}: stored {s_anon} anonymous events, expected {anon}")
    if not anonymize[0] <= s_anonymize <= anonymize[1]:
        problems.append(f"round {rnd.runtag}: stored {s_anonymize} anonymize events, expected {anonymize}")
    return RoundCheck(
        rnd.runtag,
        rnd.workload,
        rnd.client,
        unknown == 0,
        acked,
        stored,
        at_most,
        anon,
        s_anon,
        anonymize,
        s_anonymize,
        problems,
        notes,
    )


def _fetch(db: Path | str, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(db, str):  # a PostgreSQL URL
        from tests.pg import query

        return [tuple(r) for r in query(db, sql)]
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def check_store(
    target: str, db: Path | str, rounds: list[Round], deviceless: int = 0, after_rowid: int = 0
) -> StoreCheck:
    """Every round's acknowledged events stored, nothing else; privacy per row. `deviceless`: the
    events the collector counted as kept without a device (a cookie retired by a concurrent rotation
    or opt-out of the same pooled cookie), which are the only named rows allowed no device.
    `after_rowid`: rows up to it were prefilled before the run (SQLite only) and are not checked."""
    if isinstance(db, str):  # PostgreSQL has no rowid, and is never prefilled
        assert after_rowid == 0
        per_tag_sql, privacy_sql = (
            PER_TAG_SQL.replace(" WHERE rowid > {after}", ""),
            PRIVACY_SQL.replace(" WHERE rowid > {after}", ""),
        )
    else:
        per_tag_sql, privacy_sql = (
            PER_TAG_SQL.format(after=after_rowid),
            PRIVACY_SQL.format(after=after_rowid),
        )
    per_tag = {row[0]: row[1:] for row in _fetch(db, per_tag_sql)}
    where = f" WHERE rowid > {int(after_rowid)}" if after_rowid else ""
    total = int(_fetch(db, "SELECT count(*) FROM events" + where)[0][0])
    bad = int(_fetch(db, "SELECT count(*) FROM bad_rows")[0][0])
    priv = _fetch(db, privacy_sql)[0]
    checks = []
    for rnd in rounds:
        stored, s_anon, s_anonymize = (int(x) for x in per_tag.get(rnd.runtag, (0, 0, 0)))
        checks.append(_check_round(rnd, stored, s_anon, s_anonymize))
    ours = sum(c.stored for c in checks)
    privacy = dict(
        zip(
            (
                "anon_with_ip",
                "anon_with_device",
                "named_without_ip",
                "named_without_device",
                "anonymous_rows",
                "named_rows",
            ),
            (int(x) for x in priv),
            strict=True,
        )
    )
    problems = []
    if total != ours:
        problems.append(f"table holds {total} events, {total - ours} of them from no round of this run")
    if bad:
        problems.append(f"{bad} bad rows for valid tracker traffic")
    if privacy["named_without_device"] != max(deviceless, 0):
        problems.append(
            f"{privacy['named_without_device']} named rows without a device, "
            f"the collector counted {deviceless} events whose cookie was retired"
        )
    for key in ("anon_with_ip", "anon_with_device", "named_without_ip"):
        if privacy[key]:
            problems.append(f"{privacy[key]} rows: {key.replace('_', ' ')}")
    if any(r.result.get("anon_events") for r in rounds) and not privacy["anonymous_rows"]:
        problems.append("anonymous requests were acknowledged but no anonymous row is stored")
    acked = sum(c.acknowledged for c in checks)
    return StoreCheck(target, str(db), checks, total, acked, bad, privacy, problems)
