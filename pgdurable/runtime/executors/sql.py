"""SQL steps: through the submitter's runner on the worker's connection (exactly-once), or on a connection
that logs in as the submitter (the autocommit lane: at-least-once, for what cannot run in a transaction and
for other databases).

The login lane logs in as the submitting role itself, so a step there has exactly that role's privileges,
whatever the worker's. How it authenticates, per role (docs/security.md):

- libpq's own means: trust or peer authentication for the worker's host, the worker's passfile (keyed by
  role: ``host:port:db:role:password``), ``PGSSLCERT``/``PGSSLKEY``;
- a credential map: the df.settings key ``login_credentials`` (owner-only, like every setting) and the JSON
  file named by ``$PGDURABLE_LOGIN_CREDENTIALS`` (which keeps secrets out of the database), both of the form
  ``{"<role>": {"password": "..."}, "<role2>": {"sslcert": "/path.crt", "sslkey": "/path.key"}, "*": {...}}``:
  libpq connection parameters per role (``*`` for every role), the file's winning over the setting's. Only
  the parameters of `CREDENTIAL_KEYS` are accepted: never ``user``, ``dbname``, ``options`` or ``service``.

Before logging in it refuses a role that no longer exists, cannot log in, or is a superuser when
superuser instances are disabled; a role it cannot log in as fails the node with an error that says which
setting gives it a credential. Each (role, database) keeps one small pool; a connection goes back to it
only after ``DISCARD ALL``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from pgdurable.errors import PgdurableError
from pgdurable.runtime import store
from pgdurable.runtime.lexer import MultipleStatementsError, check_single_statement
from pgdurable.runtime.results import RunnerOutputError, encode_result

__all__ = ["CREDENTIALS_ENV", "CREDENTIALS_SETTING", "CREDENTIAL_KEYS", "SqlExecutor", "StepError"]

CREDENTIALS_SETTING: Final = "login_credentials"
"""The df.settings key of the login lane's credential map."""
CREDENTIALS_ENV: Final = "PGDURABLE_LOGIN_CREDENTIALS"
"""The environment variable naming a JSON file with a credential map (it wins over the setting)."""
CREDENTIAL_KEYS: Final = frozenset(
    {
        "password",
        "passfile",
        "channel_binding",
        "require_auth",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslrootcert",
        "sslcrl",
        "sslcertmode",
        "sslsni",
        "gssencmode",
        "krbsrvname",
        "host",
        "hostaddr",
        "port",
        "connect_timeout",
    }
)
"""The libpq parameters a credential map may set: how to authenticate and where, never as whom."""

# What the login lane does not take over from the worker's DSN: its identity, its secrets and its options.
_NOT_INHERITED: Final = frozenset(
    {"user", "password", "sslcert", "sslkey", "sslpassword", "options", "application_name", "dbname"}
)
_POOL_SIZE: Final = 2
_POOL_IDLE_SECONDS: Final = 60.0
_LOGIN_TIMEOUT_SECONDS: Final = 30.0
_HOW_TO_LOG_IN: Final = (
    f"give the worker a credential for it: a password or a client certificate (sslcert, sslkey) in the "
    f"df.settings key {CREDENTIALS_SETTING} or in the JSON file named by ${CREDENTIALS_ENV}, an entry in the "
    "worker's passfile, or trust/peer authentication for the worker's host"
)

_ROLE: Final = """
SELECT r.rolname::text, r.rolcanlogin, r.rolsuper, pg_catalog.current_database()::text,
       (SELECT s.value FROM df.settings s WHERE s.key = %(credentials)s),
       coalesce((SELECT s.value = 'true'::jsonb FROM df.settings s WHERE s.key = 'allow_superuser_instances'), false)
  FROM (SELECT %(oid)s::oid AS oid) x LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.oid
"""


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


Pool = ConnectionPool[psycopg.Connection[Any]]


