"""Servers of their own for the login-lane tests: the roles' credentials, a df database and a second one, and
what a test does with them (start as a role, wait, read rows, set the credential map)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg import sql

from pgdurable import migrate
from pgdurable.runtime.executors.sql import CREDENTIALS_SETTING

OTHER_DB = "lane_other"
PROBE = (
    "SELECT current_user::text AS who, session_user::text AS login, current_database()::text AS db,"
    " coalesce((SELECT s.ssl FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()), false) AS ssl,"
    " (SELECT s.client_dn FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()) AS dn"
)


@dataclass
class LaneServer:
    make_dsn: Callable[[str, str], str]  # (dbname, user) -> DSN of the superuser's socket connection
    port: int
    certs: Path | None
    suffix: str
    passwords: dict[str, str]

    def role(self, base: str) -> str:
        return f"{base}_{self.suffix}"

    def dsn(self, dbname: str = "lanes", user: str = "postgres") -> str:
        return self.make_dsn(dbname, user)

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.dsn(), autocommit=True)

    def set_credentials(self, value: object) -> None:
        with self.admin() as conn:
            conn.execute(
                "INSERT INTO df.settings (key, value) VALUES (%s, %s::jsonb)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (CREDENTIALS_SETTING, json.dumps(value)),
            )

    def start(self, role: str, graph_sql: str, database: str | None = OTHER_DB) -> str:
        """Start as `role`: over the socket as the superuser, SET SESSION AUTHORIZATION (these roles may not log
        in over it without their credential)."""
        with self.admin() as conn:
            conn.execute(sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(role)))
            target = "" if database is None else f", database => '{database}'"
            row = conn.execute(f"SELECT df.start({graph_sql}{target})".encode()).fetchone()
        assert row is not None
        return str(row[0])

    def wait(self, instance_id: str, timeout: float = 60.0) -> tuple[str, str | None]:
        deadline = time.monotonic() + timeout
        with self.admin() as conn:
            while True:
                row = conn.execute("SELECT status, output FROM df.instances WHERE id = %s", (instance_id,)).fetchone()
                assert row is not None
                if row[0] in ("completed", "failed", "cancelled"):
                    return str(row[0]), row[1]
                assert time.monotonic() < deadline, f"{instance_id} still {row[0]}"
                time.sleep(0.05)

    def rows(self, instance_id: str) -> list[dict[str, Any]]:
        status, output = self.wait(instance_id)
        assert status == "completed", output
        assert output is not None
        rows: list[dict[str, Any]] = json.loads(output)["rows"]
        return rows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(where: Path, client_cn: str) -> Path:
    where.mkdir()
    openssl("req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=pgdurable test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=where)  # fmt: skip
    for name, cn in (("server", "localhost"), ("client", client_cn)):
        openssl("req", "-new", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 cwd=where)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.crt", cwd=where)  # fmt: skip
    for key in where.glob("*.key"):
        key.chmod(0o600)
    return where


def prepare(admin_dsn: str, df_dsn: str, roles: list[str], passwords: dict[str, str]) -> None:
    """The df database `lanes` (df installed, loop floor 0) and `lane_other`; the roles, granted df usage."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE lanes")
        conn.execute(f"CREATE DATABASE {OTHER_DB}".encode())
        for role in roles:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(OTHER_DB), sql.Identifier(role))
            )
        for role, password in passwords.items():
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    migrate.install(df_dsn)
    with psycopg.connect(df_dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.settings SET value = '0' WHERE key = 'loop_floor_seconds'")
        for role in roles:
            conn.execute("SELECT df.grant_usage(%s)", (role,))


@dataclass
class PackagedServer:
    """A throwaway server of the machine's own PostgreSQL packages, run as their `postgres` system user."""

    bin_dir: Path
    pgdata: Path
    port: int
    run_as: int | None

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-w", *args],
            check=True,
            capture_output=True,
            timeout=120,
            user=self.run_as,
        )

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(host=str(self.pgdata), port=str(self.port), dbname=dbname, user=user)


def packaged_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin with a server in it (Debian's packages build with SSL)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def start_packaged(home: Path, certs: Path, hba_rules: list[str]) -> PackagedServer:
    """initdb, SSL with `certs` (server.crt, server.key, ca.crt), 127.0.0.1 on a free port, `hba_rules` above
    trust for the rest; started. As root it runs as the `postgres` system user, which must exist."""
    import pwd

    bin_dir = packaged_bin_dir()
    assert bin_dir is not None
    run_as = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else None
    pgdata = home / "data"
    home.chmod(0o755)
    pgdata.mkdir()
    if run_as is not None:
        os.chown(pgdata, run_as, -1)
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
        user=run_as,
    )
    for name in ("server.crt", "server.key", "ca.crt"):
        target = pgdata / name
        shutil.copy(certs / name, target)
        if run_as is not None:
            os.chown(target, run_as, -1)
        target.chmod(0o600)
    server = PackagedServer(bin_dir, pgdata, free_port(), run_as)
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\nlisten_addresses = '127.0.0.1'\nport = {server.port}\nunix_socket_directories = '{pgdata}'\n"
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n"
            "fsync = off\n"
        )
    hba = pgdata / "pg_hba.conf"
    hba.write_text("\n".join(hba_rules) + "\n" + hba.read_text())
    server.ctl("-l", str(pgdata / "log"), "start")
    return server
