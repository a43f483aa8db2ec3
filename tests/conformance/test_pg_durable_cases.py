"""pg_durable's conformance cases that need no worker (`wait` is `none` or `error`), ported.

Each case runs in its own session(s): setup, then `start_sql` (which must raise when `wait` is `error`), then
every check, whose single value must equal `expect` (JSON compared as JSON) or, for `{"error_like": ...}`,
whose statement must raise a message matching that LIKE pattern. Multi-statement checks compare the last
statement. Role names in cases that create roles get a per-run suffix, and those roles are removed after the
case (df.revoke_usage, DROP OWNED BY, DROP ROLE).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from .conftest import ConformanceDb, check, drop_roles, load_cases, per_run_names, rename, run_sql, short_id

PORTED = ("dsl-005", "bind-010", "txn-001", "txn-004", "err-002", "err-004", "err-005", "mon-005", "mon-008")
# Cases whose setup creates roles: run as the superuser, in the xdist group of role tests.
ROLE_CASES = {"err-005": ("iso_alice", "iso_analysts"), "mon-008": ("dg_app",)}

CASES = [c for c in load_cases() if c["wait"] in ("none", "error")]


def test_every_worker_free_case_is_ported() -> None:
    if not CASES:
        pytest.skip("conformance cases file not found")
    assert sorted(short_id(c) for c in CASES) == sorted(PORTED)


def _id(case: dict[str, Any]) -> str:
    return str(case["id"])


@pytest.fixture(params=CASES, ids=_id)
def case(request: pytest.FixtureRequest, conformance_db: ConformanceDb) -> Iterator[dict[str, Any]]:
    raw: dict[str, Any] = request.param
    short = short_id(raw)
    roles = per_run_names(ROLE_CASES.get(short, ()), conformance_db.suffix)
    renamed = {**rename(raw, roles), "short": short, "superuser": bool(roles)}
    yield renamed
    if roles:
        drop_roles(conformance_db.admin_dsn, roles.values())


@pytest.mark.xdist_group("roles")
def test_case(case: dict[str, Any], conformance_db: ConformanceDb) -> None:
    dsn = conformance_db.admin_dsn if case["superuser"] else conformance_db.app_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in case["setup_sql"]:
            run_sql(conn, statement)
        if case["wait"] == "error":
            with pytest.raises(psycopg.Error):
                run_sql(conn, case["start_sql"])
        else:
            run_sql(conn, case["start_sql"])
        # txn-001's pause (extra_steps) waits for a worker, which need not exist: the checks below assert
        # that the rolled-back start left no rows, so nothing could ever run.
        for item in case["checks"]:
            if case["superuser"]:
                conn.execute("RESET ROLE")
                conn.execute("RESET SESSION AUTHORIZATION")
            check(conn, item["sql"], item["expect"])
