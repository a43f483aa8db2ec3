"""Escalation: a step submitted by an unprivileged role never runs with more privilege than that role, although
the worker that runs it is connected as a SUPERUSER (issue 8, design §2 "the runner").

Every attempt is a real step, run by the in-process worker, and each test checks three things:

- the attempt's instance failed, and its output says why (what a user sees in ``df.instance_info``);
- nothing changed that the attacker wanted changed: the df state of everyone else (instances, nodes, history,
  work items, settings, runners, roles) is byte-for-byte what it was, and the attacker is still no superuser;
- where the attack is code that would run as whoever executes it (a function of the attacker's), that code
  records who ran it, and never ran as the worker.

A toy runner (a step run on the worker's connection, a runner without its checks, a worker that trusted any
function named like a runner) fails these tests: each one was written against such a hole.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .conftest import Cast, q

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.xdist_group("roles")]


# -- the arena -----------------------------------------------------------------------------------------------


class Arena:
    """What the attacks aim at, made by the superuser: a secret table, the attacker's own schema with a log of
    who ran its code, and a victim instance that waits for a signal."""

    def __init__(self, sec: Cast) -> None:
        self.sec = sec
        with sec.connect() as conn:
            row = conn.execute("SELECT current_user::text").fetchone()
            assert row is not None
            self.superuser = str(row[0])
        self.victim_instance = ""

    def log(self) -> list[tuple[str, bool, str, str]]:
        """(what, ran as a superuser, current_user, the top-level statement) of every run of the attacker's code."""
        with self.sec.connect() as conn:
            rows = conn.execute("SELECT what, super, who, query FROM atk.log ORDER BY id").fetchall()
        return [(str(r[0]), bool(r[1]), str(r[2]), str(r[3])) for r in rows]

    def clear_log(self) -> None:
        with self.sec.connect() as conn:
            conn.execute("TRUNCATE atk.log")

    def fingerprint(self) -> dict[str, Any]:
        """Everything an attacker could want to change, except its own instances."""
        with self.sec.connect() as conn:
            row = conn.execute(
                """
                SELECT
                  (SELECT json_agg(i ORDER BY i.id) FROM (
                     SELECT id, status, output, checkpoint, state_version, execution_count, submitted_by::text
                       FROM df.instances WHERE submitted_by <> %(atk)s::text::regrole) i),
                  (SELECT json_agg(n ORDER BY n.instance_id, n.id) FROM (
                     SELECT instance_id, id, status, result, query FROM df.nodes
                      WHERE submitted_by <> %(atk)s::text::regrole) n),
                  (SELECT json_agg(h ORDER BY h.instance_id, h.seq) FROM (
                     SELECT h.instance_id, h.seq, h.event FROM df.history h JOIN df.instances i ON i.id = h.instance_id
                      WHERE i.submitted_by <> %(atk)s::text::regrole) h),
                  (SELECT json_agg(t ORDER BY t.instance_id, t.frame) FROM (
                     SELECT t.instance_id, t.frame, t.kind, t.wake_at FROM df.tasks t
                       JOIN df.instances i ON i.id = t.instance_id WHERE i.submitted_by <> %(atk)s::text::regrole) t),
                  (SELECT json_agg(s ORDER BY s.key) FROM df.settings s),
                  (SELECT json_agg(json_build_object('name', p.proname, 'owner', p.proowner, 'secdef', p.prosecdef,
                                                     'config', p.proconfig, 'src', md5(p.prosrc)) ORDER BY p.proname)
                     FROM pg_proc p WHERE p.pronamespace = 'df_exec'::regnamespace),
                  (SELECT json_agg(r ORDER BY r.rolname) FROM (
                     SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication
                       FROM pg_roles WHERE rolname::text IN (%(atk)s::text, %(vic)s::text)) r),
                  (SELECT json_agg(v ORDER BY v.owner, v.name) FROM (
                     SELECT name, value, owner::text FROM df.vars WHERE owner <> %(atk)s::text::regrole) v),
                  (SELECT json_agg(a ORDER BY a.relname) FROM (
                     SELECT c.relname, c.relacl::text, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
                      WHERE c.relnamespace = 'df'::regnamespace AND c.relkind = 'r') a),
                  (SELECT nspacl::text FROM pg_namespace WHERE nspname = 'df_exec')
                """,
                {"atk": self.sec.attacker, "vic": self.sec.victim},
            ).fetchone()
        assert row is not None
        names = ("instances", "nodes", "history", "tasks", "settings", "runners", "roles", "vars", "tables", "df_exec")
        return dict(zip(names, row, strict=True))


