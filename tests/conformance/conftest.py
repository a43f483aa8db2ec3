"""Fixtures for the ported pg_durable conformance cases.

The cases live in ``../shared/conformance/pg_durable_cases.json`` beside the checkout (CI puts /work/shared
there); without that file every conformance test is skipped with the reason. One database per session holds
df with pg_durable's defaults (HTTP off, loop floor 1 s); cases run as a per-run application role, or as the
superuser where the case's setup creates roles.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgdurable import migrate
from pgdurable.testing import MakeDatabase, TestServer

CASES_FILE = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "pg_durable_cases.json"


def load_cases() -> list[dict[str, Any]]:
    """The shared cases, or [] when the file is missing (the tests then skip)."""
    if not CASES_FILE.is_file():
        return []
    cases: list[dict[str, Any]] = json.loads(CASES_FILE.read_text(encoding="utf-8"))
    return cases


@dataclass(frozen=True)
class ConformanceDb:
    admin_dsn: str
    app_dsn: str
    suffix: str


@pytest.fixture(scope="session")
def conformance_db(pg_server: TestServer, make_database: MakeDatabase) -> Iterator[ConformanceDb]:
    if not CASES_FILE.is_file():
        pytest.skip(f"conformance cases not found at {CASES_FILE} (CI checks /work/shared out as ../shared)")
    suffix = secrets.token_hex(4)
    app_role = f"pgd_conf_{suffix}"
    name = make_database()
    migrate.install(pg_server.dsn(name), app_role=app_role)
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:  # cases create their own tables
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(app_role)))
    yield ConformanceDb(pg_server.dsn(name), pg_server.dsn(name, user=app_role), suffix)
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(app_role)))
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(app_role)))
