"""`python -m collector browse`: Datasette on the SQLite store, read-only, in a process of its own.

Datasette's default mode opens the file with `mode=ro`, which reads a live WAL file correctly; its
`immutable` mode (`-i`) would not (stale or corrupt reads while the collector writes), so it is never
used here. Datasette is an ASGI app and the collector an aiohttp one: a separate process keeps an
analyst's heavy query off the collector's event loop and its GIL.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

METADATA = Path(__file__).with_name("metadata.yml")
PACKAGED_DB_NAME = "events"  # the database's name in metadata.yml; Datasette names it by the file's stem
PASSWORD_ENV = "COLLECTOR_BROWSE_PASSWORD_HASH"
ACTOR = "analyst"  # the one login: user `analyst`, the password whose hash PASSWORD_ENV holds

# Sized for stores of millions of rows on a small machine. Each query is bounded in time, which also
# bounds how long it pins a WAL snapshot (see storage.sqlite.bound_wal).
SETTINGS: dict[str, int | bool] = {
    "sql_time_limit_ms": 10000,  # a group-by over 2M events takes 2-5 s; the default 1 s refuses it
    "max_returned_rows": 5000,
    "max_csv_mb": 1000,  # `?_stream=on` exports in pages of short queries; cap one download at 1 GB
    "allow_download": False,  # never hand out the live file (Datasette forbids it for mutable files too)
    "suggest_facets": False,  # a query per column on every table page: too dear on big tables
    "facet_time_limit_ms": 1000,
    "num_sql_threads": 3,
    "default_page_size": 50,
    "truncate_cells_html": 300,  # contexts and other_params are long JSON
}


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach an address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def refusal(db: Path | str, host: str, password_hash: str) -> str | None:
    """Why browse must not start with these settings, or None."""
    if isinstance(db, str):
        return (
            "browse serves SQLite stores only: Datasette does not read PostgreSQL. Query a postgresql:// "
            "store with `python -m collector query` or any PostgreSQL client, as the reader role."
        )
    if not db.is_file():
        return f"no database at {db} (start the collector once to create it)"
    try:  # `datasette serve` checked it; the server itself would start and fail every page
        with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        return f"{db} is not a SQLite database ({exc})"
    if password_hash and not password_hash.startswith("pbkdf2_sha256$"):
        # never quoted: someone may have put the password itself there
        return f"{PASSWORD_ENV} is not a hash from `datasette hash-password` (pbkdf2_sha256$...)"
    if not is_loopback(host) and not password_hash:
        return (
            f"browse on {host} is reachable from other machines: set {PASSWORD_ENV} to a password hash "
            "(`datasette hash-password`) so that analysts log in at /-/login as 'analyst'"
        )
    return None


def metadata(db_name: str, protected: bool) -> dict[str, Any]:
    """The packaged metadata for a database named db_name; with protected, only a logged-in analyst
    sees anything (the hash is read from the environment by the plugin, never written to a file)."""
    meta: dict[str, Any] = yaml.safe_load(METADATA.read_text())
    meta["databases"] = {db_name: meta["databases"][PACKAGED_DB_NAME]}
    for dashboard in meta["plugins"]["datasette-dashboards"].values():
        for chart in dashboard["charts"].values():
            if "db" in chart:
                chart["db"] = db_name
        for flt in dashboard.get("filters", {}).values():
            if "db" in flt:
                flt["db"] = db_name
    if protected:
        meta["allow"] = {"id": ACTOR}
        meta["plugins"]["datasette-auth-passwords"] = {f"{ACTOR}_password_hash": {"$env": PASSWORD_ENV}}
    return meta


def command(db: Path, host: str, port: int, metadata_path: Path) -> list[str]:
    """The Datasette process's command line (collector.browse.serve: `datasette serve` without the
    access log; default, read-only mode, SETTINGS)."""
    return [sys.executable, "-m", "collector.browse.serve", str(db), host, str(port), str(metadata_path)]


def run(db: Path | str, host: str, port: int, password_hash: str) -> int:
    """Start Datasette, forward SIGTERM/SIGINT to it, return its exit code."""
    why = refusal(db, host, password_hash)
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    assert isinstance(db, Path)
    workdir = Path(tempfile.mkdtemp(prefix="collector-browse-"))
    try:
        meta_path = workdir / "metadata.json"
        meta_path.write_text(json.dumps(metadata(db.stem, protected=bool(password_hash))))
        env = {**os.environ, PASSWORD_ENV: password_hash}
        print(f"browse: http://{host}:{port}/ (read-only, {db})", file=sys.stderr, flush=True)
        child = subprocess.Popen(command(db, host, port, meta_path), env=env)

        def forward(sig: int, _frame: object) -> None:
            if child.poll() is None:
                child.send_signal(sig)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        code = child.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # Stopped by the SIGTERM forwarded to it: a clean stop.
    return 0 if code == -signal.SIGTERM else code
