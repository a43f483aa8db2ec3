"""Real PostgreSQL for tests: the server chooser and throwaway databases.

`test_server()` picks ``$PGDURABLE_TEST_DSN``, else a testcontainers PostgreSQL when a Docker engine answers,
else the embedded server in a test home shared by pytest-xdist workers. `create_database` and
`drop_database` make and remove databases, cloned from templates in milliseconds. No mocks and no workflow
logic here; testcontainers, docker and the embedded wheel are imported lazily.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Final, Literal, Protocol

import attrs
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

__all__ = [
    "DEFAULT_IMAGE",
    "TEST_DOCKER_ENV",
    "TEST_DSN_ENV",
    "TEST_HOME_ENV",
    "TEST_IMAGE_ENV",
    "MakeDatabase",
    "Source",
    "TestServer",
    "create_database",
    "docker_available",
    "drop_database",
    "test_home",
    "test_server",
    "unique_database_name",
]

TEST_DSN_ENV: Final = "PGDURABLE_TEST_DSN"
"""A superuser (or CREATEDB) DSN of a server to test against; wins over everything else."""
TEST_DOCKER_ENV: Final = "PGDURABLE_TEST_DOCKER"
"""Set to ``0`` to skip testcontainers even when a Docker engine answers."""
TEST_IMAGE_ENV: Final = "PGDURABLE_TEST_IMAGE"
"""The container image for testcontainers (default `DEFAULT_IMAGE`)."""
TEST_HOME_ENV: Final = "PGDURABLE_TEST_HOME"
"""The embedded test server's home (default `<tempdir>/pgdurable-test-<uid>`); its cluster runs with fsync off."""
DEFAULT_IMAGE: Final = "pgvector/pgvector:pg18"
"""PostgreSQL 18 with pgvector, like the embedded server (the plain ``postgres:18`` lacks pgvector)."""

Source = Literal["env", "testcontainers", "embedded"]
_SOURCES: Final = ("env", "testcontainers", "embedded")
_DOCKER_PROBE_SECONDS: Final = 2.0
_NAME_PREFIX: Final = re.compile(r"[a-z_][a-z0-9_]{0,39}")


