"""A real PostgreSQL for the tests: Debian's binaries, a cluster in a temporary directory, run as a
non-root user (initdb refuses root), one fresh database per test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import os
import pwd
import shutil
import subprocess
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from tests.procs import cli, free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"  # Debian's postgresql package creates it
T = TypeVar("T")


def available() -> str | None:
    """Why a server cannot be started here, or None."""
    if not (BIN / "initdb").exists():
        return f"PostgreSQL binaries missing in {BIN} (apt-get install postgresql-15; make test does)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"no {USER!r} user to run PostgreSQL as"
    return None


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop (own thread)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class PgServer:
    """One PostgreSQL cluster on 127.0.0.1 (or another address), fsync on, trust auth for local tests."""

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None
    ):
        self.root = root
        self.data = root / "data"
        self.host = host
        self.port = port or free_port()
        self.netns = netns
        self.log = root / "server.log"

    def _as_user(self, *cmd: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, "runuser", "-u", USER, "--", *cmd] if os.geteuid() == 0 else [*prefix, *cmd]

    def start(self) -> PgServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, USER)
        if not self.data.exists():
            subprocess.run(
                self._as_user(
                    str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
                ),
                check=True,
                capture_output=True,
            )
            # the other test hosts (network namespaces) reach it over their bridge: trust that net too
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.log), "-o", self._options())
        return self

    def _options(self) -> str:
        return (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.root} -c fsync=on "
            "-c max_connections=200 -c log_min_messages=warning -c shared_buffers=64MB"
        )

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            self._as_user(str(BIN / "pg_ctl"), "-D", str(self.data), *args), check=True, capture_output=True
        )

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode, "-w")

    def restart(self) -> None:
        self.pg_ctl("restart", "-m", "fast", "-w", "-t", "60", "-l", str(self.log), "-o", self._options())

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}{self.host}:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        async def go() -> None:
            conn = await asyncpg.connect(self.url(database))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        run_sync(go())

    def new_database(self) -> str:
        """A fresh empty database; its name."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        ready = [*self._as_user(str(BIN / "pg_isready"), "-h", self.host, "-p", str(self.port))]
        while subprocess.run(ready, check=False, capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not come up")
            time.sleep(0.1)


class Row(tuple[Any, ...]):
    """A row by position or by column name, like sqlite3.Row; timestamps as SQLite's text (UTC, ms)."""

    names: dict[str, int]

    def __new__(cls, values: list[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, [_text(v) for v in values])
        row.names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self.names[key] if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self.names)


def _text(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return value


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
    """Rows of a query on a PostgreSQL database, from sync test code."""

    async def go() -> list[Row]:
        conn = await asyncpg.connect(url)
        try:
            stmt = await conn.prepare(sql)
            names = {a.name: i for i, a in enumerate(stmt.get_attributes())}
            return [Row(list(r), names) for r in await stmt.fetch(*params)]
        finally:
            await conn.close()

    return run_sync(go())


# The passwords `pg-roles` gives the roles in the tests (COLLECTOR_PG_<ROLE>_PASSWORD).
PASSWORDS = {"OWNER": "owner-pw", "WRITER": "writer-pw", "READER": "reader-pw"}


def roles_database(server: PgServer) -> str:
    """A database set up as the README says: roles (pg-roles), then the owner migrates and grants."""
    name = server.new_database()
    env = {f"COLLECTOR_PG_{k}_PASSWORD": v for k, v in PASSWORDS.items()}
    done = cli("pg-roles", "--db", server.url(name), "--database", name, env=env)
    assert done.returncode == 0, done.stderr
    done = cli("migrate", "--db", server.url(name, "collector_owner", PASSWORDS["OWNER"]))
    assert done.returncode == 0, done.stderr
    assert "0001_init" in done.stdout
    return name


def as_role(server: PgServer, db: str, role: str, sql: str) -> str | None:
    """The error PostgreSQL answers `sql` with as `role`, or None."""
    password = PASSWORDS[role.removeprefix("collector_").upper()]

    async def go() -> str | None:
        conn = await asyncpg.connect(server.url(db, role, password))
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await conn.close()
        return None

    return run_sync(go())


async def execute(url: str, sql: str) -> None:
    """One statement on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
