"""The login lane with a client certificate: the role's credential map names ``sslcert`` and ``sslkey`` (with
``host``, ``port``, ``sslmode`` and ``sslrootcert``), and the server authenticates it by the certificate alone
(``hostssl all <role> 127.0.0.1/32 cert``; ``local all <role> reject``).

The embedded server has no SSL, so this module runs a server of the machine's own PostgreSQL packages
(``/usr/lib/postgresql/<major>/bin``, built with SSL; on Debian 12 that is PostgreSQL 15, the oldest version
pgdurable supports), with a certificate authority made here with openssl. Without either, it is skipped.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgdurable import Worker

from .conftest import SECURITY_WORKER
from .lanes import OTHER_DB, PROBE, LaneServer, make_certs, packaged_bin_dir, prepare, start_packaged

pytestmark = pytest.mark.xdist_group("roles")


@pytest.fixture(scope="module")
def tls() -> Iterator[LaneServer]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificates to test with")
    if packaged_bin_dir() is None:
        pytest.skip("no PostgreSQL server package with SSL (/usr/lib/postgresql/*/bin) on this machine")
    home = Path(tempfile.mkdtemp(prefix="pgt-"))
    suffix = secrets.token_hex(3)
    role = f"lane_cert_{suffix}"
    certs = make_certs(home / "certs", role)
    try:
        server = start_packaged(home, certs, [f"hostssl all {role} 127.0.0.1/32 cert", f"local all {role} reject"])
    except subprocess.CalledProcessError as error:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"the packaged PostgreSQL did not start: {error.stderr!r}")
    try:
        try:
            prepare(server.dsn(), server.dsn("lanes"), [role], {})
        except psycopg.Error as error:
            pytest.fail(f"df does not install on {server.bin_dir}: {error}")
        yield LaneServer(server.dsn, server.port, certs, suffix, {})
    finally:
        server.ctl("-m", "fast", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_worker(tls: LaneServer) -> Iterator[Worker]:
    with Worker(tls.dsn(), config=SECURITY_WORKER) as worker:
        yield worker


@pytest.mark.usefixtures("tls_worker")
def test_a_client_certificate(tls: LaneServer) -> None:
    assert tls.certs is not None
    role = tls.role("lane_cert")
    server = {
        "host": "127.0.0.1",
        "port": str(tls.port),
        "sslmode": "verify-ca",
        "sslrootcert": str(tls.certs / "ca.crt"),
    }
    tls.set_credentials({role: server})  # no certificate: refused, and the instance says why
    status, output = tls.wait(tls.start(role, f"'{PROBE}'"))
    assert status == "failed" and output is not None, output
    assert output.startswith(f"cannot log in as role {role} for the autocommit lane ("), output
    tls.set_credentials(
        {role: {**server, "sslcert": str(tls.certs / "client.crt"), "sslkey": str(tls.certs / "client.key")}}
    )
    rows = tls.rows(tls.start(role, f"'{PROBE}'"))
    assert rows == [{"who": role, "login": role, "db": OTHER_DB, "ssl": True, "dn": f"/CN={role}"}]


def _server_version(tls: LaneServer) -> int:
    with tls.admin() as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.usefixtures("tls_worker")
def test_a_step_runs_as_its_role_on_this_server(tls: LaneServer, request: pytest.FixtureRequest) -> None:
    """The runner on this server (PostgreSQL 15 on Debian 12, the oldest version pgdurable intends to support)."""
    if _server_version(tls) < 160000:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="the runner reads pg_prepared_statements.result_types (0005's type probe), which "
                "PostgreSQL 16 added: on 15 every step that returns rows or is a DML statement fails",
            )
        )
    role = tls.role("lane_cert")
    rows = tls.rows(tls.start(role, "'SELECT current_user::text AS who'", database=None))
    assert rows == [{"who": role}]


@pytest.mark.usefixtures("tls_worker")
def test_no_cursor_outlives_a_step_on_this_server(tls: LaneServer) -> None:
    role = tls.role("lane_cert")
    status, output = tls.wait(tls.start(role, "'DECLARE c CURSOR WITH HOLD FOR SELECT 1'", database=None))
    assert status == "failed" and output is not None and "a step cannot leave a cursor open" in output, output