@pytest.fixture(scope="module")
def arena(sec: Cast) -> Iterator[Arena]:
    atk, vic = sql.Identifier(sec.attacker), sql.Identifier(sec.victim)
    with sec.connect() as conn:
        conn.execute("CREATE TABLE sec_secret (v text)")
        conn.execute("INSERT INTO sec_secret VALUES ('top secret')")
        conn.execute(sql.SQL("GRANT SELECT ON sec_secret TO {}").format(vic))  # the victim may read it
        conn.execute(sql.SQL("CREATE SCHEMA atk AUTHORIZATION {}").format(atk))
    with sec.connect(sec.attacker) as conn:
        conn.execute(
            "CREATE TABLE atk.log (id bigint GENERATED ALWAYS AS IDENTITY, what text, super boolean, who text,"
            " query text)"
        )
        conn.execute("GRANT USAGE ON SCHEMA atk TO PUBLIC")
        conn.execute("GRANT INSERT ON atk.log TO PUBLIC")
        # Code of the attacker's: it records who runs it and, run by a superuser, makes the attacker one.
        conn.execute(
            sql.SQL(
                """
                CREATE FUNCTION atk.escalate(what text DEFAULT 'escalate') RETURNS integer LANGUAGE plpgsql AS $$
                DECLARE
                    v_super boolean := (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);
                BEGIN
                    INSERT INTO atk.log (what, super, who, query)
                    VALUES (what, v_super, current_user, pg_catalog.current_query());
                    IF v_super THEN
                        EXECUTE {};
                    END IF;
                    RETURN 1;
                END $$
                """
            ).format(sql.Literal(sql.SQL("ALTER ROLE {} SUPERUSER").format(atk).as_string(conn)))
        )
        conn.execute("GRANT EXECUTE ON FUNCTION atk.escalate(text) TO PUBLIC")
        conn.execute(
            "CREATE FUNCTION atk.escalate_trigger() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN PERFORM atk.escalate('deferred trigger'); RETURN NULL; END $$"
        )
        conn.execute("CREATE TABLE atk.t (v int)")
        conn.execute(
            "CREATE CONSTRAINT TRIGGER escalate_at_commit AFTER INSERT ON atk.t DEFERRABLE INITIALLY DEFERRED"
            " FOR EACH ROW EXECUTE FUNCTION atk.escalate_trigger()"
        )
        conn.execute(
            "CREATE PROCEDURE atk.committing() LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO atk.log (what) VALUES ('before commit'); COMMIT; END $$"
        )
        conn.execute("SELECT df.setvar('color', 'red')")
    with sec.connect(sec.victim) as conn:
        conn.execute("SELECT df.setvar('color', 'blue')")
    found = Arena(sec)
    found.victim_instance = sec.start(sec.victim, "df.wait_for_signal('go') ~> 'SELECT 42 AS answer'")
    # the fingerprints compare the victim's instance: let the worker begin it before any test looks
    deadline = time.monotonic() + 60
    with sec.connect() as conn:
        while conn.execute(
            "SELECT waiting_for = %s FROM df.instances WHERE id = %s", ("signal 'go'", found.victim_instance)
        ).fetchone() != (True,):
            assert time.monotonic() < deadline, "the victim's instance never began"
            time.sleep(0.05)
    yield found
    with sec.connect() as conn:
        conn.execute("DROP SCHEMA atk CASCADE")
        conn.execute("DROP TABLE sec_secret")


def assert_unharmed(arena: Arena, before: dict[str, Any]) -> None:
    after = arena.fingerprint()
    for key, value in before.items():
        assert after[key] == value, f"{key} changed"
    assert not [entry for entry in arena.log() if entry[1]], "the attacker's code ran as a superuser"


