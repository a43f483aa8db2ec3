"""pg_durable's conformance cases that need no worker (`wait` is `none` or `error`), ported.

Each case runs in its own session(s): setup, then `start_sql` (which must raise when `wait` is `error`), then
every check, whose single value must equal `expect` (JSON compared as JSON) or, for `{"error_like": ...}`,
whose statement must raise a message matching that LIKE pattern. Multi-statement checks compare the last
statement. Role names in cases that create roles get a per-run suffix, and those roles are removed after the
case (df.revoke_usage, DROP OWNED BY, DROP ROLE).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from .conftest import ConformanceDb, load_cases

PORTED = ("dsl-005", "bind-010", "txn-001", "txn-004", "err-002", "err-004", "err-005", "mon-005", "mon-008")
# Cases whose setup creates roles: run as the superuser, in the xdist group of role tests.
ROLE_CASES = {"err-005": ("iso_alice", "iso_analysts"), "mon-008": ("dg_app",)}

CASES = [c for c in load_cases() if c["wait"] in ("none", "error")]


def test_every_worker_free_case_is_ported() -> None:
    if not CASES:
        pytest.skip("conformance cases file not found")
    assert sorted("-".join(c["id"].split("-")[:2]) for c in CASES) == sorted(PORTED)


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


def _id(case: dict[str, Any]) -> str:
    return str(case["id"])


@pytest.fixture(params=CASES, ids=_id)
def case(request: pytest.FixtureRequest, conformance_db: ConformanceDb) -> Iterator[dict[str, Any]]:
    raw: dict[str, Any] = request.param
    short = "-".join(raw["id"].split("-")[:2])
    roles = {name: f"{name}_{conformance_db.suffix}" for name in ROLE_CASES.get(short, ())}

    def rename(text: str) -> str:
        for old, new in roles.items():
            text = re.sub(rf"\b{old}\b", new, text)
        return text

    renamed = {
        **raw,
        "short": short,
        "superuser": bool(roles),
        "setup_sql": [rename(s) for s in raw["setup_sql"]],
        "start_sql": rename(raw["start_sql"]),
        "checks": [{**c, "sql": rename(c["sql"])} for c in raw["checks"]],
    }
    yield renamed
    if roles:
        with psycopg.connect(conformance_db.admin_dsn, autocommit=True) as conn:
            for role in roles.values():
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                    conn.execute("SELECT df.revoke_usage(%s)", (role,))
                    conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
            for role in roles.values():
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _run(conn: psycopg.Connection[tuple[object, ...]], text: str) -> Any:
    value: Any = None
    for statement in split_statements(text):
        cursor = conn.execute(statement.encode())
        if cursor.description is not None:
            row = cursor.fetchone()
            value = None if row is None else row[0]
    return value


@pytest.mark.xdist_group("roles")
def test_case(case: dict[str, Any], conformance_db: ConformanceDb) -> None:
    dsn = conformance_db.admin_dsn if case["superuser"] else conformance_db.app_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in case["setup_sql"]:
            _run(conn, statement)
        if case["wait"] == "error":
            with pytest.raises(psycopg.Error):
                _run(conn, case["start_sql"])
        else:
            _run(conn, case["start_sql"])
        # txn-001's pause (extra_steps) waits for a worker, which does not exist yet: the checks below assert
        # that the rolled-back start left no rows, so nothing could ever run.
        for check in case["checks"]:
            if case["superuser"]:
                conn.execute("RESET ROLE")
                conn.execute("RESET SESSION AUTHORIZATION")
            expect = check["expect"]
            if isinstance(expect, dict) and set(expect) == {"error_like"}:
                statements = split_statements(check["sql"])
                _run(conn, ";".join(statements[:-1]))
                with pytest.raises(psycopg.Error) as info:
                    _run(conn, statements[-1])
                message = str(info.value.diag.message_primary)
                assert re.match(like_to_regex(expect["error_like"]), message, re.DOTALL), (check["sql"], message)
            else:
                assert _run(conn, check["sql"]) == expect, check["sql"]
