"""`python -m collector serve` runs the collector; `query "SQL"` reads the store; `browse` opens it
read-only in Datasette; `migrate` and `pg-roles` set a PostgreSQL store up."""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvloop
from aiohttp import web

from collector import logs
from collector.config import Config, ConfigError, add_flags, is_postgres, load_config

log = logging.getLogger("collector")


async def serve(cfg: Config, reuse_port: bool) -> None:
    """Run until SIGTERM/SIGINT, then drain: /ready 503, wait, finish in-flight requests, commit, close."""
    from collector.app import create_app
    from collector.handlers import STATE
    from collector.server import Runner

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # first: a signal during start-up still drains cleanly
        loop.add_signal_handler(sig, stop.set)
    app = create_app(cfg)
    runner = Runner(app, access_log=None, shutdown_timeout=30)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, reuse_port=reuse_port or None, backlog=1024)
    await site.start()
    log.info("listening on http://%s:%d (pid %d)", cfg.host, cfg.port, os.getpid())
    await stop.wait()
    app[STATE].draining = True
    log.info("draining for %.1fs before closing the listener", cfg.drain_seconds)
    await asyncio.sleep(cfg.drain_seconds)
    await runner.cleanup()  # stops listening, waits for in-flight requests, then closes the store
    log.info("stopped; everything acknowledged is committed")