def assert_refused(arena: Arena, statement: str, *fragments: str) -> str:
    """Run `statement` as a step of the attacker: it fails, its output says why, and nothing else changed."""
    before = arena.fingerprint()
    status, output = arena.sec.run(arena.sec.attacker, statement)
    assert status == "failed", f"{statement!r} completed: {output}"
    assert output is not None and output.startswith("SQL execution failed: "), output
    for fragment in fragments:
        assert fragment in output, f"{output!r} does not say {fragment!r}"
    assert_unharmed(arena, before)
    return output


def node_results(sec: Cast, instance_id: str) -> list[tuple[str, str, Any]]:
    with sec.connect() as conn:
        rows = conn.execute(
            "SELECT node_type, status, result FROM df.nodes WHERE instance_id = %s ORDER BY created_at, id",
            (instance_id,),
        ).fetchall()
    return [(str(r[0]), str(r[1]), r[2]) for r in rows]


# -- the premise ------------------------------------------------------------------------------------------------


def test_the_worker_is_a_superuser_that_owns_df(sec: Cast, arena: Arena) -> None:
    with sec.connect() as conn:
        row = conn.execute(
            "SELECT r.rolsuper, n.nspowner::regrole::text = current_user"
            " FROM pg_roles r, pg_namespace n WHERE r.rolname = current_user AND n.nspname = 'df'"
        ).fetchone()
    assert row == (True, True)


def test_a_step_runs_as_its_submitter(sec: Cast, arena: Arena) -> None:
    rows = sec.rows(
        sec.step(
            sec.attacker,
            "SELECT current_user::text AS who, r.rolsuper, has_table_privilege('sec_secret', 'SELECT') AS may_read"
            " FROM pg_roles r WHERE r.rolname = current_user",
        )
    )
    assert rows == [{"who": sec.attacker, "rolsuper": False, "may_read": False}]
    # and the victim, who may read the secret, reads it: the table is there to be stolen
    assert sec.value(sec.victim, "SELECT v FROM sec_secret") == "top secret"


# -- privileges ---------------------------------------------------------------------------------------------------


def test_a_table_without_rights_cannot_be_read(sec: Cast, arena: Arena) -> None:
    assert_refused(arena, "SELECT v FROM sec_secret", "permission denied for table sec_secret")
    with sec.connect() as conn:
        leaked = conn.execute(
            "SELECT count(*) FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id"
            " WHERE i.submitted_by = %s::regrole AND (n.result::text LIKE '%%top secret%%'"
            "  OR i.output LIKE '%%top secret%%')",
            (sec.attacker,),
        ).fetchone()
    assert leaked == (0,)


@pytest.mark.parametrize(
    "statement",
    [
        "RESET ROLE",
        "SET ROLE {superuser}",
        "SET LOCAL ROLE {superuser}",
        "SET ROLE {victim}",
        "SELECT set_config('role', '{superuser}', false)",
        "SELECT set_config('role', '{superuser}', true)",
        "DO $$ BEGIN EXECUTE 'RESET ROLE'; PERFORM atk.escalate('after RESET ROLE'); END $$",
    ],
)
def test_the_worker_role_cannot_be_regained_with_role(sec: Cast, arena: Arena, statement: str) -> None:
    with sec.connect() as conn:  # even a role the attacker is a member of is refused
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(sec.victim), sql.Identifier(sec.attacker)))
    try:
        text = statement.format(superuser=arena.superuser, victim=sec.victim)
        assert_refused(arena, text, 'cannot set parameter "role" within security-definer function')
    finally:
        with sec.connect() as conn:
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(sec.victim), sql.Identifier(sec.attacker)))


@pytest.mark.parametrize(
    "statement",
    [
        "SET SESSION AUTHORIZATION {superuser}",
        "SET SESSION AUTHORIZATION DEFAULT",
        "RESET SESSION AUTHORIZATION",
        "SELECT set_config('session_authorization', '{superuser}', false)",
    ],
)
def test_the_worker_role_cannot_be_regained_with_session_authorization(sec: Cast, arena: Arena, statement: str) -> None:
    text = statement.format(superuser=arena.superuser)
    assert_refused(arena, text, 'cannot set parameter "session_authorization" within security-definer function')


