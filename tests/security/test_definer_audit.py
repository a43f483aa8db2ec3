"""The audit of code that runs with more privilege than its caller, and of what users may touch (issue 8: "every
SECURITY DEFINER function pins search_path and checks its caller"; "row-level security on every df table").

- Every SECURITY DEFINER function of schema df pins ``search_path = pg_catalog, pg_temp`` and is listed in
  `REVIEWED` with its caller check; a new one fails `test_every_security_definer_function_was_reviewed` until
  someone reviews it and says how it checks its caller.
- The runners of schema df_exec are the deliberate exception: they run with the submitter's own search_path.
  Instead they re-apply the role's settings and check current_user, which the behavioural tests here prove.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from .conftest import Cast, Conn

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.xdist_group("roles")]

PINNED = "search_path=pg_catalog, pg_temp"

# signature -> (PUBLIC may execute it, how it checks its caller)
REVIEWED: dict[str, tuple[bool, str]] = {
    "df._setting_bool(text)": (False, "owner only: reads any setting, the loopback password included"),
    "df._http_enabled()": (True, "anyone: returns one non-secret boolean"),
    "df._superuser_instances_allowed()": (True, "anyone: returns one non-secret boolean"),
    "df._list_instances_max_limit()": (True, "anyone: returns one non-secret integer"),
    "df._enqueue_start()": (False, "trigger: the row it reads passed RLS WITH CHECK (submitted_by = current_user)"),
    "df._enqueue_inbox()": (False, "trigger: the row passed RLS WITH CHECK and the (instance, submitter) key"),
    "df._start_as(regrole,text,text,text)": (
        False,
        "owner and loopback only; refuses inside steps; the role must hold df usage; LOGIN/superuser checks",
    ),
    "df._start_new(regrole,text,text,text)": (
        True,
        "refuses inside steps (the call stack holds a runner); session_user must be a member of the role",
    ),
    "df.schema_version()": (True, "anyone: the schema version"),
    "df.version()": (True, "anyone: the package and schema versions"),
    "df.metrics()": (False, "EXECUTE revoked from PUBLIC; granted to with_grant admins: counts across roles"),
    "df._apply_delete_request()": (
        False,
        "trigger: the request row's submitter, proven by RLS and its key, must match",
    ),
    "df._prune()": (False, "owner only (EXECUTE revoked): retention across roles"),
    "df.set_secret(text,text)": (True, "stores under df._invoker(); refuses inside workflows"),
    "df.unset_secret(text)": (True, "deletes under df._invoker()"),
    "df.secret_names()": (True, "lists under df._invoker()"),
    "df._set_start_options(text,regrole,jsonb)": (
        True,
        "session_user must be a member of the role, the instance not started; inside a step session_user is the "
        "worker: test_revalidation.test_a_step_cannot_set_another_roles_start_options",
    ),
}


@pytest.fixture
def catalog(sec: Cast) -> Iterator[Conn]:
    """A superuser connection that names functions with their schema."""
    with sec.connect() as conn:
        conn.execute("SET search_path = pg_catalog")
        yield conn


def definers(conn: Conn) -> list[tuple[str, list[str] | None, bool]]:
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE')"
        " FROM pg_proc p WHERE p.pronamespace = 'df'::regnamespace AND p.prosecdef ORDER BY 1"
    ).fetchall()
    return [(str(r[0]), r[1], bool(r[2])) for r in rows]


# -- SECURITY DEFINER in df -------------------------------------------------------------------------------------------


def test_every_security_definer_function_pins_search_path(catalog: Conn) -> None:
    found = definers(catalog)
    assert len(found) >= 10
    unpinned = [name for name, config, _ in found if PINNED not in (config or [])]
    assert unpinned == [], f"SECURITY DEFINER functions without SET {PINNED}: {unpinned}"


def test_every_security_definer_function_was_reviewed(catalog: Conn) -> None:
    new = [name for name, _, _ in definers(catalog) if name not in REVIEWED]
    assert new == [], f"review these SECURITY DEFINER functions (how do they check their caller?) and add them: {new}"


def test_only_the_harmless_ones_are_executable_by_everyone(catalog: Conn) -> None:
    wrong = [
        (name, public) for name, _, public in definers(catalog) if name in REVIEWED and REVIEWED[name][0] != public
    ]
    assert wrong == [], f"PUBLIC EXECUTE differs from the review: {wrong}"


def test_the_secret_functions_act_for_the_submitter_inside_a_step(sec: Cast) -> None:
    """df.set_secret, df.unset_secret and df.secret_names take their caller from the session (SET ROLE, else
    session_user). Inside a step the session is the worker's, so they would list, delete and overwrite the
    WORKER's secrets (df._refuse_in_workflow, which set_secret calls, is a setting the step may change)."""
    with sec.connect() as conn:
        if conn.execute("SELECT to_regprocedure('df.secret_names()')").fetchone() == (None,):
            pytest.skip("no df.secret_names in this schema")
        conn.execute("SELECT df.set_secret('sec_worker_secret', 'the worker''s')")
    try:
        for statement, must_not in (
            ("SELECT array_agg(n) AS names FROM df.secret_names() AS n", "sec_worker_secret"),
            ("SELECT df.unset_secret('sec_worker_secret') AS ok", None),
            (
                "SELECT df.set_secret('sec_worker_secret', 'the attacker''s') AS ok"
                " FROM (SELECT set_config('pgdurable.in_workflow', 'off', true)) AS forged",
                None,
            ),
        ):
            status, output = sec.run(sec.attacker, statement)
            if must_not is not None:
                assert status == "failed" or (output is not None and must_not not in output), output
        with sec.connect() as conn:
            row = conn.execute(
                "SELECT value FROM df.secrets WHERE owner = current_user::regrole AND name = 'sec_worker_secret'"
            ).fetchone()
        assert row == ("the worker's",), "a step changed the worker's own secret"
    finally:
        with sec.connect() as conn:
            conn.execute("SELECT df.unset_secret('sec_worker_secret')")


