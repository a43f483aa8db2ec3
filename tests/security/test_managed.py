"""The managed-PostgreSQL deployment of docs/security.md, on the test server: no superuser at run time.

- ``pgdurable init`` by an administrator, with an owner role that is not a superuser (``owner=``);
- the administrator lets the owner act as each application role, without inheriting its privileges:
  ``GRANT app TO owner WITH INHERIT FALSE, SET TRUE`` (PostgreSQL 16+; what a CREATEROLE administrator of a
  managed service may do for roles it created);
- the owner runs ``df.grant_usage(app)`` (again and again: it re-creates the runner), and runs the worker.

Steps still run with exactly the application role's privileges, and the owner's worker cannot be made to run
anyone's code as the owner.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from pgdurable import Worker, migrate
from pgdurable.testing import MakeDatabase, TestServer
from tests.integration.conftest import DfDatabase, Roles

from .conftest import SECURITY_WORKER, Cast

pytestmark = pytest.mark.xdist_group("roles")


@dataclass(frozen=True)
class Managed:
    cast: Cast
    owner: str


@pytest.fixture(scope="module")
def managed(pg_server: TestServer, make_database: MakeDatabase, df_roles: Roles) -> Iterator[Managed]:
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        version = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    if version is None or int(version[0]) < 160000:
        pytest.skip("GRANT ... WITH INHERIT FALSE, SET TRUE needs PostgreSQL 16+")
    owner = df_roles.create("mg_owner", "LOGIN NOSUPERUSER")
    app = df_roles.create("mg_app", "LOGIN")
    other = df_roles.create("mg_other", "LOGIN")
    name = make_database()
    migrate.install(pg_server.dsn(name), owner=owner)
    db = DfDatabase(name, pg_server.dsn(name), pg_server.dsn(name, user=app), app)
    cast = Cast(db, df_roles, attacker=app, victim=other)
    with cast.connect(owner) as conn:
        conn.execute("UPDATE df.settings SET value = '0' WHERE key = 'loop_floor_seconds'")
    yield Managed(cast, owner)
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        for role in (app, other):
            conn.execute("SELECT df.revoke_usage(%s)", (role,))


def owner_conn(m: Managed) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(m.cast.dsn(m.owner), autocommit=True)


def test_the_owner_is_no_superuser_and_owns_df(managed: Managed) -> None:
    with owner_conn(managed) as conn:
        row = conn.execute(
            "SELECT r.rolsuper, (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'df'),"
            " (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'df_exec')"
            " FROM pg_roles r WHERE r.rolname = current_user"
        ).fetchone()
    assert row == (False, managed.owner, managed.owner)


def test_grant_usage_needs_the_right_to_act_as_the_role(managed: Managed) -> None:
    app = managed.cast.attacker
    with owner_conn(managed) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
        conn.execute("SELECT df.grant_usage(%s)", (app,))
    assert (
        raised.value.diag.message_primary
        == f"df.grant_usage: {managed.owner} cannot create the step runner of role {app}"
    )
    assert f"GRANT {app} TO {managed.owner} WITH INHERIT FALSE, SET TRUE" in str(raised.value.diag.message_hint)


@pytest.fixture(scope="module")
def granted(managed: Managed) -> Managed:
    cast = managed.cast
    with cast.connect() as conn:  # the administrator
        for role in (cast.attacker, cast.victim):
            conn.execute(
                sql.SQL("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(
                    sql.Identifier(role), sql.Identifier(managed.owner)
                )
            )
    with owner_conn(managed) as conn:
        for role in (cast.attacker, cast.victim):
            conn.execute("SELECT df.grant_usage(%s)", (role,))
            conn.execute("SELECT df.grant_usage(%s)", (role,))  # again: the runner is re-created
    with cast.connect() as conn:
        conn.execute("CREATE TABLE owner_only AS SELECT 'the owner''s'::text AS v")
        conn.execute(sql.SQL("ALTER TABLE owner_only OWNER TO {}").format(sql.Identifier(managed.owner)))
    return managed


@pytest.fixture(scope="module")
def owner_worker(granted: Managed) -> Iterator[Worker]:
    with Worker(granted.cast.dsn(granted.owner), config=SECURITY_WORKER) as worker:
        yield worker


@pytest.mark.usefixtures("owner_worker")
def test_steps_run_as_their_role_under_a_worker_that_is_no_superuser(granted: Managed) -> None:
    cast = granted.cast
    with owner_conn(granted) as conn:
        row = conn.execute(
            "SELECT p.proowner::regrole::text, array(SELECT a.grantee::regrole::text FROM aclexplode(p.proacl) a"
            " ORDER BY 1) FROM pg_proc p WHERE p.oid = %s::regprocedure",
            (f"df_exec.run_{cast.oid(cast.attacker)}(text, bigint)",),
        ).fetchone()
    assert row == (cast.attacker, sorted([cast.attacker, granted.owner]))
    assert cast.value(cast.attacker, "SELECT current_user::text AS who") == cast.attacker
    status, output = cast.run(cast.attacker, "SELECT v FROM owner_only")
    assert status == "failed" and output is not None and "permission denied for table owner_only" in output


@pytest.mark.usefixtures("owner_worker")
@pytest.mark.parametrize(
    ("statement", "says"),
    [
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "a step cannot leave a cursor open"),
        ("SELECT * FROM df.settings", "permission denied for table settings"),
        ("SET ROLE {owner}", 'cannot set parameter "role" within security-definer function'),
        ("UPDATE df.instances SET status = 'completed'", "permission denied for table instances"),
    ],
)
def test_the_owners_worker_lends_nothing_of_the_owner(granted: Managed, statement: str, says: str) -> None:
    cast = granted.cast
    status, output = cast.run(cast.attacker, statement.format(owner=granted.owner))
    assert status == "failed" and output is not None and says in output, output