@pytest.mark.parametrize(
    ("statement", "says"),
    [
        ("COMMIT", "EXECUTE of transaction commands is not implemented"),
        ("ROLLBACK", "EXECUTE of transaction commands is not implemented"),
        ("BEGIN", "EXECUTE of transaction commands is not implemented"),
        ("SAVEPOINT s", "EXECUTE of transaction commands is not implemented"),
        ("PREPARE TRANSACTION 'sec'", "EXECUTE of transaction commands is not implemented"),
        ("DO $$ BEGIN INSERT INTO atk.log (what) VALUES ('before commit'); COMMIT; END $$", "invalid transaction"),
        ("CALL atk.committing()", "invalid transaction termination"),
    ],
)
def test_a_step_cannot_commit_midway(sec: Cast, arena: Arena, statement: str, says: str) -> None:
    arena.clear_log()
    assert_refused(arena, statement, says)
    assert arena.log() == [], "what the step did before its COMMIT was committed"


# -- settings -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setter", "probe", "expected"),
    [
        ("SET work_mem = '7MB'", "SELECT current_setting('work_mem') <> '7MB' AS ok", True),
        ("SELECT set_config('work_mem', '7MB', false)", "SELECT current_setting('work_mem') <> '7MB' AS ok", True),
        ("SET search_path = atk", "SELECT current_setting('search_path') NOT LIKE 'atk%' AS ok", True),
        ("SET statement_timeout = 1", "SELECT true AS ok FROM pg_sleep(0.05)", True),
        ("SET lock_timeout = 1", "SELECT current_setting('lock_timeout') = '0' AS ok", True),
        ("SET default_transaction_read_only = on", "SELECT current_setting('transaction_read_only') AS ok", "off"),
        ("SELECT set_config('app.tenant', 'x', false)", "SELECT current_setting('app.tenant', true) AS ok", None),
    ],
)
def test_a_session_setting_does_not_reach_the_next_step(
    sec: Cast, arena: Arena, setter: str, probe: str, expected: object
) -> None:
    """A SET without LOCAL persists in a session. It must neither reach the next step nor the worker's own
    statements (a statement_timeout of 1 ms there would make every commit of the worker fail)."""
    instance = sec.start(sec.attacker, f"{q(setter)} ~> {q(probe)}")
    status, output = sec.wait(instance)
    assert status == "completed", output
    assert output is not None
    ok = json.loads(output)["rows"][0]["ok"]
    assert ok in (None, "") if expected is None else ok == expected


def test_a_step_cannot_make_the_workers_transaction_read_only(sec: Cast, arena: Arena) -> None:
    """A read-only transaction would make the worker's own writes fail after the step (it used to kill the
    worker's slot: every later step on it hung)."""
    for statement in ("SET transaction_read_only = on", "SET TRANSACTION READ ONLY"):
        assert_refused(arena, statement, "a step cannot make its transaction read-only")
    for _ in range(8):  # more than the worker's slots: none of them died
        assert sec.value(sec.victim, "SELECT 1 AS one") == 1


# -- code that would run after the step, as the worker --------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "DECLARE c CURSOR WITH HOLD FOR SELECT atk.escalate('with hold cursor')",
        "DECLARE c CURSOR FOR SELECT atk.escalate('cursor')",
        "DO $$ BEGIN EXECUTE 'DECLARE c CURSOR WITH HOLD FOR SELECT atk.escalate(''cursor in DO'')'; END $$",
    ],
)
def test_no_cursor_outlives_the_step(sec: Cast, arena: Arena, statement: str) -> None:
    """A cursor WITH HOLD is run to completion at COMMIT, by the worker: its functions would run as a superuser."""
    assert_refused(arena, statement, "a step cannot leave a cursor open")


def test_a_deferred_trigger_fires_inside_the_step_as_its_submitter(sec: Cast, arena: Arena) -> None:
    """Before PostgreSQL 18 a deferred trigger ran as whoever was current_user at COMMIT: the worker. The runner
    fires them before it returns, so they run as the submitter, whatever the server version."""
    arena.clear_log()
    before = arena.fingerprint()
    status, output = sec.run(sec.attacker, "INSERT INTO atk.t VALUES (1)")
    assert status == "completed", output
    log = arena.log()
    assert [(what, sup, who) for what, sup, who, _ in log] == [("deferred trigger", False, sec.attacker)]
    assert "(SELECT df_exec." in log[0][3], f"it fired at {log[0][3]!r}, not inside the runner"
    assert_unharmed(arena, before)


