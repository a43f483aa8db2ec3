"""Installing, upgrading and removing the df schema; the non-superuser install; the CLI."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgdurable import cli, migrate
from pgdurable.testing import MakeDatabase, TestServer

pytestmark = pytest.mark.xdist_group("roles")


def _one(dsn: str, query: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]


def test_install_is_idempotent_and_records_checksums(pg_server: TestServer, make_database: MakeDatabase) -> None:
    dsn = pg_server.dsn(make_database())
    first = migrate.install(dsn)
    assert first.applied == tuple(range(1, migrate.LATEST + 1))
    assert first.catalog_operators and first.search_path_set
    second = migrate.install(dsn)
    assert second.applied == ()
    with psycopg.connect(dsn) as conn:
        assert migrate.current_version(conn) == migrate.LATEST
        assert migrate.check_version(conn) == migrate.LATEST
        rows = conn.execute("SELECT version, checksum FROM df.schema_migrations ORDER BY version").fetchall()
    assert rows == [(m.version, m.checksum) for m in migrate.MIGRATIONS]
    assert _one(dsn, "SELECT df.schema_version()") == migrate.LATEST
    assert str(_one(dsn, "SELECT df.version()")).endswith(f"(schema {migrate.LATEST})")


def test_a_later_version_upgrades_in_place(
    pg_server: TestServer, make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = pg_server.dsn(make_database())
    monkeypatch.setattr(migrate, "MIGRATIONS", migrate.MIGRATIONS[:2])
    monkeypatch.setattr(migrate, "LATEST", 2)
    assert migrate.install(dsn).applied == (1, 2)
    with psycopg.connect(dsn) as conn:
        assert migrate.current_version(conn) == 2
    monkeypatch.undo()
    with psycopg.connect(dsn) as conn, pytest.raises(migrate.MigrationError, match="run `pgdurable init` to upgrade"):
        migrate.check_version(conn)
    assert migrate.install(dsn).applied == tuple(range(3, migrate.LATEST + 1))
    assert _one(dsn, "SELECT 'a' ~> 'b'") is not None


def test_newer_schema_and_edited_migrations_are_refused(pg_server: TestServer, make_database: MakeDatabase) -> None:
    dsn = pg_server.dsn(make_database())
    migrate.install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.schema_migrations SET checksum = 'x' WHERE version = 1")
    with pytest.raises(migrate.MigrationError, match="was applied with a different text"):
        migrate.install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO df.schema_migrations (version, name, checksum, package_version)"
            " VALUES (999, 'future', 'x', '9')"
        )
        with pytest.raises(migrate.MigrationError, match="version 999"):
            migrate.check_version(conn)
    with pytest.raises(migrate.MigrationError, match="newer than this pgdurable"):
        migrate.install(dsn)


def test_not_installed(pg_server: TestServer, make_database: MakeDatabase) -> None:
    with psycopg.connect(pg_server.dsn(make_database())) as conn:
        assert migrate.current_version(conn) is None
        with pytest.raises(migrate.MigrationError, match="not installed"):
            migrate.check_version(conn)


def test_uninstall_removes_everything(pg_server: TestServer, make_database: MakeDatabase) -> None:
    dsn = pg_server.dsn(make_database())
    migrate.install(dsn)
    assert migrate.uninstall(dsn) is True
    assert _one(dsn, "SELECT count(*) FROM pg_namespace WHERE nspname IN ('df', 'df_exec', 'df_dblink')") == 0
    assert (
        _one(
            dsn,
            "SELECT count(*) FROM pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace"
            " AND oprname IN ('~>', '|=>', '?>', '!>') ",
        )
        == 0
    )
    assert (
        _one(
            dsn,
            "SELECT count(*) FROM pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace AND oprname = '@>'"
            " AND oprleft = 0",
        )
        == 0
    )
    assert (
        _one(
            dsn,
            "SELECT count(*) FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())",
        )
        == 0
    )
    assert migrate.uninstall(dsn) is False
    # and it can come back
    assert migrate.install(dsn).applied == tuple(range(1, migrate.LATEST + 1))


def test_existing_search_path_setting_is_extended_and_restored(
    pg_server: TestServer, make_database: MakeDatabase
) -> None:
    name = make_database()
    dsn = pg_server.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = app, public").format(sql.Identifier(name)))
    migrate.install(dsn)
    assert _one(dsn, "SHOW search_path") == "app, public, df"
    migrate.uninstall(dsn)
    assert _one(dsn, "SHOW search_path") == "app, public"


def test_non_superuser_database_owner_installs(pg_server: TestServer, df_roles: Any) -> None:
    owner = df_roles.create("pgd_owner", "LOGIN", "CREATEDB")
    user = df_roles.create("pgd_user")
    dbname = df_roles.name("pgd_owned")
    with psycopg.connect(pg_server.dsn("postgres", user=owner), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        owner_dsn = pg_server.dsn(dbname, user=owner)
        result = migrate.install(owner_dsn)
        assert (result.superuser, result.catalog_operators, result.search_path_set) == (False, False, True)
        assert result.owner == owner
        assert migrate.install(owner_dsn).applied == ()
        # the runner is owned by the application role: the admin must be able to act as it
        with (
            psycopg.connect(owner_dsn, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot create the step runner"),
        ):
            conn.execute("SELECT df.grant_usage(%s)", (user,))
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(user), sql.Identifier(owner)))
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute("SELECT df.grant_usage(%s)", (user,))
        user_dsn = pg_server.dsn(dbname, user=user)
        assert _one(user_dsn, "SHOW search_path") == '"$user", public, df'
        assert _one(user_dsn, "SELECT 'a' ~> 'b'") == (
            '{"node_type":"THEN","left_node":{"node_type":"SQL","query":"a"},'
            '"right_node":{"node_type":"SQL","query":"b"}}'
        )
        assert len(str(_one(user_dsn, "SELECT df.start('SELECT 1' ~> 'SELECT 2')"))) == 8
        assert _one(user_dsn, "SELECT count(*) FROM df.instances") == 1
        assert migrate.uninstall(owner_dsn) is True
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def test_installer_who_may_not_alter_the_database_gets_the_line_to_run(
    pg_server: TestServer, make_database: MakeDatabase, df_roles: Any
) -> None:
    name = make_database()
    installer = df_roles.create("pgd_installer")
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(name), sql.Identifier(installer))
        )
    lines: list[str] = []
    result = migrate.install(pg_server.dsn(name, user=installer), echo=lines.append)
    assert not result.search_path_set
    assert result.search_path_hint == f'ALTER DATABASE "{name}" SET search_path = "$user", public, df;'
    assert f"  {result.search_path_hint}" in lines
    # the operators still resolve when qualified
    assert _one(pg_server.dsn(name, user=installer), "SELECT 'a' OPERATOR(df.~>) 'b'") is not None


def test_cli(pg_server: TestServer, make_database: MakeDatabase, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = pg_server.dsn(make_database())
    assert cli.main(["init", "--dsn", dsn]) == 0
    out = capsys.readouterr().out
    assert f"installed to version {migrate.LATEST}" in out
    assert "run `pgdurable init` again" in out
    assert cli.main(["init", "--dsn", dsn]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli.main(["uninstall", "--dsn", dsn]) == 0
    assert "removed" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert cli.main(["init", "--bogus"]) == 2
    capsys.readouterr()
    assert cli.main(["init", "--dsn", "host=/nonexistent-pgdurable dbname=x connect_timeout=2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pgdurable init: error: ") and err.count("\n") == 1