# -- the runners ----------------------------------------------------------------------------------------------------


def runners(conn: Conn) -> list[dict[str, Any]]:
    rows = conn.execute(
        """
        SELECT p.proname::text, p.proowner, p.prosecdef, p.proconfig, p.prosrc,
               p.proargtypes::regtype[]::text[],
               array(SELECT a.grantee::regrole::text FROM aclexplode(p.proacl) a WHERE a.privilege_type = 'EXECUTE'
                      ORDER BY 1),
               (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'df')
          FROM pg_proc p WHERE p.pronamespace = 'df_exec'::regnamespace ORDER BY 1
        """
    ).fetchall()
    keys = ("name", "owner", "secdef", "config", "src", "args", "executors", "df_owner")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def test_every_runner_is_its_roles_and_checks_who_calls_it(sec: Cast, catalog: Conn) -> None:
    found = runners(catalog)
    oids = {sec.oid(sec.attacker), sec.oid(sec.victim)}
    assert {int(r["name"].removeprefix("run_")) for r in found} >= oids
    for runner in found:
        owner = runner["owner"]
        with sec.connect() as conn:
            row = conn.execute("SELECT %s::regrole::text", (owner,)).fetchone()
        assert row is not None
        assert runner["name"] == f"run_{owner}", "named after its owner's oid"
        assert runner["args"] == ["text", "bigint"]
        assert runner["secdef"] is True
        assert runner["config"] is None, "no SET clause: the step runs with its submitter's own search_path"
        assert runner["executors"] == sorted({str(row[0]), runner["df_owner"]}), "EXECUTE: the role and the worker"
        src = runner["src"]
        assert re.search(r"v_me OPERATOR\(pg_catalog\.<>\) c_role", src), "identity check that cannot be redirected"
        assert "pg_catalog.pg_db_role_setting" in src and "pg_catalog.set_config(v_name, v_value, true)" in src
        assert "rolcanlogin" in src and "df._superuser_instances_allowed()" in src


def test_no_role_may_create_in_or_use_df_exec(sec: Cast, catalog: Conn) -> None:
    row = catalog.execute(
        "SELECT array(SELECT r.rolname::text FROM pg_roles r"
        "  WHERE (has_schema_privilege(r.oid, 'df_exec', 'CREATE') OR has_schema_privilege(r.oid, 'df_exec', 'USAGE'))"
        "    AND NOT r.rolsuper AND r.oid <> n.nspowner AND r.oid >= 16384 ORDER BY 1)"  # predefined roles aside
        " FROM pg_namespace n WHERE n.nspname = 'df_exec'"
    ).fetchone()
    assert row == ([],)


@pytest.fixture
def role_settings(sec: Cast) -> Iterator[None]:
    role = sql.Identifier(sec.attacker)
    with sec.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA sec_path AUTHORIZATION {}").format(role))
        conn.execute("CREATE TABLE sec_path.where_am_i AS SELECT 'sec_path'::text AS here")
        conn.execute(sql.SQL("GRANT SELECT ON sec_path.where_am_i TO {}").format(role))
        conn.execute(sql.SQL("ALTER ROLE {} SET work_mem = '3MB'").format(role))
        conn.execute(sql.SQL("ALTER ROLE {} SET search_path = sec_path").format(role))
        conn.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout = '7s'").format(
                role, sql.Identifier(sec.db.name)
            )
        )
        conn.execute(sql.SQL("ALTER ROLE {} SET log_min_duration_statement = 1000").format(role))  # superuser-only
    yield
    with sec.connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(role))
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(role, sql.Identifier(sec.db.name)))
        conn.execute("DROP SCHEMA sec_path CASCADE")


