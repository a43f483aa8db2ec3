"""One embedded PostgreSQL for the whole run: a temporary data directory, three databases, stopped at the end.

- ``floor``: the hand-written S + 1 commit baseline (tables ``counters``, ``inst``, ``hist``);
- ``pgd``: the df schema (owner ``pgdurable``, application role ``pgdurable_app``), the ``counters`` and
  ``loopctr`` tables granted to the application role, and the loop floor at 0;
- ``dbos``: DBOS's system tables (created by DBOS itself) and its own ``counters``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pgdurable import embedded, migrate

OWNER = "pgdurable"
APP = "pgdurable_app"
COUNTER_ROWS = 100_000


@dataclass(frozen=True)
class BenchServer:
    """The running server and the DSNs the workloads use."""

    handle: embedded.EmbeddedServer
    home: Path

    def dsn(self, dbname: str, user: str = "postgres") -> str:
        return self.handle.dsn(dbname, user)

    @property
    def floor_dsn(self) -> str:
        return self.dsn("floor")

    @property
    def owner_dsn(self) -> str:
        """The df owner: what workers log in as."""
        return self.dsn("pgd", OWNER)

    @property
    def app_dsn(self) -> str:
        """The application role: what clients start workflows as."""
        return self.dsn("pgd", APP)

    @property
    def admin_dsn(self) -> str:
        """The superuser on the pgdurable database (EXPLAIN with auto_explain, resets)."""
        return self.dsn("pgd")

    @property
    def dbos_dsn(self) -> str:
        return self.dsn("dbos")

    def settings(self) -> dict[str, Any]:
        """The server settings that decide what a commit costs, and the server version."""
        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
        )
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(names),)).fetchall()
        return {name: value for name, value in rows}


def _counters(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE counters (id int PRIMARY KEY, n int)")
    conn.execute("INSERT INTO counters SELECT g, 0 FROM generate_series(1, %s) g", (COUNTER_ROWS,))


def _prepare(server: BenchServer) -> None:
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        for name in ("floor", "pgd", "dbos"):
            conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(server.floor_dsn, autocommit=True) as conn:
        _counters(conn)
        conn.execute("CREATE TABLE inst (id bigserial PRIMARY KEY, status text, graph jsonb, result jsonb)")
        conn.execute("CREATE TABLE hist (inst bigint, seq int, ev jsonb, PRIMARY KEY (inst, seq))")
    migrate.install(server.admin_dsn, owner=OWNER, app_role=APP)
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        _counters(conn)
        conn.execute("CREATE TABLE loopctr (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO loopctr VALUES (1, 0)")
        conn.execute(f"GRANT SELECT, UPDATE ON counters, loopctr TO {APP}")
        # Workers read settings when they start: set the loop floor before any worker runs.
        conn.execute("UPDATE df.settings SET value = '0' WHERE key = 'loop_floor_seconds'")
    with psycopg.connect(server.dbos_dsn, autocommit=True) as conn:
        _counters(conn)


@contextmanager
def bench_server(*, statements: bool = False) -> Iterator[BenchServer]:
    """Start an embedded PostgreSQL in a new temporary directory, prepare it, and remove it all afterwards.

    With `statements`, the server is restarted once with ``pg_stat_statements`` preloaded (tracking nested
    statements too), and the extension is created in the pgdurable database.
    """
    home = Path(tempfile.mkdtemp(prefix="pgdurable-bench-"))
    handle = embedded.start(home, keep_running=False)
    try:
        if statements:
            with psycopg.connect(handle.dsn(), autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
            handle.stop()
            handle = embedded.start(home, keep_running=False)
        server = BenchServer(handle, home)
        _prepare(server)
        if statements:
            with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pg_stat_statements")
        yield server
    finally:
        handle.stop()
        if embedded.is_running(home):  # someone else still held it: make sure it goes
            embedded.stop(home)
        _remove(home)


def _remove(home: Path, timeout: float = 30.0) -> None:
    """Delete the temporary home once the postmaster has let go of it (it removes postmaster.pid last)."""
    deadline = time.monotonic() + timeout
    while (home / "pgdata" / "postmaster.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(3):
        shutil.rmtree(home, ignore_errors=True)
        if not home.exists():
            return
        time.sleep(0.5)


def next_xid(dsn: str) -> int:
    """The next transaction id, read without taking one: counts the writing transactions in between."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def reset_statements(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def top_statements(admin_dsn: str, limit: int = 15) -> list[dict[str, Any]]:
    """The statements of the pgdurable database with the most execution time since the last reset."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT s.toplevel, s.calls, round(s.total_exec_time::numeric, 1), round(s.mean_exec_time::numeric, 3),
                   s.rows, regexp_replace(s.query, '\\s+', ' ', 'g')
              FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
             WHERE d.datname = current_database()
             ORDER BY s.total_exec_time DESC LIMIT %s
            """,
            (limit,),
        ).fetchall()
    return [
        {
            "toplevel": r[0],
            "calls": r[1],
            "total_ms": float(r[2]),
            "mean_ms": float(r[3]),
            "rows": r[4],
            "query": r[5][:200],
        }
        for r in rows
    ]
