"""The test-server plumbing itself: a real server, template clones, the chooser's order, embedded lifetimes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import pgdurable
from pgdurable import embedded, testing
from pgdurable.testing import MakeDatabase, TestServer


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    """A home of its own for a test that starts and stops embedded servers (never the shared one)."""
    home = Path(tempfile.mkdtemp(prefix="pgd-"))  # short: the socket path must fit in 107 bytes
    try:
        yield home
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point Docker at a socket nobody listens on, so no engine answers."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.delenv(testing.TEST_DOCKER_ENV, raising=False)


def test_the_fixture_is_a_real_postgresql(pg_server: TestServer) -> None:
    with psycopg.connect(pg_server.admin_dsn) as conn:
        version, superuser, dbname = conn.execute(
            "SELECT version(), current_setting('is_superuser'), current_database()"
        ).fetchone() or ("", "", "")
    assert version.startswith("PostgreSQL ")
    assert (superuser, dbname) == ("on", "postgres") or pg_server.source == "env"


def test_a_clone_copies_its_template_and_is_independent(pg_server: TestServer, make_database: MakeDatabase) -> None:
    template = make_database()
    with psycopg.connect(pg_server.dsn(template), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1), (2)")

    clone = make_database(template=template)

    with psycopg.connect(pg_server.dsn(clone), autocommit=True) as conn:
        assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
        conn.execute("INSERT INTO t VALUES (3)")
    with psycopg.connect(pg_server.dsn(template)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_the_database_fixture_is_fresh_and_empty(database: str) -> None:
    with psycopg.connect(database) as conn:
        name, tables = conn.execute(
            "SELECT current_database(),"
            " (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%')"
        ).fetchone() or ("", -1)
    assert name.startswith("pgdurable_test_")
    assert tables == 0


def test_database_names_carry_the_worker_and_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    names = {testing.unique_database_name() for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith("pgdurable_test_gw3_") and len(name) <= 63 for name in names)
    with pytest.raises(ValueError, match="prefix"):
        testing.unique_database_name("Bad-Prefix")


def test_dropping_a_template_database_works(pg_server: TestServer) -> None:
    name = testing.unique_database_name()
    testing.create_database(pg_server.admin_dsn, name)
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE true')
    with psycopg.connect(pg_server.dsn(name)):  # an open session does not block the drop (FORCE)
        testing.drop_database(pg_server.admin_dsn, name)
    with psycopg.connect(pg_server.admin_dsn) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
    testing.drop_database(pg_server.admin_dsn, name)  # absent: a no-op


def test_the_env_dsn_comes_first(pg_server: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(testing.TEST_DSN_ENV, pg_server.admin_dsn)
    with testing.test_server() as server:
        assert server.source == "env"
        assert server.admin_dsn == pg_server.admin_dsn
        with psycopg.connect(server.dsn("postgres")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.usefixtures("no_docker")
def test_the_docker_probe_gives_up_quickly() -> None:
    began = time.monotonic()
    assert testing.docker_available() is False
    assert time.monotonic() - began < 5


@pytest.mark.usefixtures("no_docker")
def test_without_env_dsn_or_docker_the_chooser_starts_the_embedded_server(
    pg_server: TestServer, embedded_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(testing.TEST_DSN_ENV, raising=False)
    monkeypatch.setenv(testing.TEST_HOME_ENV, str(embedded_home))
    assert not embedded.is_running(embedded_home)

    with testing.test_server() as server:
        assert server.source == "embedded"
        assert embedded.is_running(embedded_home)
        with psycopg.connect(server.dsn("postgres")) as conn:
            assert conn.execute("SELECT current_setting('fsync')").fetchone() == ("off",)

    assert not embedded.is_running(embedded_home)  # it stopped the server it started...
    with psycopg.connect(pg_server.admin_dsn) as conn:  # ...and nothing else
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_handle_stops_only_an_ephemeral_server_and_extensions_work(embedded_home: Path) -> None:
    assert embedded.status(embedded_home).startswith("not initialised")
    kept = embedded.start(embedded_home, keep_running=True)
    reused = embedded.start(embedded_home)
    assert (kept.started_here, reused.started_here) == (True, False)
    assert kept.psql_path().is_file()
    assert "keeps running" in embedded.status(embedded_home)

    with psycopg.connect(reused.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION dblink")
        conn.execute("CREATE EXTENSION vector")
        assert conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,5]'::vector").fetchone() == (2.0,)
        # A dblink loopback must name the socket directory, which the DSN does.
        row = conn.execute("SELECT x FROM dblink(%s, 'SELECT 41 + 1') AS t(x int)", (kept.dsn(),)).fetchone()
        assert row == (42,)

    reused.stop()
    kept.stop()
    assert embedded.is_running(embedded_home)  # neither handle stops a keep_running server
    assert embedded.stop(embedded_home) is True
    assert not embedded.is_running(embedded_home)
    assert embedded.status(embedded_home).startswith("stopped")
    assert embedded.stop(embedded_home) is False

    with embedded.start(embedded_home) as ephemeral:  # an ephemeral start is stopped by its own handle
        assert ephemeral.started_here
        assert "stops when its last user exits" in embedded.status(embedded_home)
    assert not embedded.is_running(embedded_home)


_USER = """
import sys
from pgdurable import embedded
server = embedded.start(sys.argv[1])
print(server.started_here, flush=True)
sys.stdin.readline()
if sys.argv[2] == "stop":
    server.stop()
"""


def _user(home: Path, leave: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(pgdurable.__file__).parents[1]))
    return subprocess.Popen(
        [sys.executable, "-c", _USER, str(home), leave],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("first_leaves_by", ["stop", "kill"])
def test_two_processes_share_a_server_and_the_last_one_out_stops_it(embedded_home: Path, first_leaves_by: str) -> None:
    first = _user(embedded_home, "stop")
    assert first.stdout is not None and first.stdout.readline().strip() == "True"
    second = _user(embedded_home, "exit")  # lets go at interpreter exit
    assert second.stdout is not None and second.stdout.readline().strip() == "False"

    if first_leaves_by == "stop":
        first.communicate("\n", timeout=60)
        assert first.returncode == 0
    else:  # dies without letting go: its pid stays in the wheel's list
        first.kill()
        first.wait(timeout=60)
    assert embedded.is_running(embedded_home)

    second.communicate("\n", timeout=60)
    assert second.returncode == 0
    assert not embedded.is_running(embedded_home)
