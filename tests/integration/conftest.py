"""df-specific fixtures: one template database with df installed per session, a fresh clone per test module,
and per-run role names (roles are cluster-wide).

- `df_roles` creates roles with a random suffix and, at the end of the session, removes what they own or were
  granted in every database that still exists (``DROP OWNED BY``), then drops them.
- `df_template` is a database with df installed by `pgdurable.migrate.install` (as the superuser, so
  with the pg_catalog operator copies) and the session's application role prepared by ``df.grant_usage``.
- `df_db` is a module's clone of it (``CREATE DATABASE ... TEMPLATE``): admin and application DSNs.
- `admin` / `app` are autocommit connections to that clone, as the superuser and as the application role.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from pgdurable import Client, Worker, WorkerConfig, migrate
from pgdurable.testing import MakeDatabase, TestServer


class Roles:
    """Per-run roles: `create("alice")` makes ``alice_<suffix>``; all are dropped at session end."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.suffix = secrets.token_hex(4)
        self.names: list[str] = []

    def name(self, base: str) -> str:
        return f"{base}_{self.suffix}"

    def create(self, base: str, *options: str) -> str:
        name = self.name(base)
        with psycopg.connect(self.server.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} " + " ".join(options or ("LOGIN",))).format(sql.Identifier(name)))
        self.names.append(name)
        return name

    def drop(self, name: str) -> None:
        """Remove one role now: its privileges and objects in every database, then the role."""
        self._drop([name])
        self.names.remove(name)

    def _drop(self, names: list[str]) -> None:
        if not names:
            return
        roles = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        with psycopg.connect(self.server.admin_dsn, autocommit=True) as conn:
            existing = [n for (n,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))]
            databases = [
                d for (d,) in conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate")
            ]
        if not existing:
            return
        roles = sql.SQL(", ").join(sql.Identifier(n) for n in existing)
        for database in databases:
            try:
                with psycopg.connect(self.server.dsn(database), autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(roles))
            except psycopg.OperationalError:  # dropped meanwhile
                continue
        with psycopg.connect(self.server.admin_dsn, autocommit=True) as conn:
            for name in existing:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    def drop_all(self) -> None:
        self._drop(list(self.names))
        self.names.clear()


@pytest.fixture(scope="session")
def df_roles(pg_server: TestServer) -> Iterator[Roles]:
    roles = Roles(pg_server)
    yield roles
    roles.drop_all()


@pytest.fixture(scope="session")
def df_app_role(df_roles: Roles) -> str:
    """The session's application role (LOGIN, non-superuser); prepared in the template with df.grant_usage."""
    return df_roles.create("pgd_app")


@pytest.fixture(scope="session")
def df_template(pg_server: TestServer, make_database: MakeDatabase, df_app_role: str) -> str:
    """A database with df installed (superuser install) and the application role granted usage."""
    name = make_database()
    migrate.install(pg_server.dsn(name), app_role=df_app_role)
    return name


@dataclass(frozen=True)
class DfDatabase:
    name: str
    admin_dsn: str
    app_dsn: str
    app_role: str


@pytest.fixture(scope="module")
def df_db(pg_server: TestServer, make_database: MakeDatabase, df_template: str, df_app_role: str) -> DfDatabase:
    """This module's own clone of the df template."""
    name = make_database(template=df_template)
    return DfDatabase(name, pg_server.dsn(name), pg_server.dsn(name, user=df_app_role), df_app_role)


@pytest.fixture
def admin(df_db: DfDatabase) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit superuser connection to the module's database."""
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def app(df_db: DfDatabase) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection as the application role (df on its search_path via the database setting)."""
    with psycopg.connect(df_db.app_dsn, autocommit=True) as conn:
        yield conn


Scalar = Callable[..., object]


def _scalar(conn: psycopg.Connection[tuple[object, ...]], query: str, params: Sequence[object] | None = None) -> object:
    row = conn.execute(query, params).fetchone()  # type: ignore[call-overload]
    assert row is not None, query
    return row[0]


@pytest.fixture(scope="session")
def scalar() -> Scalar:
    """`scalar(conn, query, params=None)`: the single value of a query's single row."""
    return _scalar


TEST_WORKER = WorkerConfig(concurrency=4, lease_seconds=2.0, poll_seconds=0.05)
"""Test-size leases and polls (design §7); the loop floor is set to 0 in each module's database."""


@pytest.fixture(scope="module")
def worker(df_db: DfDatabase) -> Iterator[Worker]:
    """An in-process worker on the module's database, with the loop floor at 0."""
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.settings SET value = '0' WHERE key = 'loop_floor_seconds'")
    with Worker(df_db.admin_dsn, config=TEST_WORKER) as running:
        yield running


@pytest.fixture
def client(df_db: DfDatabase) -> Client:
    """A client as the application role."""
    return Client(df_db.app_dsn)
