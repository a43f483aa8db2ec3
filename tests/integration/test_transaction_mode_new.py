"""Conformance txn-003 on the embedded default's dblink set-up: ``df.start(..., transaction_mode => 'new')``
survives the caller's rollback, and without its credential it fails with an error that names the setting.

The server is an embedded one in a temporary home of this module's own (the shared test server is never
touched), set up by `migrate.install_embedded` exactly as ``pgdurable init`` sets up the embedded default:
roles ``pgdurable`` (owner), ``pgdurable_app`` and the loopback ``pgdurable_loopback``, its pg_hba.conf
rules and the conninfo in df.settings.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgdurable import Worker, WorkerConfig, embedded, migrate
from pgdurable.embedded import APP_ROLE, LOOPBACK_ROLE, OWNER_ROLE

Conn = psycopg.Connection[tuple[Any, ...]]

SETTING = migrate.LOOPBACK_SETTING


@dataclass(frozen=True)
class Loopback:
    server: embedded.EmbeddedServer
    hba_before: os.stat_result  # pg_hba.conf as initdb left it


@pytest.fixture(scope="module")
def loopback() -> Iterator[Loopback]:
    """A fresh embedded server in a temporary home, set up as the embedded default; stopped at the end."""
    home = Path(tempfile.mkdtemp(prefix="pgd-"))  # short: the socket path must fit in 107 bytes
    server = embedded.start(home)
    try:
        assert server.started_here
        hba_before = server.hba_file.stat()
        migrate.install_embedded(server)
        yield Loopback(server, hba_before)
    finally:
        server.stop()  # started here without keep_running: the last handle stops it
        assert not embedded.is_running(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def admin(loopback: Loopback) -> Iterator[Conn]:
    with psycopg.connect(loopback.server.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def app(loopback: Loopback) -> Iterator[Conn]:
    with psycopg.connect(loopback.server.dsn("postgres", APP_ROLE), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def worker(loopback: Loopback) -> Iterator[Worker]:
    config = WorkerConfig(lease_seconds=2, poll_seconds=0.05)
    with Worker(loopback.server.dsn("postgres", OWNER_ROLE), config=config) as running:
        yield running


def one(conn: Conn, query: str, params: Sequence[object] = ()) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None, query
    return row[0]


def conninfo(admin: Conn) -> str:
    return str(one(admin, "SELECT value #>> '{}' FROM df.settings WHERE key = %s", (SETTING,)))


def start_new_and_roll_back(app: Conn, label: str) -> str:
    """txn-003's start_sql: the start is the only thing of the transaction that survives its rollback."""
    with app.transaction(force_rollback=True):
        app.execute("INSERT INTO test_txnmode_main (id) VALUES (999)")
        app.execute("SELECT df.setvar('uncommitted', 'x')")
        return str(
            one(
                app,
                "SELECT df.start('INSERT INTO test_txnmode_audit (message) VALUES (''logged from new transaction'')',"
                " %s, transaction_mode => 'new')",
                (label,),
            )
        )


