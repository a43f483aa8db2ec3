"""Session-wide real PostgreSQL for every test: the server (`pg_server`) and throwaway databases.

`make_database(template=None) -> name` is the contract other conftests build on (tests/integration adds
df-specific templates with it); every database it makes is dropped at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgdurable.testing import (
    MakeDatabase,
    TestServer,
    create_database,
    drop_database,
    test_server,
    unique_database_name,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    """The PostgreSQL server of this run (see `pgdurable.testing.test_server` for how it is chosen)."""
    with test_server() as server:
        yield server


@pytest.fixture(scope="session")
def make_database(pg_server: TestServer) -> Iterator[MakeDatabase]:
    """A factory of new databases, optionally cloned from a template; all dropped at session end."""
    made: list[str] = []

    def make(template: str | None = None) -> str:
        name = unique_database_name()
        create_database(pg_server.admin_dsn, name, template=template)
        made.append(name)
        return name

    yield make
    for name in reversed(made):  # clones before their templates
        drop_database(pg_server.admin_dsn, name)


@pytest.fixture(scope="module")
def database(pg_server: TestServer) -> Iterator[str]:
    """The DSN of a fresh, empty database for this test module, dropped when the module ends."""
    name = unique_database_name()
    create_database(pg_server.admin_dsn, name)
    yield pg_server.dsn(name)
    drop_database(pg_server.admin_dsn, name)