@pytest.mark.usefixtures("role_settings")
def test_a_step_has_its_roles_settings(sec: Cast) -> None:
    """As if the step had logged in as its role: ALTER ROLE ... SET applies, IN DATABASE too, and the role's
    search_path (not the worker's) resolves its names. A setting only a superuser could make is skipped."""
    rows = sec.rows(
        sec.step(
            sec.attacker,
            "SELECT current_setting('work_mem') AS work_mem, current_setting('statement_timeout') AS timeout,"
            " (SELECT here FROM where_am_i) AS here",
        )
    )
    assert rows == [{"work_mem": "3MB", "timeout": "7s", "here": "sec_path"}]
    # and only there: the victim's step has the defaults
    rows = sec.rows(sec.step(sec.victim, "SELECT current_setting('work_mem') AS work_mem"))
    assert rows != [{"work_mem": "3MB"}]


# -- row-level security and grants ----------------------------------------------------------------------------------


def test_row_level_security_is_enabled_on_every_df_table(catalog: Conn) -> None:
    row = catalog.execute(
        "SELECT array_agg(relname::text ORDER BY relname) FILTER (WHERE NOT relrowsecurity), count(*)"
        " FROM pg_class WHERE relnamespace = 'df'::regnamespace AND relkind IN ('r', 'p')"
    ).fetchone()
    assert row is not None
    assert row[0] is None, f"tables without row-level security: {row[0]}"
    assert row[1] >= 10


def test_an_application_role_may_write_no_status(sec: Cast, catalog: Conn) -> None:
    """No UPDATE or DELETE on any df table but its own variables, no INSERT of status or results, and nothing
    at all on the tables only the worker uses."""
    role = sec.attacker
    rows = catalog.execute(
        "SELECT c.relname::text, p.privilege FROM pg_class c CROSS JOIN unnest(ARRAY['UPDATE', 'DELETE', 'TRUNCATE',"
        " 'REFERENCES', 'TRIGGER']) AS p(privilege)"
        " WHERE c.relnamespace = 'df'::regnamespace AND c.relkind = 'r' AND has_table_privilege(%s, c.oid, p.privilege)"
        " ORDER BY 1, 2",
        (role,),
    ).fetchall()
    assert rows == [("vars", "DELETE"), ("vars", "UPDATE")]
    for table in ("tasks", "history", "settings", "workers", "schema_migrations"):
        assert catalog.execute(
            "SELECT has_table_privilege(%s, %s, 'SELECT') OR has_table_privilege(%s, %s, 'INSERT')",
            (role, f"df.{table}", role, f"df.{table}"),
        ).fetchone() == (False,), table
    for table, column in (
        ("instances", "status"),
        ("instances", "output"),
        ("instances", "checkpoint"),
        ("instances", "state_version"),
        ("nodes", "status"),
        ("nodes", "result"),
    ):
        assert catalog.execute(
            "SELECT has_column_privilege(%s, %s, %s, 'INSERT') OR has_column_privilege(%s, %s, %s, 'UPDATE')",
            (role, f"df.{table}", column, role, f"df.{table}", column),
        ).fetchone() == (False,), (table, column)


def test_grant_usage_says_what_its_caller_lacks(sec: Cast) -> None:
    """A delegated admin (with_grant) may grant df usage, but a runner is owned by its role: without the right to
    act as that role, df.grant_usage fails with a message that says what is missing."""
    admin = sec.roles.create("sec_delegate")
    newcomer = sec.roles.create("sec_newcomer")
    try:
        with sec.connect() as conn:
            conn.execute("SELECT df.grant_usage(%s, with_grant => true)", (admin,))
        with sec.connect(admin) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            conn.execute("SELECT df.grant_usage(%s)", (newcomer,))
        diag = raised.value.diag
        assert diag.message_primary == f"df.grant_usage: {admin} cannot create the step runner of role {newcomer}"
        assert diag.message_hint is not None and "WITH INHERIT FALSE, SET TRUE" in diag.message_hint
        with sec.connect() as conn:
            assert conn.execute("SELECT has_schema_privilege(%s, 'df', 'USAGE')", (newcomer,)).fetchone() == (False,), (
                "nothing was granted"
            )
    finally:
        with sec.connect() as conn:
            conn.execute("SELECT df.revoke_usage(%s)", (admin,))
        sec.roles.drop(admin)
        sec.roles.drop(newcomer)
