"""Fixtures and helpers for the ported pg_durable conformance cases.

The cases live in ``../shared/conformance/pg_durable_cases.json`` beside the checkout (CI puts /work/shared
there); without that file every conformance test is skipped with the reason. One database per session (per
xdist worker process) holds df with pg_durable's defaults (HTTP off, loop floor 1 s); cases run as a per-run
application role, or as the superuser where the case's setup creates roles. `conformance_worker` runs an
in-process pgdurable worker on that database for the cases that need one.

The helpers implement the file's conventions: statements split at top-level semicolons and run in order,
each autocommitted, the value of a step being the first column of the first row of its last statement;
``:'instance_id'`` substitution; expectations compared as JSON (``true`` is not ``1``); ``error_like`` as a
LIKE pattern; per-run names for the roles (and, where asked, tables) that cases create.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgdurable import Worker, WorkerConfig, migrate
from pgdurable.testing import MakeDatabase, TestServer

CASES_FILE = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "pg_durable_cases.json"

Connection = psycopg.Connection[tuple[Any, ...]]


def load_cases() -> list[dict[str, Any]]:
    """The shared cases, or [] when the file is missing (the tests then skip)."""
    if not CASES_FILE.is_file():
        return []
    cases: list[dict[str, Any]] = json.loads(CASES_FILE.read_text(encoding="utf-8"))
    return cases


def short_id(case: Mapping[str, Any]) -> str:
    """``seq-001-autowrap-result`` -> ``seq-001``."""
    return "-".join(str(case["id"]).split("-")[:2])


@dataclass(frozen=True)
class ConformanceDb:
    admin_dsn: str
    app_dsn: str
    suffix: str
    app_role: str


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
        # and schemas (vars-002 and vars-004 create `playground`)
        grant = sql.SQL("GRANT CREATE ON DATABASE {} TO {}")
        conn.execute(grant.format(sql.Identifier(name), sql.Identifier(app_role)))
    yield ConformanceDb(pg_server.dsn(name), pg_server.dsn(name, user=app_role), suffix, app_role)
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(app_role)))
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(app_role)))


@pytest.fixture(scope="session")
def conformance_worker(conformance_db: ConformanceDb) -> Iterator[Worker]:
    """An in-process worker on the conformance database, for the whole session (df.settings untouched, so
    pg_durable's defaults: loop floor 1 s, HTTP off). It connects as the superuser, which owns df there."""
    with psycopg.connect(conformance_db.admin_dsn, autocommit=True) as conn:
        settings: dict[str, Any] = dict(conn.execute("SELECT key, value FROM df.settings").fetchall())
    assert (settings["loop_floor_seconds"], settings["http_enabled"]) == (1, False), "not pg_durable's defaults"
    config = WorkerConfig(concurrency=4, lease_seconds=2.0, poll_seconds=0.05)
    with Worker(conformance_db.admin_dsn, config=config) as worker:
        yield worker


# --- running a case's SQL --------------------------------------------------------------------------------


def split_statements(text: str) -> list[str]:
    """Split SQL at top-level semicolons (outside quotes, identifiers and dollar quotes)."""
    statements, current, i = [], [], 0
    while i < len(text):
        char = text[i]
        if char in "'\"":
            end = text.index(char, i + 1)
            while end + 1 < len(text) and text[end + 1] == char:
                end = text.index(char, end + 2)
            current.append(text[i : end + 1])
            i = end + 1
            continue
        tag = re.match(r"\$[A-Za-z_]*\$", text[i:])
        if tag:
            end = text.index(tag.group(), i + len(tag.group())) + len(tag.group())
            current.append(text[i:end])
            i = end
            continue
        if char == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def like_to_regex(pattern: str) -> str:
    return "^" + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern) + "$"


def run_sql(conn: Connection, text: str) -> Any:
    """Run every statement of `text` in order; the first column of the first row of the last statement
    that returns rows (None if none does, or if it returns no row)."""
    value: Any = None
    for statement in split_statements(text):
        cursor = conn.execute(statement.encode())
        if cursor.description is not None:
            row = cursor.fetchone()
            value = None if row is None else row[0]
    return value


def substitute(text: str, instance_id: str | None) -> str:
    """psql's ``:'instance_id'``: the id as a quoted literal."""
    if ":'instance_id'" not in text:
        return text
    assert instance_id is not None, f"no instance id to substitute into {text!r}"
    return text.replace(":'instance_id'", "'" + instance_id.replace("'", "''") + "'")


def _normal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def same_json(actual: Any, expect: Any) -> bool:
    """Equality as JSON values: booleans are not numbers, 1 equals 1.0, key order is irrelevant."""
    actual, expect = _normal(actual), _normal(expect)
    if isinstance(actual, bool) or isinstance(expect, bool):
        return type(actual) is type(expect) and actual == expect
    if isinstance(actual, (int, float)) and isinstance(expect, (int, float)):
        return actual == expect
    if isinstance(actual, dict) and isinstance(expect, dict):
        return actual.keys() == expect.keys() and all(same_json(actual[k], expect[k]) for k in actual)
    if isinstance(actual, list) and isinstance(expect, list):
        return len(actual) == len(expect) and all(same_json(a, e) for a, e in zip(actual, expect, strict=True))
    return type(actual) is type(expect) and bool(actual == expect)


def check(conn: Connection, check_sql: str, expect: Any) -> None:
    """One `checks[]` entry: the last statement's value equals `expect` as JSON, or, for
    ``{"error_like": pattern}``, the last statement raises a message matching the LIKE pattern."""
    statements = split_statements(check_sql)
    if isinstance(expect, dict) and set(expect) == {"error_like"}:
        run_sql(conn, ";".join(statements[:-1]))
        with pytest.raises(psycopg.Error) as info:
            run_sql(conn, statements[-1])
        message = str(info.value.diag.message_primary)
        assert re.match(like_to_regex(expect["error_like"]), message, re.DOTALL), (check_sql, message)
    else:
        actual = run_sql(conn, check_sql)
        assert same_json(actual, expect), f"{check_sql}\n  got:      {actual!r}\n  expected: {expect!r}"


# --- per-run names ---------------------------------------------------------------------------------------


def per_run_names(names: Iterable[str], suffix: str) -> dict[str, str]:
    return {name: f"{name}_{suffix}" for name in names}


def rename(value: Any, names: Mapping[str, str]) -> Any:
    """`value` (a string, or JSON made of strings) with every whole-word occurrence of a key of `names`
    replaced by its value; longer names first, so ``iso_alice_data`` is not read as ``iso_alice``."""
    if isinstance(value, str):
        for old in sorted(names, key=len, reverse=True):
            value = re.sub(rf"\b{re.escape(old)}\b", names[old], value)
        return value
    if isinstance(value, list):
        return [rename(v, names) for v in value]
    if isinstance(value, dict):
        return {k: rename(v, names) for k, v in value.items()}
    return value


def drop_roles(admin_dsn: str, roles: Iterable[str]) -> None:
    """Remove case roles: df.revoke_usage, DROP OWNED BY (in the conformance database), then DROP ROLE."""
    roles = list(roles)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for role in roles:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute("SELECT df.revoke_usage(%s)", (role,))
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