@pytest.fixture(scope="module", autouse=True)
def txnmode_tables(loopback: Loopback) -> None:
    """txn-003's setup_sql, as the superuser, with the application role allowed to write."""
    with psycopg.connect(loopback.server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE test_txnmode_audit (id SERIAL, message TEXT)")
        conn.execute("CREATE TABLE test_txnmode_main (id INT)")
        conn.execute(f"GRANT ALL ON test_txnmode_audit, test_txnmode_main, test_txnmode_audit_id_seq TO {APP_ROLE}")


# --- the set-up --------------------------------------------------------------------------------------------


def test_init_sets_up_a_least_privilege_loopback(loopback: Loopback, admin: Conn, app: Conn) -> None:
    server = loopback.server
    params = conninfo_to_dict(conninfo(admin))
    assert (params["host"], params["port"], params["dbname"], params["user"]) == (
        server.host,
        str(server.port),
        "postgres",
        LOOPBACK_ROLE,
    )
    assert len(str(params["password"])) >= 32

    # A LOGIN role that can run df._start_as and nothing else of df; not the owner, not a member of it.
    assert admin.execute(
        "SELECT rolcanlogin, rolsuper, rolinherit, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = %s",
        (LOOPBACK_ROLE,),
    ).fetchone() == (True, False, False, False, False)
    assert one(admin, "SELECT count(*) FROM pg_auth_members WHERE member = %s::regrole", (LOOPBACK_ROLE,)) == 0
    assert one(admin, "SELECT pg_has_role(%s, %s, 'MEMBER')", (LOOPBACK_ROLE, OWNER_ROLE)) is False
    start_as = "df._start_as(regrole, text, text, text)"
    assert one(admin, "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (LOOPBACK_ROLE, start_as)) is True
    assert one(admin, "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (APP_ROLE, start_as)) is False
    for table in ("df.settings", "df.instances", "df.nodes"):
        assert one(admin, "SELECT has_table_privilege(%s, %s, 'SELECT')", (LOOPBACK_ROLE, table)) is False
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the password is the owner's secret
        app.execute("SELECT value FROM df.settings")

    # Its rules come first (above initdb's trust lines), once each; the file kept its owner and mode.
    rules = admin.execute(
        "SELECT type, user_name, auth_method FROM pg_hba_file_rules WHERE error IS NULL ORDER BY rule_number"
    ).fetchall()
    assert rules[:2] == [("local", [LOOPBACK_ROLE], "scram-sha-256"), ("host", [LOOPBACK_ROLE], "scram-sha-256")]
    assert sum(user == [LOOPBACK_ROLE] for _, user, _ in rules) == 2
    assert any(method == "trust" for *_, method in rules[2:])
    after = server.hba_file.stat()
    before = loopback.hba_before
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)

    # So the loopback cannot log in without its password, however it connects to the socket.
    no_password = {k: v for k, v in params.items() if k != "password"}
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(make_conninfo(**no_password, passfile=os.devnull)).close()  # type: ignore[arg-type]


def test_a_second_init_keeps_the_role_the_password_and_the_rules(loopback: Loopback, admin: Conn) -> None:
    server = loopback.server
    stored, hba = conninfo(admin), server.hba_file.read_text()
    verifier = one(admin, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (LOOPBACK_ROLE,))
    assert str(verifier).startswith("SCRAM-SHA-256$")

    result = migrate.install_embedded(server)

    assert result.loopback_role == LOOPBACK_ROLE
    assert result.messages[-1] == f"transaction_mode => 'new' is configured (dblink loopback as {LOOPBACK_ROLE})"
    assert conninfo(admin) == stored
    assert one(admin, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (LOOPBACK_ROLE,)) == verifier
    assert server.hba_file.read_text() == hba


# --- conformance txn-003 ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("worker")
def test_txn_003_a_new_mode_start_survives_the_callers_rollback(app: Conn) -> None:
    app.execute("SELECT df.setvar('committed', 'yes')")
    try:
        instance = start_new_and_roll_back(app, "test-txnmode-survives")
    finally:
        app.execute("SELECT df.clearvars()")

    assert one(app, "SELECT count(*) FROM test_txnmode_main") == 0
    found = one(
        app,
        "SELECT id FROM df.instances WHERE label = 'test-txnmode-survives' ORDER BY created_at DESC LIMIT 1",
    )
    assert found == instance
    # Submitted as the caller, by the loopback session; its vars snapshot saw committed rows only.
    assert one(app, "SELECT submitted_by::text FROM df.instances WHERE id = %s", (instance,)) == APP_ROLE
    assert one(app, "SELECT vars FROM df.instances WHERE id = %s", (instance,)) == {"committed": "yes"}
    assert one(app, "SELECT df.await_instance(%s)", (instance,)) == "completed"
    assert one(app, "SELECT count(*) FROM test_txnmode_audit WHERE message = 'logged from new transaction'") == 1


@pytest.mark.usefixtures("worker")
def test_txn_003_part_3_a_new_mode_start_in_a_do_block_is_visible_at_once(app: Conn) -> None:
    app.execute(
        """
        DO $$
        DECLARE
            v_id text := df.start('SELECT 1', 'test-txnmode-plain', NULL, 'new');
        BEGIN
            IF length(v_id) <> 8 OR NOT EXISTS (SELECT 1 FROM df.instances WHERE id = v_id) THEN
                RAISE EXCEPTION 'instance % is not visible', v_id;
            END IF;
        END
        $$
        """
    )
    instance = one(app, "SELECT id FROM df.instances WHERE label = 'test-txnmode-plain'")
    assert one(app, "SELECT df.await_instance(%s)", (instance,)) == "completed"


# --- without the credential ---------------------------------------------------------------------------------


def test_without_the_credential_a_new_mode_start_fails_naming_the_setting(
    loopback: Loopback, admin: Conn, app: Conn
) -> None:
    stored = conninfo(admin)
    admin.execute("DELETE FROM df.settings WHERE key = %s", (SETTING,))
    try:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as caught:
            start_new_and_roll_back(app, "test-txnmode-unconfigured")
        assert caught.value.diag.message_primary == "df.start: transaction_mode 'new' is not configured"
        assert f"Set {SETTING} in df.settings" in str(caught.value.diag.message_hint)
        assert one(app, "SELECT count(*) FROM df.instances WHERE label = 'test-txnmode-unconfigured'") == 0
    finally:
        migrate.install_embedded(loopback.server)  # init puts it back, with a new password (the old is lost)

    assert conninfo(admin) != stored
    instance = start_new_and_roll_back(app, "test-txnmode-reconfigured")
    assert one(app, "SELECT count(*) FROM df.instances WHERE id = %s", (instance,)) == 1


def test_a_wrong_loopback_password_fails_and_init_repairs_it(loopback: Loopback, admin: Conn, app: Conn) -> None:
    stored = conninfo(admin)
    admin.execute(f"ALTER ROLE {LOOPBACK_ROLE} PASSWORD 'not-the-stored-one'")
    try:
        with pytest.raises(psycopg.Error) as caught:
            start_new_and_roll_back(app, "test-txnmode-wrong-password")
        error = caught.value
        assert error.sqlstate == "08001"
        assert f'password authentication failed for user "{LOOPBACK_ROLE}"' in str(error.diag.message_detail)
        assert one(app, "SELECT count(*) FROM df.instances WHERE label = 'test-txnmode-wrong-password'") == 0
    finally:
        migrate.install_embedded(loopback.server)  # the stored password is given back to the role

    assert conninfo(admin) == stored
    instance = start_new_and_roll_back(app, "test-txnmode-repaired")
    assert one(app, "SELECT count(*) FROM df.instances WHERE id = %s", (instance,)) == 1


# --- the pg_hba.conf block -------------------------------------------------------------------------------------


def test_the_hba_block_goes_above_the_first_rule_once() -> None:
    from pgdurable.embedded import _with_hba_block

    initdb = "# TYPE  DATABASE  USER  METHOD\n\n# unix sockets\nlocal all all trust\nhost all all ::1/128 trust\n"
    rules = ["local all lb scram-sha-256"]
    once = _with_hba_block(initdb, "t", rules)
    assert once.splitlines()[2:6] == [
        "# BEGIN pgdurable t (written by `pgdurable init`; must stay above the other rules)",
        "local all lb scram-sha-256",
        "# END pgdurable t",
        "# unix sockets",
    ]
    assert _with_hba_block(once, "t", rules) == once
    # A block that drifted below the trust lines moves back up; changed rules replace the old ones.
    drifted = initdb + "\n".join(once.splitlines()[2:5]) + "\n"
    assert _with_hba_block(drifted, "t", rules) == once
    assert _with_hba_block(once, "t", ["local all lb md5"]).count("lb") == 1