def test_the_workers_prepared_statements_cannot_be_replaced(sec: Cast, arena: Arena) -> None:
    """The worker's driver prepares its statements by name on the session where steps run. A step that
    replaced one (same name, same parameter types) would have the worker run the step's SQL as the worker."""
    arena.clear_log()
    tamper = """DO $x$ DECLARE r record; BEGIN
        FOR r IN SELECT name, parameter_types FROM pg_prepared_statements LOOP
            EXECUTE format('DEALLOCATE %I', r.name);
            EXECUTE format('PREPARE %I%s AS SELECT atk.escalate(''prepared statement'')', r.name,
                           CASE WHEN cardinality(r.parameter_types) > 0
                                THEN '(' || array_to_string(r.parameter_types::text[], ',') || ')' ELSE '' END);
        END LOOP;
    END $x$"""
    assert_refused(arena, tamper, "a step cannot change the prepared statements of the worker's session")
    assert_refused(arena, "DEALLOCATE ALL", "a step cannot change the prepared statements of the worker's session")
    assert arena.log() == []
    for _ in range(8):  # every slot still works
        assert sec.value(sec.victim, "SELECT 1 AS one") == 1


# -- df's own tables and functions ----------------------------------------------------------------------------------

DF_ATTEMPTS = [
    ("UPDATE df.instances SET status = 'completed'", "permission denied for table instances"),
    ("UPDATE df.instances SET output = 'forged' WHERE id = '{victim_instance}'", "permission denied for table"),
    ("DELETE FROM df.instances", "permission denied for table instances"),
    ("UPDATE df.nodes SET status = 'completed', result = '{{}}'", "permission denied for table nodes"),
    (
        "INSERT INTO df.instances (id, root_node, graph, status) VALUES ('0badf00d', '0badf00d', '{{}}', 'completed')",
        "permission denied for table instances",
    ),
    (
        "INSERT INTO df.nodes (instance_id, id, node_type, query, status, result)"
        " VALUES ('{sys_instance_id}', '0badf00d', 'SQL', 'SELECT 1', 'completed', '{{}}')",
        "permission denied for table nodes",
    ),
    ("INSERT INTO df.history (instance_id, seq, event) VALUES ('{victim_instance}', 99, '{{}}')", "permission denied"),
    ("SELECT count(*) FROM df.history", "permission denied for table history"),
    ("INSERT INTO df.tasks (instance_id, frame, kind) VALUES ('{victim_instance}', 'x', 'sql')", "permission denied"),
    ("UPDATE df.tasks SET lease_owner = NULL, lease_expires = NULL", "permission denied for table tasks"),
    ("DELETE FROM df.tasks", "permission denied for table tasks"),
    ("SELECT * FROM df.settings", "permission denied for table settings"),
    ("UPDATE df.settings SET value = 'true' WHERE key = 'allow_superuser_instances'", "permission denied"),
    ("SELECT * FROM df.workers", "permission denied for table workers"),
    ("SELECT df._setting_bool('http_enabled')", "permission denied for function _setting_bool"),
    ("SELECT df._install_runner('{attacker}')", "cannot create the step runner"),
    ("SELECT df._install_runner('{victim}')", "cannot create the step runner"),
    ("SELECT df._drop_runner('{victim}')", "permission denied for function _drop_runner"),
    (
        'SELECT df._start_as(\'{victim}\'::regrole, \'{{"node_type":"SQL","query":"SELECT 1"}}\', NULL, NULL)',
        "permission denied for function _start_as",
    ),
    (
        'SELECT df._start_new(\'{victim}\'::regrole, \'{{"node_type":"SQL","query":"SELECT 1"}}\', NULL, NULL)',
        "cannot be called inside a workflow",
    ),
    ("SELECT df.metrics()", "permission denied for function metrics"),
    ("SELECT df.grant_usage('{attacker}', true, true)", "permission denied for function grant_usage"),
    (
        "INSERT INTO df.signals (instance_id, signal_name, payload, submitted_by)"
        " VALUES ('{victim_instance}', 'go', '{{}}', '{victim}')",
        "row-level security",
    ),
    (
        "INSERT INTO df.cancel_requests (instance_id, reason) VALUES ('{victim_instance}', 'forged')",
        "foreign key",
    ),
    ("INSERT INTO df.vars (name, value, owner) VALUES ('color', 'green', '{victim}')", "row-level security"),
    ("UPDATE df.vars SET owner = '{victim}'", "row-level security"),
    ("ALTER TABLE df.instances DISABLE ROW LEVEL SECURITY", "must be owner of table instances"),
    ("CREATE POLICY everything ON df.instances USING (true)", "must be owner of table instances"),
    (
        "CREATE TRIGGER t AFTER INSERT ON df.instances FOR EACH ROW EXECUTE FUNCTION atk.escalate_trigger()",
        "permission denied for table instances",
    ),
    ("DROP FUNCTION df_exec.run_{victim_oid}(text, bigint)", "permission denied for schema df_exec"),
    (
        "CREATE FUNCTION df_exec.run_{victim_oid}(p_sql text, p_max_bytes bigint) RETURNS text"
        " LANGUAGE sql SECURITY DEFINER AS $$ SELECT NULL::text $$",
        "permission denied for schema df_exec",
    ),
    (
        "CREATE OR REPLACE FUNCTION df_exec.run_{victim_oid}(p_sql text, p_max_bytes bigint) RETURNS text"
        " LANGUAGE sql AS $$ SELECT NULL::text $$",
        "permission denied for schema df_exec",
    ),
    ("ALTER FUNCTION df_exec.run_{victim_oid}(text, bigint) SECURITY INVOKER", "permission denied for schema"),
    ("ALTER FUNCTION df_exec.run_{attacker_oid}(text, bigint) SECURITY INVOKER", "permission denied for schema"),
    ("ALTER FUNCTION df_exec.run_{victim_oid}(text, bigint) OWNER TO {attacker}", "permission denied for schema"),
    ("SELECT df_exec.run_{victim_oid}('SELECT 1', 100)", "permission denied for schema df_exec"),
]


