"""Fixtures of the security tests: the integration fixtures (a df database per module, cloned from a template
with df installed by the superuser, which therefore owns df; per-run roles), and what every module here adds:

- `worker`: an in-process worker connected as the SUPERUSER (the strongest identity a step could steal), with
  test-size leases and polls; the loop floor is 0 in the module's database;
- `sec`: the module's cast, per-run roles with LOGIN, each prepared with ``df.grant_usage``: an ``attacker``
  and a ``victim``, plus helpers to start instances as either and wait for them;
- `single_slot_worker`: a worker with ONE slot, so that consecutive steps of different roles run on the same
  connection (what one step leaves in the session is what the next one meets).

Every role is created by `Roles` (per-run names) and removed at the end of the session with ``DROP OWNED BY``
in every database, after ``df.revoke_usage`` where a test granted it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgdurable import Worker, WorkerConfig
from tests.integration import conftest as integration
from tests.integration.conftest import DfDatabase, Roles

# The integration fixtures, registered here for this directory: the module's df database cloned from a
# template (df installed by the superuser, so owned by it), its superuser connection, per-run roles.
df_roles = integration.df_roles
df_app_role = integration.df_app_role
df_template = integration.df_template
df_db = integration.df_db
admin = integration.admin

Conn = psycopg.Connection[tuple[Any, ...]]
TIMEOUT = 30.0
TERMINAL = ("completed", "failed", "cancelled")
SECURITY_WORKER = WorkerConfig(lease_seconds=2.0, poll_seconds=0.05)
"""As the issue asks: test-size leases and polls, everything else (4 slots) the default."""


def q(text: str) -> str:
    """`text` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Cast:
    """The module's roles and how to act as them."""

    db: DfDatabase
    roles: Roles
    attacker: str
    victim: str

    def dsn(self, role: str) -> str:
        return self.roles.server.dsn(self.db.name, user=role)

    def connect(self, role: str | None = None) -> Conn:
        """An autocommit connection as `role` (default: the superuser)."""
        return psycopg.connect(self.db.admin_dsn if role is None else self.dsn(role), autocommit=True)

    def start(self, role: str, graph_sql: str, **options: str) -> str:
        """``SELECT df.start(<graph_sql>, ...)`` as `role`; the instance id."""
        extra = "".join(f", {name} => {q(value)}" for name, value in options.items())
        with self.connect(role) as conn:
            row = conn.execute(f"SELECT df.start({graph_sql}{extra})".encode()).fetchone()
        assert row is not None
        return str(row[0])

    def step(self, role: str, statement: str) -> str:
        """Start a one-step workflow of `statement` as `role`."""
        return self.start(role, q(statement))

    def wait(self, instance_id: str, timeout: float = TIMEOUT) -> tuple[str, str | None]:
        """(status, output) once the instance is terminal, read as the superuser."""
        deadline = time.monotonic() + timeout
        with self.connect() as conn:
            while True:
                row = conn.execute("SELECT status, output FROM df.instances WHERE id = %s", (instance_id,)).fetchone()
                assert row is not None, f"instance {instance_id} vanished"
                if row[0] in TERMINAL:
                    return str(row[0]), None if row[1] is None else str(row[1])
                assert time.monotonic() < deadline, f"instance {instance_id} is still {row[0]} after {timeout} s"
                time.sleep(0.05)

    def run(self, role: str, statement: str) -> tuple[str, str | None]:
        return self.wait(self.step(role, statement))

    def rows(self, instance_id: str) -> list[dict[str, Any]]:
        """The rows of a completed one-step instance."""
        status, output = self.wait(instance_id)
        assert status == "completed", output
        assert output is not None
        rows: list[dict[str, Any]] = json.loads(output)["rows"]
        return rows

    def value(self, role: str, statement: str) -> Any:
        """The first column of the first row of a one-step instance of `statement` run as `role`."""
        rows = self.rows(self.step(role, statement))
        assert rows, statement
        return next(iter(rows[0].values()))

    def oid(self, role: str) -> int:
        with self.connect() as conn:
            row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        assert row is not None
        return int(row[0])


def make_cast(df_db: DfDatabase, df_roles: Roles, *, attacker: str = "sec_atk", victim: str = "sec_vic") -> Cast:
    """Create (per run) and prepare the two roles in the module's database; the loop floor is set to 0."""
    names = []
    for base in (attacker, victim):
        name = df_roles.name(base)
        if name not in df_roles.names:
            df_roles.create(base)
        names.append(name)
    cast = Cast(df_db, df_roles, names[0], names[1])
    with cast.connect() as conn:
        conn.execute("UPDATE df.settings SET value = '0' WHERE key = 'loop_floor_seconds'")
        for role in names:
            conn.execute("SELECT df.grant_usage(%s)", (role,))
    return cast


@pytest.fixture(scope="module")
def sec(df_db: DfDatabase, df_roles: Roles) -> Iterator[Cast]:
    cast = make_cast(df_db, df_roles)
    yield cast
    with cast.connect() as conn:
        for role in (cast.attacker, cast.victim):
            conn.execute("SELECT df.revoke_usage(%s)", (role,))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def worker(df_db: DfDatabase, sec: Cast) -> Iterator[Worker]:
    """The module's worker, connected as the superuser (which owns df here)."""
    with Worker(df_db.admin_dsn, config=SECURITY_WORKER) as running:
        yield running


@pytest.fixture(scope="module")
def single_slot_worker(df_db: DfDatabase, sec: Cast) -> Iterator[Worker]:
    """A worker with one slot: consecutive steps, whoever submitted them, share its one connection. (A module
    uses it instead of `worker`, never beside it.)"""
    config = WorkerConfig(concurrency=1, lease_seconds=2.0, poll_seconds=0.05)
    with Worker(df_db.admin_dsn, config=config) as running:
        yield running