class SqlExecutor:
    """Runs SQL steps. Holds the checked runners by role, and the login lane's pools by role and database.

    `credentials` is a credential map given in code (it wins over the file and the setting).
    """

    def __init__(
        self,
        dsn: str,
        *,
        max_result_bytes: int,
        credentials: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.dsn = dsn
        self.max_result_bytes = max_result_bytes
        self._credentials = credentials
        self._runners: dict[int, store.Runner] = {}
        self._lock = threading.Lock()
        self._admin: Pool | None = None
        self._pools: dict[tuple[int, str | None], tuple[str, Pool]] = {}

    def close(self) -> None:
        with self._lock:
            self._runners.clear()
            pools = [pool for _, pool in self._pools.values()]
            self._pools.clear()
            admin, self._admin = self._admin, None
        for pool in pools:
            pool.close()
        if admin is not None:
            admin.close()

    def runner(self, conn: psycopg.Connection[Any], row: store.InstanceRow) -> store.Runner:
        with self._lock:
            known = self._runners.get(row.submitter_oid)
        if known is not None:
            return known
        runner = store.find_runner(conn, role_oid=row.submitter_oid)
        if runner is None:
            name = _unquoted(row.submitted_by)
            raise StepError(
                f"role {row.submitted_by} has no step runner: run SELECT df.grant_usage({_literal(name)}) "
                "as an administrator"
            )
        with self._lock:
            self._runners[row.submitter_oid] = runner
        return runner

    def send(
        self,
        conn: psycopg.Connection[Any],
        runner: store.Runner,
        query: str,
        *,
        timeout_seconds: int | None = None,
        max_bytes: int | None = None,
    ) -> store.Pending[str]:
        """Send one statement to the runner, inside the caller's transaction (and pipeline, if any); read its
        result with `receive`."""
        _one_statement(query)
        return store.run_step(
            conn,
            runner=runner,
            query=query,
            max_bytes=max_bytes or self.max_result_bytes,
            timeout_seconds=timeout_seconds,
        )

    @staticmethod
    @contextmanager
    def failures(conn: psycopg.Connection[Any], sent: store.Pending[str]) -> Iterator[None]:
        """Around the statements sent after a step in its pipeline, and the sync that runs them: a database
        error is the step's failure (a StepError), unless the step completed or the connection broke, and
        then it is raised as it is. (In a pipeline the step's error surfaces at whichever later call reads
        the results.)"""
        try:
            yield
        except pg_errors.ActiveSqlTransaction as error:
            if sent.done or conn.broken:
                raise
            raise StepError(str(error), needs_autocommit=True) from error
        except psycopg.Error as error:
            if sent.done or conn.broken:
                raise
            raise _from_database(error) from error

    @staticmethod
    def receive(sent: store.Pending[str]) -> str:
        """The result envelope of a step sent with `send`, once its pipeline synced."""
        return _encode(sent.result())

    def run_autocommit(self, row: store.InstanceRow, query: str) -> str:
        """Run one statement on a connection logged in as the submitter; its result envelope."""
        _one_statement(query)
        role, conninfo = self._login(row)
        pool = self._pool(row, role, conninfo)
        try:
            with pool.connection(timeout=_LOGIN_TIMEOUT_SECONDS) as conn:
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
        except PoolTimeout:
            # no connection within the timeout: say why, from a login of our own (the pool only retries)
            self._forget_pool(row, pool)
            _probe(role, conninfo).close()
            raise StepError(
                f"cannot log in as role {role} for the autocommit lane: no connection within "
                f"{_LOGIN_TIMEOUT_SECONDS:.0f} s"
            ) from None
        return _encode(raw)

    # -- the login lane -----------------------------------------------------------------------------------

    def _login(self, row: store.InstanceRow) -> tuple[str, str]:
        """The submitter's role name and the conninfo that logs in as it; refusals as StepError."""
        with self._admin_pool().connection(timeout=_LOGIN_TIMEOUT_SECONDS) as admin:
            found = admin.execute(_ROLE, {"oid": row.submitter_oid, "credentials": CREDENTIALS_SETTING}).fetchone()
        assert found is not None
        role, can_login, superuser, database, setting, superuser_allowed = found
        if role is None:
            raise StepError(f"role {row.submitted_by} no longer exists: the autocommit lane cannot log in as it")
        if not can_login:
            raise StepError(f'role "{role}" does not have LOGIN privilege any more: the autocommit lane logs in as it')
        if superuser and not superuser_allowed:
            raise StepError(
                f'role "{role}" is a superuser: superuser instances are disabled '
                "(set allow_superuser_instances in df.settings to allow them)"
            )
        params = {k: str(v) for k, v in conninfo_to_dict(self.dsn).items() if v is not None and k not in _NOT_INHERITED}
        params.update(self._credentials_of(role, setting))
        params["user"] = role
        params["dbname"] = row.database or database
        params["application_name"] = "pgdurable-step"
        return role, make_conninfo("", **params)

    def _credentials_of(self, role: str, setting: Any) -> dict[str, str]:
        """The role's libpq parameters from the setting, then the file, then the constructor (later wins)."""
        sources: list[tuple[str, Any]] = [(f"df.settings key {CREDENTIALS_SETTING}", setting)]
        if path := os.environ.get(CREDENTIALS_ENV):
            try:
                with open(path, encoding="utf-8") as file:
                    sources.append((f"${CREDENTIALS_ENV} ({path})", json.load(file)))
            except (OSError, ValueError) as error:
                raise StepError(f"cannot read ${CREDENTIALS_ENV} ({path}): {error}") from None
        if self._credentials is not None:
            sources.append(("the worker's credentials", self._credentials))
        out: dict[str, str] = {}
        for where, mapping in sources:
            if mapping is None:
                continue
            if not isinstance(mapping, Mapping):
                raise StepError(f"{where} must be a JSON object of roles")
            for key in ("*", role):
                entry = mapping.get(key)
                if entry is None:
                    continue
                if not isinstance(entry, Mapping):
                    raise StepError(f"{where}: the entry of {key!r} must be an object of libpq parameters")
                for name, value in entry.items():
                    if name not in CREDENTIAL_KEYS:
                        raise StepError(
                            f"{where}: {name!r} (for {key!r}) is not a login parameter the worker accepts; "
                            f"use {', '.join(sorted(CREDENTIAL_KEYS))}"
                        )
                    if not isinstance(value, str | int):
                        raise StepError(f"{where}: {name!r} (for {key!r}) must be a string")
                    out[name] = str(value)
        return out

    def _admin_pool(self) -> Pool:
        """The worker's own connections for the lane's lookups: df.settings and pg_roles, with a pinned
        search_path."""
        with self._lock:
            if self._admin is None:
                params = {k: str(v) for k, v in conninfo_to_dict(self.dsn).items() if v is not None}
                params["options"] = (params.get("options", "") + " -c search_path=pg_catalog,pg_temp").strip()
                params["application_name"] = "pgdurable-worker-login"
                self._admin = ConnectionPool(
                    make_conninfo("", **params),
                    min_size=0,
                    max_size=1,
                    kwargs={"autocommit": True, "prepare_threshold": None},
                    max_idle=_POOL_IDLE_SECONDS,
                    timeout=_LOGIN_TIMEOUT_SECONDS,
                    num_workers=1,
                    check=ConnectionPool.check_connection,
                    name="pgdurable-login-admin",
                    open=True,
                )
            return self._admin

    def _pool(self, row: store.InstanceRow, role: str, conninfo: str) -> Pool:
        """The pool of (role, database) for `conninfo`. A new one is opened only after a login of our own
        succeeds, so that a role the worker cannot log in as fails at once, with libpq's reason."""
        key = (row.submitter_oid, row.database)
        with self._lock:
            known = self._pools.get(key)
        if known is not None and known[0] == conninfo:
            return known[1]
        _probe(role, conninfo).close()
        pool: Pool = ConnectionPool(
            conninfo,
            min_size=0,
            max_size=_POOL_SIZE,
            kwargs={"autocommit": True, "prepare_threshold": None},
            configure=_is_logged_in_as(role),
            reset=_discard_all,
            check=ConnectionPool.check_connection,
            max_idle=_POOL_IDLE_SECONDS,
            timeout=_LOGIN_TIMEOUT_SECONDS,
            num_workers=1,
            name=f"pgdurable-login-{row.submitter_oid}",
            open=True,
        )
        with self._lock:
            known = self._pools.get(key)
            stale: Pool | None
            if known is not None and known[0] == conninfo:  # another slot was quicker
                stale, chosen = pool, known[1]
            else:
                stale = known[1] if known is not None else None
                self._pools[key] = (conninfo, pool)
                chosen = pool
        if stale is not None:
            stale.close()
        return chosen

    def _forget_pool(self, row: store.InstanceRow, pool: Pool) -> None:
        key = (row.submitter_oid, row.database)
        with self._lock:
            known = self._pools.get(key)
            if known is not None and known[1] is pool:
                del self._pools[key]
        pool.close()


def _probe(role: str, conninfo: str) -> psycopg.Connection[Any]:
    """A login as `role` with `conninfo`, checked; a clear StepError if it fails."""
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=int(_LOGIN_TIMEOUT_SECONDS))
    except psycopg.OperationalError as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise StepError(f"cannot log in as role {role} for the autocommit lane ({reason}): {_HOW_TO_LOG_IN}") from None
    try:
        _is_logged_in_as(role)(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _is_logged_in_as(role: str) -> Callable[[psycopg.Connection[Any]], None]:
    def check(conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT session_user::text").fetchone()
        if row is None or row[0] != role:
            raise StepError(f"the autocommit lane asked to log in as role {role} but is {row[0] if row else '?'}")

    return check


def _discard_all(conn: psycopg.Connection[Any]) -> None:
    """Before a lane connection serves again: nothing of the last statement remains (settings, SET ROLE,
    temporary tables, prepared statements, cursors, LISTEN, advisory locks)."""
    conn.execute("DISCARD ALL")


def _unquoted(regrole: str) -> str:
    """A role name as `regrole::text` prints it, without the identifier quotes it adds when needed."""
    if len(regrole) >= 2 and regrole[0] == regrole[-1] == '"':
        return regrole[1:-1].replace('""', '"')
    return regrole


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