def _df_attempt(arena: Arena, template: str) -> str:
    sec = arena.sec
    return template.format(
        victim_instance=arena.victim_instance,
        victim=sec.victim,
        attacker=sec.attacker,
        victim_oid=sec.oid(sec.victim),
        attacker_oid=sec.oid(sec.attacker),
        sys_instance_id="{sys_instance_id}",
    )


@pytest.mark.parametrize(("template", "says"), DF_ATTEMPTS, ids=[f"df-{i:02d}" for i in range(len(DF_ATTEMPTS))])
def test_a_step_cannot_write_df_or_call_its_internals(sec: Cast, arena: Arena, template: str, says: str) -> None:
    assert_refused(arena, _df_attempt(arena, template), says)


@pytest.mark.parametrize(("template", "says"), DF_ATTEMPTS, ids=[f"df-{i:02d}" for i in range(len(DF_ATTEMPTS))])
def test_the_same_attempts_fail_in_the_attackers_own_session(sec: Cast, arena: Arena, template: str, says: str) -> None:
    statement = _df_attempt(arena, template).replace("{sys_instance_id}", "00000000")
    before = arena.fingerprint()
    with sec.connect(sec.attacker) as conn, pytest.raises(psycopg.Error):
        conn.execute(statement.encode())
    assert_unharmed(arena, before)


def test_the_victim_instance_still_runs_as_the_victim(sec: Cast, arena: Arena) -> None:
    """After every attempt: the victim's instance is intact and finishes as it should, when its owner says so."""
    with sec.connect(sec.victim) as conn:
        conn.execute("SELECT df.signal(%s, 'go')", (arena.victim_instance,))
    status, output = sec.wait(arena.victim_instance)
    assert (status, output) == ("completed", '{"rows":[{"answer":42}],"row_count":1}')
    arena.victim_instance = sec.start(sec.victim, "df.wait_for_signal('go') ~> 'SELECT 42 AS answer'")


# -- forging checkpoints --------------------------------------------------------------------------------------------


