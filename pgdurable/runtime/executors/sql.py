"""SQL steps: through the submitter's runner on the worker's connection (exactly-once), or on a connection
that logs in as the submitter (the autocommit lane: at-least-once, for what cannot run in a transaction and
for other databases).
"""

from __future__ import annotations

import base64
import json
import math
import threading
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgdurable.errors import PgdurableError
from pgdurable.runtime import store
from pgdurable.runtime.lexer import MultipleStatementsError, check_single_statement
from pgdurable.runtime.results import RunnerOutputError, encode_result

__all__ = ["SqlExecutor", "StepError"]


class StepError(PgdurableError):
    """A step failed. `message` is what pg_durable stores on the node; `detail` the structured failure."""

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None, needs_autocommit: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.needs_autocommit = needs_autocommit


def _from_database(error: psycopg.Error) -> StepError:
    diag = error.diag
    return StepError(
        f"SQL execution failed: {diag.message_primary or error}",
        detail={
            "sqlstate": error.sqlstate,
            "message": diag.message_primary,
            "detail": diag.message_detail,
            "hint": diag.message_hint,
        },
    )


class SqlExecutor:
    """Runs SQL steps. Holds the checked runners by role, and nothing else."""

    def __init__(self, dsn: str, *, max_result_bytes: int) -> None:
        self.dsn = dsn
        self.max_result_bytes = max_result_bytes
        self._runners: dict[int, store.Runner] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._runners.clear()

    def runner(self, conn: psycopg.Connection[Any], row: store.InstanceRow) -> store.Runner:
        with self._lock:
            known = self._runners.get(row.submitter_oid)
        if known is not None:
            return known
        runner = store.find_runner(conn, role_oid=row.submitter_oid)
        if runner is None:
            raise StepError(
                f"role {row.submitted_by} has no step runner: run SELECT df.grant_usage('{row.submitted_by}') "
                "as an administrator"
            )
        with self._lock:
            self._runners[row.submitter_oid] = runner
        return runner

    def run(self, conn: psycopg.Connection[Any], runner: store.Runner, query: str) -> str:
        """Run one statement through the runner, inside the caller's transaction; its result envelope."""
        _one_statement(query)
        try:
            return encode_result(store.run_step(conn, runner=runner, query=query, max_bytes=self.max_result_bytes))
        except pg_errors.ActiveSqlTransaction as error:
            raise StepError(str(error), needs_autocommit=True) from error
        except psycopg.Error as error:
            raise _from_database(error) from error
        except RunnerOutputError as error:
            raise StepError(f"SQL execution failed: {error}") from error

    def run_autocommit(self, row: store.InstanceRow, query: str) -> str:
        """Run one statement on its own connection, logged in as the submitter; its result envelope."""
        _one_statement(query)
        params = {k: str(v) for k, v in conninfo_to_dict(self.dsn).items() if v is not None and k != "password"}
        params["user"] = row.submitted_by
        if row.database is not None:
            params["dbname"] = row.database
        try:
            conn = psycopg.connect(make_conninfo("", **params), autocommit=True, application_name="pgdurable-step")
        except psycopg.OperationalError as error:
            raise StepError(
                f"cannot log in as role {row.submitted_by} for the autocommit lane: {error}".strip()
                + " (allow it with local trust/peer authentication, or give its password in a passfile: PGPASSFILE)"
            ) from error
        with conn:
            try:
                conn.execute("SELECT pg_catalog.set_config('pgdurable.in_workflow', 'on', false)")
                cursor = conn.execute(query.encode("utf-8"))
                if cursor.description is None:
                    return '{"rows":[],"row_count":0}'
                columns = [c.name for c in cursor.description]
                rows = [{name: _plain(value) for name, value in zip(columns, values, strict=True)} for values in cursor]
            except psycopg.Error as error:
                raise _from_database(error) from error
        return json.dumps({"rows": rows, "row_count": len(rows)}, separators=(",", ":"), ensure_ascii=False)


def _one_statement(query: str) -> None:
    try:
        check_single_statement(query)
    except MultipleStatementsError as error:
        raise StepError(str(error)) from None


def _plain(value: object) -> object:
    """A value the autocommit lane read, in the result envelope's encoding."""
    match value:
        case None | bool() | int() | str():
            return value
        case float():
            return value if math.isfinite(value) else None
        case Decimal():
            return str(value)
        case datetime() if value.tzinfo is not None:
            return value.astimezone(timezone.utc).isoformat()
        case datetime() | date() | time():
            return value.isoformat()
        case timedelta():
            return f"P{value.days}DT{value.seconds}S" if value.days else f"PT{value.seconds}S"
        case bytes() | bytearray() | memoryview():
            return base64.b64encode(bytes(value)).decode("ascii")
        case UUID():
            return str(value)
        case list() | tuple():
            return [_plain(item) for item in value]
        case dict():
            return value
        case _:
            return str(value)
