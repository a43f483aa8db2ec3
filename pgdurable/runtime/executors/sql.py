"""SQL steps: through the submitter's runner on the worker's connection (exactly-once), or on a connection
that logs in as the submitter (the autocommit lane: at-least-once, for what cannot run in a transaction and
for other databases).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
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

    def run(
        self,
        conn: psycopg.Connection[Any],
        runner: store.Runner,
        query: str,
        *,
        timeout_seconds: int | None = None,
        max_bytes: int | None = None,
    ) -> str:
        """Run one statement through the runner, inside the caller's transaction; its result envelope."""
        _one_statement(query)
        try:
            raw = store.run_step(
                conn,
                runner=runner,
                query=query,
                max_bytes=max_bytes or self.max_result_bytes,
                timeout_seconds=timeout_seconds,
            )
        except pg_errors.ActiveSqlTransaction as error:
            raise StepError(str(error), needs_autocommit=True) from error
        except psycopg.Error as error:
            raise _from_database(error) from error
        return _encode(raw)

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
                conn.execute(
                    "SELECT pg_catalog.set_config('pgdurable.in_workflow', 'on', false),"
                    " pg_catalog.set_config('intervalstyle', 'iso_8601', false)"
                )
                cursor = conn.execute(query.encode("utf-8"))
                if cursor.description is None or cursor.pgresult is None:
                    return '{"rows":[],"row_count":0}'
                raw = _as_runner_output(conn, cursor.pgresult, [c.name for c in cursor.description])
            except psycopg.Error as error:
                raise _from_database(error) from error
        return _encode(raw)


_TYPES: Final = """
SELECT pg_catalog.format_type(u.oid, u.mod), b.typname::text
  FROM unnest(%(oids)s::oid[], %(mods)s::int[]) WITH ORDINALITY AS u(oid, mod, ord)
  JOIN pg_catalog.pg_type t ON t.oid = u.oid
  JOIN pg_catalog.pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
 ORDER BY u.ord
"""


def _as_runner_output(conn: psycopg.Connection[Any], result: Any, names: list[str]) -> str:
    """The lane's rows in the runner's raw format: the text values are cast back to their types and turned
    into JSON by the server's own row_to_json, so both lanes encode results alike."""
    width = result.nfields
    types = conn.execute(
        _TYPES, {"oids": [result.ftype(i) for i in range(width)], "mods": [result.fmod(i) for i in range(width)]}
    ).fetchall()
    rows = [
        [None if (v := result.get_value(r, c)) is None else bytes(v).decode("utf-8") for c in range(width)]
        for r in range(result.ntuples)
    ]
    columns = sql.SQL(", ").join(
        sql.SQL("(e.value ->> {})::{} AS {}").format(sql.Literal(i), sql.SQL(type_sql), sql.Identifier(name))
        for i, ((type_sql, _), name) in enumerate(zip(types, names, strict=True))
    )
    query = sql.SQL(
        "SELECT coalesce(pg_catalog.json_agg(pg_catalog.row_to_json(x) ORDER BY e.ord), '[]')::text"
        " FROM pg_catalog.json_array_elements(%(rows)s::json) WITH ORDINALITY AS e(value, ord),"
        " LATERAL (SELECT {}) AS x"
    ).format(columns)
    converted = conn.execute(query, {"rows": json.dumps(rows)}).fetchone()
    encoded_rows = converted[0] if converted else "[]"
    return '{"types":' + json.dumps([t[1] for t in types]) + ',"rows":' + encoded_rows + "}"


def _encode(raw: str) -> str:
    try:
        return encode_result(raw)
    except RunnerOutputError as error:
        raise StepError(f"SQL execution failed: {error}") from error


def _one_statement(query: str) -> None:
    try:
        check_single_statement(query)
    except MultipleStatementsError as error:
        raise StepError(str(error)) from None