def test_a_step_cannot_forge_another_nodes_checkpoint(sec: Cast, arena: Arena) -> None:
    """What a step returns is data of its own node; it cannot make itself another node's result, nor the
    instance's. The workflow's second step returns what looks like the worker's events and checkpoint."""
    forged = {
        "type": "StepSucceeded",
        "frame": "root.right",
        "result": '{"rows":[{"c":666}],"row_count":1}',
    }
    graph = (
        "'SELECT 1 AS a' ~> "
        + q(f"SELECT {q(json.dumps(forged))}::json AS event, '{{}}'::jsonb AS checkpoint")
        + " ~> 'SELECT 3 AS c'"
    )
    instance = sec.start(sec.attacker, graph)
    assert sec.wait(instance) == ("completed", '{"rows":[{"c":3}],"row_count":1}')
    results = [r for t, _, r in node_results(sec, instance) if t == "SQL"]
    assert {"rows": [{"c": 3}], "row_count": 1} in results
    assert not any(r == {"rows": [{"c": 666}], "row_count": 1} for r in results)
    with sec.connect() as conn:
        events = [
            json.loads(e)["type"]
            for (e,) in conn.execute("SELECT event FROM df.history WHERE instance_id = %s ORDER BY seq", (instance,))
        ]
    assert events.count("StepSucceeded") == 3  # one per step, none injected


def test_a_step_cannot_update_its_own_nodes(sec: Cast, arena: Arena) -> None:
    statement = (
        'UPDATE df.nodes SET status = \'completed\', result = \'{"rows":[{"c":666}],"row_count":1}\''
        " WHERE instance_id = '{sys_instance_id}'"
    )
    assert_refused(arena, statement, "permission denied for table nodes")


# -- runners --------------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_role(sec: Cast) -> Iterator[str]:
    """A role of this test only, prepared with df.grant_usage; revoked afterwards."""
    role = sec.roles.create(f"sec_r{secrets.token_hex(3)}")
    with sec.connect() as conn:
        conn.execute("SELECT df.grant_usage(%s)", (role,))
    yield role
    with sec.connect() as conn:
        conn.execute("SELECT df.revoke_usage(%s)", (role,))
    sec.roles.drop(role)


def test_a_runner_pre_created_for_another_role_is_never_called(sec: Cast, arena: Arena, fresh_role: str) -> None:
    """Were a function named like a role's runner put in df_exec by someone else (here the superuser does it on
    the attacker's behalf, which no role can), the worker does not call it: it checks the owner first."""
    arena.clear_log()
    oid = sec.oid(fresh_role)
    with sec.connect() as conn:
        conn.execute(sql.SQL("DROP FUNCTION df_exec.{}(text, bigint)").format(sql.Identifier(f"run_{oid}")))
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION df_exec.{}(p_sql text, p_max_bytes bigint) RETURNS text LANGUAGE sql SECURITY DEFINER"
                " AS $$ SELECT atk.escalate('pre-created runner'); SELECT '{{\"types\":null,\"rows\":[]}}'::text $$"
            ).format(sql.Identifier(f"run_{oid}"))
        )
        conn.execute(
            sql.SQL("ALTER FUNCTION df_exec.{}(text, bigint) OWNER TO {}").format(
                sql.Identifier(f"run_{oid}"), sql.Identifier(sec.attacker)
            )
        )
    status, output = sec.run(fresh_role, "SELECT 1")
    assert status == "failed"
    assert output is not None and "has no step runner" in output, output
    assert arena.log() == [], "the pre-created runner ran"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("ALTER FUNCTION {runner} SECURITY INVOKER", "called as {superuser}"),
        ("ALTER FUNCTION {runner} OWNER TO {attacker}", "called as {attacker}"),
    ],
    ids=["flipped-to-security-invoker", "handed-to-another-role"],
)
def test_a_runner_changed_after_the_worker_checked_it_refuses_to_run(
    sec: Cast, arena: Arena, fresh_role: str, change: str, says: str
) -> None:
    """The worker checks a runner's owner and SECURITY DEFINER once, then keeps it. If the function changes
    afterwards, its own first statement (current_user OPERATOR(pg_catalog.<>) its role) refuses to run."""
    assert sec.value(fresh_role, "SELECT current_user::text AS who") == fresh_role  # now the worker knows it
    runner = f"df_exec.run_{sec.oid(fresh_role)}(text, bigint)"
    with sec.connect() as conn:
        conn.execute(change.format(runner=runner, attacker=sql.Identifier(sec.attacker).as_string(conn)).encode())
    status, output = sec.run(fresh_role, "SELECT current_user::text AS who")
    assert status == "failed", output
    expected = says.format(superuser=arena.superuser, attacker=sec.attacker)
    assert output is not None and "pgdurable step runner of role" in output and expected in output, output