@attrs.frozen
class TestServer:
    """A PostgreSQL server for tests: a superuser DSN on its ``postgres`` database, and where it came from."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    admin_dsn: str
    source: Source = attrs.field(validator=attrs.validators.in_(_SOURCES))

    def dsn(self, dbname: str, user: str | None = None) -> str:
        """The admin DSN pointed at `dbname` (and at `user`, if given), as a libpq conninfo string."""
        if user is None:
            return make_conninfo(self.admin_dsn, dbname=dbname)
        return make_conninfo(self.admin_dsn, dbname=dbname, user=user)


class MakeDatabase(Protocol):
    """The ``make_database`` fixture: a new database (optionally cloned from `template`), by name."""

    def __call__(self, template: str | None = None) -> str: ...


# --- choosing a server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def test_server() -> Iterator[TestServer]:
    """The server to test against, in this order: ``$PGDURABLE_TEST_DSN``; testcontainers when a Docker
    engine answers within 2 s (unless ``PGDURABLE_TEST_DOCKER=0``); the embedded server in `test_home()`.

    A container is removed on exit. The embedded server is shared with the other processes that use the
    same home (pytest-xdist workers) and stops when the last of them exits.
    """
    with contextlib.ExitStack() as stack:
        yield _choose(stack)


test_server.__test__ = False  # type: ignore[attr-defined]  # not a pytest test function


def _choose(stack: contextlib.ExitStack[bool | None]) -> TestServer:
    if env_dsn := os.environ.get(TEST_DSN_ENV):
        return TestServer(env_dsn, "env")
    if os.environ.get(TEST_DOCKER_ENV, "1") != "0" and _testcontainers_installed() and docker_available():
        return TestServer(_start_container(stack), "testcontainers")
    return TestServer(_start_embedded(stack), "embedded")


def _testcontainers_installed() -> bool:
    try:
        import testcontainers.community.postgres  # noqa: F401
    except ImportError:
        return False
    return True


def docker_available(timeout: float = _DOCKER_PROBE_SECONDS) -> bool:
    """Whether a Docker engine answers a ping within `timeout` seconds, found the way testcontainers
    finds it (``~/.testcontainers.properties``, ``DOCKER_HOST``, the docker context). Never blocks longer."""
    answer: list[bool] = []
    probe = threading.Thread(target=_ping_docker, args=(timeout, answer), daemon=True)
    probe.start()
    probe.join(timeout + 0.5)  # a hung ssh transport cannot hold the caller
    return answer == [True]


def _ping_docker(timeout: float, answer: list[bool]) -> None:
    try:
        import docker
        from testcontainers.core.docker_client import get_docker_host

        environment = dict(os.environ)
        if host := get_docker_host():
            environment["DOCKER_HOST"] = host
        client = docker.from_env(timeout=timeout, environment=environment)
        try:
            answer.append(bool(client.ping()))
        finally:
            client.close()
    except Exception:  # any failure to reach an engine means "no Docker"; the caller falls through
        answer.append(False)


def _start_container(stack: contextlib.ExitStack[bool | None]) -> str:
    from testcontainers.community.postgres import PostgresContainer

    image = os.environ.get(TEST_IMAGE_ENV, DEFAULT_IMAGE)
    container = PostgresContainer(image, username="postgres", password="postgres", dbname="postgres", driver=None)
    # Test data need not survive a power cut; a crashed backend loses nothing with fsync off.
    container.with_command("postgres -c fsync=off -c full_page_writes=off")
    try:
        container.start()
    except Exception as exc:
        raise RuntimeError(
            f"a Docker engine answers but the {image} container did not start: {exc}\n"
            f"set {TEST_DOCKER_ENV}=0 to use the embedded server, or {TEST_DSN_ENV} to use your own server"
        ) from exc
    stack.callback(container.stop)
    return str(container.get_connection_url())


def test_home() -> Path:
    """``$PGDURABLE_TEST_HOME``, else ``<tempdir>/pgdurable-test-<uid>``: one per user, shared by processes."""
    if env := os.environ.get(TEST_HOME_ENV):
        return Path(env)
    user = str(os.getuid()) if hasattr(os, "getuid") else getpass.getuser()
    return Path(tempfile.gettempdir()) / f"pgdurable-test-{user}"


test_home.__test__ = False  # type: ignore[attr-defined]  # not a pytest test function


def _start_embedded(stack: contextlib.ExitStack[bool | None]) -> str:
    from pgdurable import embedded

    server = embedded.start(test_home())
    stack.callback(server.stop)
    admin_dsn = server.dsn()
    if server.started_here:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            # A test cluster: skip fsync (a crashed backend loses nothing; only a power cut would).
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("ALTER SYSTEM SET full_page_writes = off")
            conn.execute("SELECT pg_reload_conf()")
    return admin_dsn


# --- databases -----------------------------------------------------------------------------------------


def unique_database_name(prefix: str = "pgdurable_test") -> str:
    """A database name no other xdist worker or run will pick: prefix, worker id, random suffix.

    >>> name = unique_database_name("t")
    >>> name.startswith("t_") and len(name) <= 63
    True
    """
    if not _NAME_PREFIX.fullmatch(prefix):
        raise ValueError(f"database name prefix {prefix!r} must match {_NAME_PREFIX.pattern}")
    worker = re.sub(r"[^a-z0-9]", "", os.environ.get("PYTEST_XDIST_WORKER", "main").lower())[:8] or "main"
    return f"{prefix}_{worker}_{secrets.token_hex(5)}"


def create_database(admin_dsn: str, name: str, template: str | None = None) -> None:
    """``CREATE DATABASE name [TEMPLATE template]``. Cloning fails while anyone is connected to `template`
    (PostgreSQL waits 5 s for them to leave), so close pools on a template before cloning it."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(statement)


def drop_database(admin_dsn: str, name: str) -> None:
    """``DROP DATABASE IF EXISTS name WITH (FORCE)``, first clearing ``IS_TEMPLATE`` (which forbids it)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if row is None:
            return
        if row[0]:
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
