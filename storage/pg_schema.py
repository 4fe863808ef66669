"""PostgreSQL migrations and roles: ordered, recorded, applied once under an advisory lock.

Two roles (created by `python -m collector pg-roles`): the owner holds the schema and runs the
migrations (`python -m collector migrate`); the collector connects as the writer, which may insert,
and read and write its own bookkeeping, and nothing else: no UPDATE, DELETE or TRUNCATE on events and
bad rows (triggers refuse them too, whoever asks).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from storage.pg_io import Conn

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations" / "postgres"
LOCK = 7_400_110  # the advisory lock key replicas serialise their migrations on
MONTHS_AHEAD = 3  # partitions made ahead of time; rows past them land in the default partition
PARTITION_LOCK_WAIT_MS = 100  # how long making a month's partition may hold the writers up
WRITER_GRANTS = (
    "GRANT SELECT ON schema_migrations TO {role}",
    "GRANT INSERT ON events, bad_rows TO {role}",
    "GRANT USAGE ON SEQUENCE bad_rows_id_seq TO {role}",
    "GRANT SELECT, INSERT ON event_ids, retired_ids TO {role}",
    # a retired id's upsert renews its expiry (ON CONFLICT DO UPDATE needs UPDATE, conflict or not)
    "GRANT UPDATE (expires) ON retired_ids TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON device_state TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON store_health TO {role}",
    "GRANT EXECUTE ON FUNCTION collector_ensure_partitions(integer) TO {role}",
    "GRANT EXECUTE ON FUNCTION collector_lifecycle(timestamptz, bigint, text) TO {role}",
    "GRANT SELECT ON lifecycle, erasures TO {role}",
)
READER_GRANTS = ("GRANT SELECT ON events, bad_rows, sessions, devices, page_views, users TO {role}",)


def versions() -> list[tuple[int, Path]]:
    """The migration files, in order."""
    return sorted((int(p.name.split("_")[0]), p) for p in MIGRATIONS.glob("*.sql"))


async def check_encoding(conn: Conn) -> None:
    """Refuse a database whose encoding converts text: what it cannot encode (any non-Latin letter in
    a LATIN1 database) would be refused event by event, answered 400, and a tracker drops a batch so
    answered. UTF8, and SQL_ASCII (bytes kept as sent, no conversion: what initdb makes without a
    locale), store every event."""
    encoding = await conn.fetchval("SHOW server_encoding")
    if encoding not in ("UTF8", "SQL_ASCII"):
        raise RuntimeError(
            f"the database's encoding is {encoding}, not UTF8: create it with ENCODING 'UTF8' "
            "(e.g. `CREATE DATABASE collector ENCODING 'UTF8' TEMPLATE template0`)"
        )


async def pending(conn: Conn) -> list[int]:
    """Versions not yet applied (all of them on an empty database)."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return [v for v, _ in versions()]
    done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [v for v, _ in versions() if v not in done]


async def migrate(conn: Conn, writer: str | None = None, reader: str | None = None) -> list[str]:
    """Apply pending migrations (as the owner), make the partitions, grant the roles their rights."""
    await check_encoding(conn)
    applied = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
        )
        todo = set(await pending(conn))
        for version, path in versions():
            if version not in todo:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, path.stem, datetime.now(UTC)
                )
            applied.append(path.stem)
        await ensure_partitions(conn)
        for role, grants in ((writer, WRITER_GRANTS), (reader, READER_GRANTS)):
            if role:
                quoted = '"' + role.replace('"', '""') + '"'
                for grant in grants:
                    await conn.execute(grant.format(role=quoted))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK)
    return applied


async def ensure_partitions(conn: Conn, wait_ms: int | None = None) -> bool:
    """Make the months ahead; False if a table was busy for longer than `wait_ms` (nothing made).

    Making a month's partition takes an exclusive lock on its table: behind an analyst's open read it
    waits, and every writer queues behind it (503 past their statement timeout), hence the bound. The
    function's warnings (a month skipped, its rows already in the default partition) reach the log:
    asyncpg drops a notice nothing listens for.
    """

    def relay(_conn: Any, message: asyncpg.PostgresLogMessage) -> None:
        # severity is translated (lc_messages: `WARNUNG`); severity_en is not. Not the NOTICEs of IF
        # NOT EXISTS and the like.
        if (message.severity_en or message.severity) in ("WARNING", "ERROR"):
            log.warning("partitions: %s", message.message)

    conn.add_log_listener(relay)
    try:
        async with conn.transaction():
            if wait_ms is not None:
                await conn.execute(f"SET LOCAL lock_timeout = {int(wait_ms)}")
            await conn.execute("SELECT collector_ensure_partitions($1)", MONTHS_AHEAD)
    except asyncpg.LockNotAvailableError:
        return False
    finally:
        conn.remove_log_listener(relay)  # a message already received is relayed all the same
    return True


async def this_month_made(conn: Conn) -> bool:
    """Whether this month's partitions (by the server's clock) exist: rows without them would land in
    the default partition, and the month could then never be made."""
    made: bool = await conn.fetchval(
        "SELECT bool_and(to_regclass(t || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')) IS NOT NULL)"
        " FROM unnest(ARRAY['events_', 'bad_rows_']) AS t"
    )
    return made


async def create_roles(conn: Conn, database: str, roles: dict[str, str]) -> None:
    """Create (or re-password) the owner, writer and reader login roles; the owner owns the database."""
    for name, password in roles.items():
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
        verb = "ALTER" if exists else "CREATE"
        # identifiers and passwords cannot be bind parameters in DDL: quoted by the server's functions
        ident = await conn.fetchval("SELECT quote_ident($1)", name)
        literal = await conn.fetchval("SELECT quote_literal($1)", password)
        await conn.execute(f"{verb} ROLE {ident} LOGIN PASSWORD {literal}")
    owner = await conn.fetchval("SELECT quote_ident($1)", next(iter(roles)))
    db = await conn.fetchval("SELECT quote_ident($1)", database)
    await conn.execute(f"ALTER DATABASE {db} OWNER TO {owner}")
    await conn.execute(f"ALTER SCHEMA public OWNER TO {owner}")