def test_grant_usage_re_creates_a_runner_it_finds(sec: Cast, arena: Arena, fresh_role: str) -> None:
    """df.grant_usage again (an upgrade, a repair) replaces whatever runner there is by a fresh one, owned by
    the role, SECURITY DEFINER, executable by the role and the worker only."""
    oid = sec.oid(fresh_role)
    with sec.connect() as conn:
        conn.execute(f"ALTER FUNCTION df_exec.run_{oid}(text, bigint) SECURITY INVOKER".encode())
        conn.execute("SELECT df.grant_usage(%s)", (fresh_role,))
        row = conn.execute(
            "SELECT p.proowner::regrole::text, p.prosecdef, p.proconfig,"
            " array(SELECT a.grantee::regrole::text FROM aclexplode(p.proacl) a ORDER BY 1)"
            " FROM pg_proc p WHERE p.oid = %s::regprocedure",
            (f"df_exec.run_{oid}(text, bigint)",),
        ).fetchone()
    assert row == (fresh_role, True, None, sorted([fresh_role, arena.superuser]))
    assert sec.value(fresh_role, "SELECT current_user::text AS who") == fresh_role


# -- transaction_mode 'new' from inside a step ----------------------------------------------------------------------


@pytest.fixture
def loopback(sec: Cast) -> Iterator[None]:
    """transaction_mode 'new' configured (as conformance txn-003 does): dblink back in as the df owner."""
    parts = conninfo_to_dict(sec.db.admin_dsn)
    conninfo = make_conninfo("", **{k: v for k, v in parts.items() if k in ("host", "port", "dbname", "user")})
    with sec.connect() as conn:
        conn.execute(
            "UPDATE df.settings SET value = to_jsonb(%s::text) WHERE key = 'new_transaction_conninfo'", (conninfo,)
        )
    yield
    with sec.connect() as conn:
        conn.execute("UPDATE df.settings SET value = 'null' WHERE key = 'new_transaction_conninfo'")


def test_transaction_mode_new_cannot_submit_as_another_role_from_a_step(
    sec: Cast, arena: Arena, loopback: None
) -> None:
    """Inside a step session_user is the worker, which may act as every role: df._start_new's check that the
    session user may act as the submitting role means nothing there. It used to let any step start a workflow
    as any other role, which then ran the attacker's SQL with the victim's privileges."""
    with sec.connect() as conn:
        conn.execute("CREATE TABLE atk_loot (v text)")
        conn.execute("GRANT ALL ON atk_loot TO PUBLIC")
    try:
        stolen = q(json.dumps({"node_type": "SQL", "query": "INSERT INTO atk_loot SELECT v FROM sec_secret"}))
        for statement in (
            f"SELECT df._start_new('{sec.victim}'::regrole, {stolen}, 'stolen', NULL)",
            f"SELECT df.start({stolen}, 'stolen', transaction_mode => 'new')"
            " FROM (SELECT set_config('pgdurable.in_workflow', 'off', true)) AS forged_guard",
        ):
            status, output = sec.run(sec.attacker, statement)
            assert status == "failed", output
            assert output is not None and "cannot be called inside a workflow" in output, output
        # from its own session the attacker can only submit as itself, and that works: the path is open
        with sec.connect(sec.attacker) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT df._start_new('{sec.victim}'::regrole, {stolen}, 'stolen', NULL)".encode())
            row = conn.execute("SELECT df.start('SELECT 7 AS seven', 'own', transaction_mode => 'new')").fetchone()
        assert row is not None
        assert sec.wait(str(row[0])) == ("completed", '{"rows":[{"seven":7}],"row_count":1}')
        with sec.connect() as conn:
            assert conn.execute("SELECT count(*) FROM atk_loot").fetchone() == (0,)
            assert conn.execute(
                "SELECT count(*) FROM df.instances WHERE label = 'stolen' AND submitted_by = %s::regrole", (sec.victim,)
            ).fetchone() == (0,)
    finally:
        with sec.connect() as conn:
            conn.execute("DROP TABLE atk_loot")


def test_the_attacker_is_still_nobody(sec: Cast, arena: Arena) -> None:
    with sec.connect() as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = %s", (sec.attacker,)
        ).fetchone()
    assert row == (False, False, False)
    assert not [entry for entry in arena.log() if entry[1] or entry[2] != sec.attacker]