def supervise(cfg: Config, argv: Sequence[str]) -> int:
    """Run cfg.workers processes on one port (SO_REUSEPORT) and one store; forward signals to them."""
    metrics_dir = tempfile.mkdtemp(prefix="collector-metrics-")
    env = {
        **os.environ,
        "COLLECTOR_WORKERS": "1",
        "COLLECTOR_REUSE_PORT": "1",
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    children = [
        subprocess.Popen([sys.executable, "-m", "collector", "serve", *argv, "--workers", "1"], env=env)
        for _ in range(cfg.workers)
    ]

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    shutil.rmtree(metrics_dir, ignore_errors=True)
    # A child that died of the forwarded SIGTERM had not installed its handler yet, so it was not
    # serving and acknowledged nothing: for the supervisor that is a clean stop.
    return max((0 if code == -signal.SIGTERM else code for code in codes), key=abs)


def query(db: Path | str, sql: str, fmt: str) -> int:
    """Print the result of a read-only query; a write attempt fails, whatever the SQL."""
    try:
        names, rows = _query_postgres(str(db), sql) if is_postgres(db) else _query_sqlite(Path(db), sql)
    except (sqlite3.Error, FileNotFoundError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OverflowError as exc:  # PostgreSQL keeps years past 9999 (a device clock far ahead); Python not
        print(
            f"error: {exc}: a value is past Python's range; select it as text (column::text)", file=sys.stderr
        )
        return 1
    if fmt == "json":
        data = [dict(zip(names, r, strict=True)) for r in rows]
        sys.stdout.write(orjson.dumps(data, default=str).decode() + "\n")
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(names)
        w.writerows(rows)
    else:
        table = [names, *[["NULL" if v is None else str(v) for v in r] for r in rows]]
        widths = [max(len(r[i]) for r in table) for i in range(len(names))]
        for i, r in enumerate(table):
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
    return 0


def _query_sqlite(db: Path, sql: str) -> tuple[list[str], list[Any]]:
    from storage.sqlite import connect_readonly

    conn = connect_readonly(db)
    cur = conn.execute(sql)
    return [d[0] for d in cur.description or ()], cur.fetchall()


def _query_postgres(url: str, sql: str) -> tuple[list[str], list[Any]]:
    async def run() -> tuple[list[str], list[Any]]:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction(readonly=True):  # the server refuses every write in it
                stmt = await conn.prepare(sql)
                return [a.name for a in stmt.get_attributes()], [tuple(r) for r in await stmt.fetch()]
        finally:
            await conn.close()

    return asyncio.run(run())


def migrate(url: str, writer: str | None, reader: str | None) -> int:
    """Apply PostgreSQL migrations as the schema's owner, and grant the writer and reader roles."""
    from storage import pg_schema

    async def run() -> list[str]:
        conn = await asyncpg.connect(url)
        try:
            return await pg_schema.migrate(conn, writer, reader)
        finally:
            await conn.close()

    try:
        applied = asyncio.run(run())
    except (OSError, asyncpg.PostgresError, RuntimeError) as exc:  # RuntimeError: not a UTF8 database
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")
    return 0


def pg_roles(url: str, database: str, names: Sequence[str]) -> int:
    """Create the owner, writer and reader roles (passwords from COLLECTOR_PG_<ROLE>_PASSWORD)."""
    from storage import pg_schema

    roles = {}
    for kind, name in zip(("OWNER", "WRITER", "READER"), names, strict=True):
        password = os.environ.get(f"COLLECTOR_PG_{kind}_PASSWORD")
        if not password:
            print(f"error: set COLLECTOR_PG_{kind}_PASSWORD", file=sys.stderr)
            return 2
        roles[name] = password

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await pg_schema.create_roles(conn, database, roles)
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"roles ready: {', '.join(roles)}")
    return 0


def lifecycle_now(cfg: Config, user_id: str | None, device_id: str | None) -> int:
    """`retain` (with no selector) or `erase` now, on either store; print what was removed."""
    import time as _time

    from storage import lifecycle

    now_ms = int(_time.time() * 1000)

    async def on_postgres() -> object:
        conn = await asyncpg.connect(str(cfg.db))
        try:
            if user_id is None and device_id is None:
                return await lifecycle.pg_run(conn, now_ms, cfg.retention_days, cfg.cookie_max_age)
            return await lifecycle.pg_erase(conn, now_ms, user_id, device_id)
        finally:
            await conn.close()

    try:
        if is_postgres(cfg.db):
            done = asyncio.run(on_postgres())
        else:
            from storage.sqlite import connect, writers_turn

            assert isinstance(cfg.db, Path)
            if not cfg.db.exists():
                raise FileNotFoundError(f"no database at {cfg.db}")
            conn = connect(cfg.db, cfg.synchronous, cfg.busy_timeout)
            db = cfg.db
            try:
                if user_id is None and device_id is None:
                    done = lifecycle.sqlite_run(
                        conn, now_ms, cfg.retention_days, cfg.cookie_max_age, lambda: writers_turn(db)
                    )
                else:
                    done = lifecycle.sqlite_erase(conn, now_ms, user_id, device_id, lambda: writers_turn(db))
            finally:
                conn.close()
    except (sqlite3.Error, FileNotFoundError, OSError, asyncpg.PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"removed: {done}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m collector", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the collector")
    add_flags(serve_p)
    query_p = sub.add_parser("query", help="run a read-only SQL query against the store")
    query_p.add_argument("sql")
    query_p.add_argument("--db", default=None, help="database file or postgresql:// URL [env COLLECTOR_DB]")
    query_p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    browse_p = sub.add_parser("browse", help="browse the SQLite store read-only in Datasette")
    browse_p.add_argument("--db", default=None, help="database file [env COLLECTOR_DB]")
    browse_p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    browse_p.add_argument("--port", type=int, default=8081)
    mig_p = sub.add_parser("migrate", help="PostgreSQL: apply migrations as the owner, grant the roles")
    mig_p.add_argument("--db", required=True, help="the owner's postgresql:// URL")
    mig_p.add_argument("--writer-role", default="collector_writer", help="role the collectors connect as")
    mig_p.add_argument("--reader-role", default="collector_reader", help="role analysts connect as")
    roles_p = sub.add_parser("pg-roles", help="PostgreSQL: create the owner, writer and reader roles")
    roles_p.add_argument("--db", required=True, help="a superuser's postgresql:// URL")
    roles_p.add_argument("--database", required=True, help="the database the owner will own")
    roles_p.add_argument(
        "--roles", nargs=3, default=("collector_owner", "collector_writer", "collector_reader")
    )
    retain_p = sub.add_parser("retain", help="run retention and culling now (COLLECTOR_RETENTION_DAYS)")
    retain_p.add_argument("--db", default=None, help="database file or postgresql:// URL [env COLLECTOR_DB]")
    erase_p = sub.add_parser("erase", help="erase a person's or a device's events, recorded in the ledger")
    erase_p.add_argument("--db", default=None, help="database file or the owner's postgresql:// URL")
    who = erase_p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id")
    who.add_argument("--device-id")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        return migrate(args.db, args.writer_role or None, args.reader_role or None)
    if args.command == "pg-roles":
        return pg_roles(args.db, args.database, args.roles)
    try:
        serving = args.command == "serve"
        cfg = load_config(flags=vars(args) if serving else {"db": args.db}, serving=serving)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "query":
        return query(cfg.db, args.sql, args.format)
    if args.command == "browse":
        from collector import browse

        return browse.run(cfg.db, args.host, args.port, cfg.browse_password_hash)
    if args.command in ("retain", "erase"):
        return lifecycle_now(cfg, getattr(args, "user_id", None), getattr(args, "device_id", None))
    logs.setup(cfg.log_format, cfg.log_level)
    if cfg.workers > 1:
        return supervise(cfg, sys.argv[2:] if argv is None else list(argv)[1:])
    log.info("configuration: %s", cfg.redacted())
    uvloop.run(serve(cfg, reuse_port=os.environ.get("COLLECTOR_REUSE_PORT") == "1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
