"""Ordered, recorded schema migrations: `migrations/NNNN_name.sql`, each applied once, in one transaction."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations" / "sqlite"


def statements(sql: str) -> list[str]:
    """Split a script into statements (triggers keep their inner semicolons)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise ValueError(f"incomplete SQL statement: {buf.strip()[:80]!r}")
    return out


def pending(conn: sqlite3.Connection) -> list[Path]:
    """Migration files not yet applied, in order."""
    done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    return [p for p in sorted(MIGRATIONS.glob("*.sql")) if int(p.name.split("_")[0]) not in done]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations; several processes starting at once serialise on BEGIN IMMEDIATE."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        applied = []
        for path in pending(conn):
            for stmt in statements(path.read_text()):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (int(path.name.split("_")[0]), path.stem, datetime.now(UTC).isoformat()),
            )
            applied.append(path.stem)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied
