"""Install, upgrade and uninstall the `df` schema: versioned SQL migrations applied under an advisory lock.

The migrations are the files ``pgdurable/sql/NNNN_<slug>.sql``, applied in order, each recorded in
``df.schema_migrations`` with the SHA-256 of its text. Installing twice is a no-op; installing a newer
package upgrades in place; a database whose schema is newer than this package is refused, and so is one
whose recorded checksums differ from the package's (an edited migration).

No superuser is needed: the database owner (or any role with CREATE on the database) can install. The
operators live in schema ``df``, and `install` adds ``df`` to the database's default ``search_path`` when
the installer may (database owner or superuser); otherwise it reports the one line to run. When the
installer is a superuser it also creates copies of the operators in ``pg_catalog``, as pg_durable does, so
they resolve whatever the ``search_path``.

How to check, as an application role, in a new session::

    SHOW search_path;              -- should list df
    SELECT 'SELECT 1' ~> 'SELECT 2';

``pg_dump`` does not carry the ``pg_catalog`` operator copies (nor, unless ``--create`` is used, the
database's ``search_path`` setting): after a restore, run ``pgdurable init`` again. It applies no migration
and puts both back.

On the embedded default (`install` without a DSN, i.e. ``pgdurable init``), `install_embedded` also
configures ``df.start(..., transaction_mode => 'new')``: see `configure_loopback`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import importlib.resources
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgdurable.errors import PgdurableError

if TYPE_CHECKING:
    from pgdurable.embedded import EmbeddedServer

__all__ = [
    "LATEST",
    "LOOPBACK_SETTING",
    "MIGRATIONS",
    "InstallResult",
    "Migration",
    "MigrationError",
    "apply",
    "check_version",
    "configure_loopback",
    "current_version",
    "install",
    "install_embedded",
    "uninstall",
]

Conn = psycopg.Connection[Any]

_FILE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# pg_advisory_xact_lock(classid, objid): "PGDF" and 1 = migrations.
_LOCK_CLASS: Final = 0x50474446
_LOCK_MIGRATE: Final = 1
_LOCK_LOOPBACK: Final = 2

LOOPBACK_SETTING: Final = "new_transaction_conninfo"
"""The df.settings key holding the libpq conninfo (with its password) of the transaction_mode 'new' loopback."""
_LOOPBACK_DESCRIPTION: Final = (
    "libpq conninfo of the loopback role used by df.start(transaction_mode => 'new'), via dblink"
)
_LOOPBACK_HBA_TAG: Final = "transaction_mode-new loopback"
_PLAIN_ROLE: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SCRAM_ITERATIONS: Final = 4096  # PostgreSQL's default scram_iterations
_SCRAM_VERIFIER: Final = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")
_RELOAD_WAIT_SECONDS: Final = 10.0

# The operators and the functions behind them, for the pg_catalog copies.
_OPERATORS: Final = (
    ("~>", "text", "text", "df.seq"),
    ("|=>", "text", "text", "df.as_op"),
    ("&", "text", "text", 'df."join"'),
    ("|", "text", "text", "df.race"),
    ("?>", "text", "text", "df.if_then_op"),
    ("!>", "text", "text", "df.if_else_op"),
    ("@>", None, "text", "df.loop_prefix_op"),
)
_DEFAULT_SEARCH_PATH: Final = '"$user", public'


class MigrationError(PgdurableError, RuntimeError):
    """The df schema cannot be installed or upgraded as asked (the text says why and what to do)."""


@dataclass(frozen=True)
class Migration:
    """One migration file: its version, slug, SQL text and the SHA-256 of that text."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def _load() -> tuple[Migration, ...]:
    found = []
    for entry in importlib.resources.files("pgdurable").joinpath("sql").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration files must be numbered 1..N without gaps, got {versions}")
    return tuple(found)


MIGRATIONS: Final = _load()
LATEST: Final = MIGRATIONS[-1].version if MIGRATIONS else 0
"""The schema version this package installs; workers refuse any other (see `check_version`)."""


@dataclass(frozen=True)
class InstallResult:
    """What `install` did. `messages` are the lines the CLI prints."""

    dbname: str
    version: int
    applied: tuple[int, ...]
    owner: str
    superuser: bool
    catalog_operators: bool
    search_path_set: bool
    search_path_hint: str | None
    app_role: str | None
    app_dsn: str | None
    messages: tuple[str, ...]
    loopback_role: str | None = None
    """The role of the transaction_mode 'new' loopback, when this install configured it (embedded default)."""


# --- reading the version ----------------------------------------------------------------------------------


def current_version(conn: Conn) -> int | None:
    """The df schema version installed in the connected database, or None if df is not installed."""
    row = conn.execute("SELECT pg_catalog.to_regclass('df.schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute("SELECT max(version) FROM df.schema_migrations").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def check_version(conn: Conn) -> int:
    """Return the installed version if it is the one this package knows (`LATEST`), else raise.

    Workers call this before they touch the df tables.
    """
    version = current_version(conn)
    if version is None:
        raise MigrationError("the df schema is not installed in this database: run `pgdurable init`")
    if version != LATEST:
        newer = version > LATEST
        raise MigrationError(
            f"the df schema is version {version} but this pgdurable knows version {LATEST}: "
            + ("upgrade pgdurable" if newer else "run `pgdurable init` to upgrade the schema")
        )
    return version


# --- install ------------------------------------------------------------------------------------------------


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("pgdurable")
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        return "0+unknown"


def _default_dsn() -> str:
    from pgdurable import embedded

    server = embedded.start(keep_running=True)
    return server.dsn("postgres", "postgres")


_EMBEDDED_DATABASE: Final = "postgres"
_EMBEDDED_SUPERUSER: Final = "postgres"


def _one(conn: Conn, query: str, params: Sequence[object] = ()) -> object:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _ensure_role(conn: Conn, role: str, *, login: bool = True) -> bool:
    if _one(conn, "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)):
        return False
    conn.execute(sql.SQL("CREATE ROLE {} " + ("LOGIN" if login else "NOLOGIN")).format(sql.Identifier(role)))
    return True


def apply(conn: Conn, *, owner: str | None = None) -> tuple[int, ...]:
    """Apply the pending migrations in the current transaction (the caller commits); return their versions.

    Takes the migration advisory lock for the transaction. Objects are created by `owner` (default: the
    current role), which the current role must be able to `SET ROLE` to.
    """
    conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _LOCK_MIGRATE))
    me = str(_one(conn, "SELECT current_user"))
    owner = owner or me
    if _one(conn, "SELECT pg_catalog.to_regnamespace('df') IS NULL"):
        conn.execute(sql.SQL("CREATE SCHEMA df AUTHORIZATION {}").format(sql.Identifier(owner)))
    elif not _one(
        conn,
        "SELECT nspowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = %s)"
        " FROM pg_catalog.pg_namespace WHERE nspname = 'df'",
        (owner,),
    ):
        schema_owner = _one(conn, "SELECT nspowner::regrole::text FROM pg_catalog.pg_namespace WHERE nspname = 'df'")
        raise MigrationError(f"schema df exists and is owned by {schema_owner}, not {owner}")
    # the step runners' schema; created here because the owner may lack CREATE on the database
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS df_exec AUTHORIZATION {}").format(sql.Identifier(owner)))
    if owner != me:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
    try:
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS df.schema_migrations (
                version         integer PRIMARY KEY,
                name            text NOT NULL,
                checksum        text NOT NULL,
                package_version text NOT NULL,
                applied_at      timestamptz NOT NULL DEFAULT now(),
                applied_by      text NOT NULL DEFAULT current_user
            )
            """
        )
        applied = {
            int(v): (str(n), str(c))
            for v, n, c in conn.execute("SELECT version, name, checksum FROM df.schema_migrations").fetchall()
        }
        newer = sorted(v for v in applied if v > LATEST)
        if newer:
            raise MigrationError(
                f"the df schema in this database is version {max(newer)}, newer than this pgdurable "
                f"(version {LATEST}): upgrade pgdurable"
            )
        done = []
        for migration in MIGRATIONS:
            known = applied.get(migration.version)
            if known is not None:
                if known[1] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{known[0]} was applied with a different text "
                        f"(checksum {known[1][:12]}…, this package has {migration.checksum[:12]}…); "
                        "a released migration must never change"
                    )
                continue
            conn.execute(migration.sql.encode("utf-8"))
            conn.execute(
                "INSERT INTO df.schema_migrations (version, name, checksum, package_version) VALUES (%s, %s, %s, %s)",
                (migration.version, migration.name, migration.checksum, _package_version()),
            )
            done.append(migration.version)
    finally:
        if owner != me:
            conn.execute("RESET ROLE")
    return tuple(done)


def _catalog_operators(conn: Conn) -> None:
    for name, left, right, function in _OPERATORS:
        exists = _one(
            conn,
            "SELECT 1 FROM pg_catalog.pg_operator WHERE oprname = %s AND oprnamespace = 'pg_catalog'::regnamespace"
            " AND oprleft = coalesce(%s::regtype, 0) AND oprright = %s::regtype",
            (name, left, right),
        )
        if not exists:
            args = f"LEFTARG = {left}, RIGHTARG = {right}" if left else f"RIGHTARG = {right}"
            conn.execute(f"CREATE OPERATOR pg_catalog.{name} ({args}, FUNCTION = {function})".encode())


def _drop_catalog_operators(conn: Conn) -> None:
    for name, left, right, _ in _OPERATORS:
        conn.execute(f"DROP OPERATOR IF EXISTS pg_catalog.{name} ({left or 'NONE'}, {right})".encode())


def _database_search_path(conn: Conn) -> str | None:
    value = _one(
        conn,
        """
        SELECT substr(s.opt, length('search_path=') + 1)
          FROM pg_catalog.pg_db_role_setting d, unnest(d.setconfig) AS s(opt)
         WHERE d.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
           AND d.setrole = 0 AND s.opt LIKE 'search_path=%%'
        """,
    )
    return None if value is None else str(value)


def _path_items(path: str) -> list[str]:
    return [item.strip() for item in path.split(",") if item.strip()]


def _may_alter_database(conn: Conn) -> bool:
    return bool(
        _one(
            conn,
            "SELECT pg_catalog.pg_has_role(current_user, d.datdba, 'USAGE') FROM pg_catalog.pg_database d"
            " WHERE d.datname = current_database()",
        )
    )


def _search_path_with_df(conn: Conn) -> str:
    current = _database_search_path(conn)
    items = _path_items(current if current is not None else _DEFAULT_SEARCH_PATH)
    if "df" not in items:
        items.append("df")
    return ", ".join(items)


def install(
    dsn: str | None = None,
    *,
    owner: str | None = None,
    app_role: str | None = None,
    catalog_operators: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> InstallResult:
    """Install or upgrade the df schema in the database of `dsn`; idempotent.

    - ``dsn=None``: the embedded default server (started and kept running), with the roles ``pgdurable``
      (owner of df, runs workers) and ``pgdurable_app`` (an application role), both created if missing,
      and ``transaction_mode => 'new'`` configured: see `install_embedded`.
    - `owner`: the role that owns df (created with LOGIN if missing, which needs CREATEROLE). Default: the
      connecting role.
    - `app_role`: an application role to create (LOGIN, if missing) and prepare with ``df.grant_usage``;
      its DSN is returned in `InstallResult.app_dsn`.
    - `catalog_operators`: add the ``pg_catalog`` operator copies; default: when the installer is a
      superuser (it must be).

    Every call also re-checks what ``pg_dump`` loses (the operator copies, the database ``search_path``).
    `echo` receives each message line as it happens (the CLI prints them).
    """
    if dsn is None:
        return install_embedded(owner=owner, app_role=app_role, catalog_operators=catalog_operators, echo=echo)
    messages: list[str] = []

    def say(line: str) -> None:
        messages.append(line)
        if echo is not None:
            echo(line)

    with psycopg.connect(dsn, autocommit=True) as conn:
        superuser = bool(_one(conn, "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"))
        dbname = str(_one(conn, "SELECT current_database()"))
        with conn.transaction():
            if owner is not None and _ensure_role(conn, owner):
                say(f"created role {owner} (LOGIN), the owner of schema df")
            owner = owner or str(_one(conn, "SELECT current_user"))
            if (
                superuser
                and not _one(conn, "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'dblink'")
                and _one(conn, "SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'dblink'")
            ):
                conn.execute("CREATE SCHEMA IF NOT EXISTS df_dblink")
                conn.execute("CREATE EXTENSION dblink SCHEMA df_dblink")
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA df_dblink TO {}").format(sql.Identifier(owner)))
            before = _one(conn, "SELECT pg_catalog.to_regclass('df.schema_migrations') IS NOT NULL")
            version_before = current_version(conn) if before else None
            applied = apply(conn, owner=owner)
            if applied:
                what = "installed" if version_before is None else f"upgraded from version {version_before}"
                say(f"df schema {what} to version {LATEST} in database {dbname}")
            else:
                say(f"df schema is up to date (version {LATEST}) in database {dbname}")

            want_catalog = superuser if catalog_operators is None else catalog_operators
            if want_catalog:
                if not superuser:
                    raise MigrationError("pg_catalog operator copies need a superuser")
                _catalog_operators(conn)
                say("operators ~> |=> & | ?> !> @> also in pg_catalog (they resolve with any search_path)")

            target_path = _search_path_with_df(conn)
            path_set = False
            hint: str | None = None
            if _path_items(_database_search_path(conn) or "") == _path_items(target_path):
                path_set = True
            elif _may_alter_database(conn) or superuser:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET search_path = " + target_path).format(sql.Identifier(dbname))
                )
                path_set = True
                say(f"database {dbname}: default search_path is now {target_path} (new sessions)")
            else:
                hint = (
                    sql.SQL("ALTER DATABASE {} SET search_path = " + target_path + ";")
                    .format(sql.Identifier(dbname))
                    .as_string(conn)
                )
                say("df is not on the database's default search_path; as its owner or a superuser run:")
                say(f"  {hint}")

            app_dsn = None
            if app_role is not None:
                if _ensure_role(conn, app_role):
                    say(f"created application role {app_role} (LOGIN)")
                conn.execute("SELECT df.grant_usage(%s)", (app_role,))
                params = {k: v for k, v in conninfo_to_dict(dsn).items() if k != "password"}
                params["user"] = app_role
                app_dsn = make_conninfo(**params)  # type: ignore[arg-type]
                say(f"application role DSN: {app_dsn}")

    return InstallResult(
        dbname=dbname,
        version=LATEST,
        applied=applied,
        owner=owner,
        superuser=superuser,
        catalog_operators=want_catalog,
        search_path_set=path_set,
        search_path_hint=hint,
        app_role=app_role,
        app_dsn=app_dsn,
        messages=tuple(messages),
    )


def install_embedded(
    server: EmbeddedServer | None = None,
    *,
    owner: str | None = None,
    app_role: str | None = None,
    catalog_operators: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> InstallResult:
    """`install` on an embedded server (default: the embedded default, started and kept running), as
    ``pgdurable init`` without ``--dsn`` does; idempotent.

    Connects to its ``postgres`` database as the superuser ``postgres``; `owner` defaults to
    ``pgdurable`` and `app_role` to ``pgdurable_app`` (created if missing). Then `configure_loopback`
    makes ``df.start(..., transaction_mode => 'new')`` work. Pass a `server` of your own (say, one started
    in a temporary home) to set it up the same way without touching the default one.
    """
    from pgdurable import embedded

    if server is None:
        server = embedded.start(keep_running=True)
    owner = owner or embedded.OWNER_ROLE
    app_role = app_role or embedded.APP_ROLE
    result = install(
        server.dsn(_EMBEDDED_DATABASE, _EMBEDDED_SUPERUSER),
        owner=owner,
        app_role=app_role,
        catalog_operators=catalog_operators,
        echo=echo,
    )
    lines = configure_loopback(server, owner=owner, echo=echo)
    return dataclasses.replace(result, messages=result.messages + lines, loopback_role=embedded.LOOPBACK_ROLE)


def configure_loopback(
    server: EmbeddedServer,
    *,
    owner: str,
    dbname: str = _EMBEDDED_DATABASE,
    role: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> tuple[str, ...]:
    """Configure ``df.start(..., transaction_mode => 'new')`` on an embedded server where df is installed
    and owned by `owner`; idempotent. Returns the message lines (also passed to `echo`).

    How the pieces fit. ``df._start_new`` (SECURITY DEFINER, run by any caller) checks that the session
    user may act as the submitting role, reads the conninfo of the df.settings key `LOOPBACK_SETTING`,
    and through ``dblink`` opens a second session with it that runs ``df._start_as(role, ...)`` and
    commits on its own. ``df._start_as`` (SECURITY DEFINER, owned by `owner`) trusts its caller to have
    done that vetting: whoever may run it can submit workflows on behalf of any LOGIN role. So:

    - **The role.** The loopback logs in as ``pgdurable_loopback`` (`embedded.LOOPBACK_ROLE`), a LOGIN
      role that is neither superuser nor a member of any role, with exactly USAGE on schema df and
      EXECUTE on ``df._start_as``: no table, no setting, no runner. Not the owner itself: requiring a
      password of the owner would break the password-less socket logins of workers, and a membership in
      the owner would hand over every df table and runner for the sake of one function.
    - **The password** is random (32 bytes, URL-safe base64) and lives only in the conninfo in
      df.settings, which row-level security without a policy leaves to the owner (and superusers), so
      only ``df._start_new`` running as the owner reads it; the server keeps a SCRAM-SHA-256 verifier,
      computed here, so the plaintext is never sent in a statement. A passfile cannot serve: dblink
      refuses a non-superuser's connection string without ``password=`` (so that the server's own
      ``~/.pgpass`` cannot be borrowed), and the backend that would read it runs as the server's system
      user, not as the owner of the pgdurable home.
    - **pg_hba.conf** gets ``local all pgdurable_loopback scram-sha-256`` (and the same as a ``host`` line
      for the Windows server, which listens on 127.0.0.1), above initdb's trust lines. dblink also
      insists that the server actually asked for the password; and without these lines a trust line
      would let anyone who reaches the socket log in as the loopback role. The configuration is then
      reloaded (``pg_reload_conf()``), and this waits until a login as the loopback really uses its
      password.
    - **The conninfo** names the socket directory and port (libpq's default socket directory is not this
      server's), the database, the role and the password.

    A second run keeps the role and the password (it only re-checks the verifier, the grants, the
    conninfo, which follows the socket and port, and the hba block, never duplicated). If the setting was
    removed, the role gets a new password.
    """
    from pgdurable import embedded

    role = role or embedded.LOOPBACK_ROLE
    if not _PLAIN_ROLE.fullmatch(role):
        raise ValueError(f"the loopback role must be a plain lower-case name, got {role!r}")
    messages: list[str] = []

    def say(line: str) -> None:
        messages.append(line)
        if echo is not None:
            echo(line)

    with psycopg.connect(server.dsn(dbname, _EMBEDDED_SUPERUSER), autocommit=True) as conn:
        if not _one(conn, "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"):
            raise MigrationError("configuring the transaction_mode 'new' loopback needs a superuser")
        with conn.transaction():
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _LOCK_LOOPBACK))
            start_as = [
                str(signature)
                for (signature,) in conn.execute(
                    "SELECT p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p"
                    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
                    " WHERE n.nspname = 'df' AND p.proname = '_start_as'"
                ).fetchall()
            ]
            if not start_as:
                raise MigrationError("df._start_as is missing: install the df schema first")
            dblink_schema = _one(
                conn,
                "SELECT n.nspname FROM pg_catalog.pg_extension e"
                " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'dblink'",
            )
            if dblink_schema is None:
                raise MigrationError("transaction_mode 'new' needs the dblink extension, which is not installed")
            # df._start_new runs as the owner and calls dblink from its schema.
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                    sql.Identifier(str(dblink_schema)), sql.Identifier(owner)
                )
            )

            old_conninfo = _one(conn, "SELECT value #>> '{}' FROM df.settings WHERE key = %s", (LOOPBACK_SETTING,))
            password = _password_of(None if old_conninfo is None else str(old_conninfo), role)
            created = _ensure_role(conn, role)
            conn.execute(
                sql.SQL(
                    "ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
                ).format(sql.Identifier(role))
            )
            verifier = _one(conn, "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s", (role,))
            password_set = False
            if password is None or not _scram_matches(None if verifier is None else str(verifier), password):
                password = password or secrets.token_urlsafe(32)
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(_scram_verifier(password))
                    )
                )
                password_set = True
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA df TO {}").format(sql.Identifier(role)))
            for signature in start_as:
                conn.execute(
                    sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(signature), sql.Identifier(role))
                )

            conninfo = make_conninfo(
                host=server.host,
                port=str(server.port),
                dbname=dbname,
                user=role,
                password=password,
                application_name=role,
                connect_timeout="10",
            )
            conninfo_set = conninfo != old_conninfo
            if conninfo_set:
                conn.execute(
                    "INSERT INTO df.settings (key, value, description) VALUES (%s, to_jsonb(%s::text), %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (LOOPBACK_SETTING, conninfo, _LOOPBACK_DESCRIPTION),
                )

            rules = (f"local   all   {role}   scram-sha-256", f"host    all   {role}   all   scram-sha-256")
            hba_set = server.set_hba_block(_LOOPBACK_HBA_TAG, rules)
            if hba_set:
                errors = conn.execute(
                    "SELECT line_number, error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL"
                ).fetchall()
                if errors:
                    raise MigrationError(
                        f"{server.hba_file} has errors after adding the loopback rules: "
                        + "; ".join(f"line {line}: {error}" for line, error in errors)
                    )
                conn.execute("SELECT pg_catalog.pg_reload_conf()")

    if created:
        say(f"created role {role} (LOGIN; may only run df._start_as) for df.start(transaction_mode => 'new')")
    if hba_set:
        say(f"{server.hba_file}: {role} logs in with its password (scram-sha-256); configuration reloaded")
    if created or password_set or conninfo_set or hba_set:
        _await_password_login(conninfo, role)
        say(f"transaction_mode => 'new' configured: dblink loopback as {role}, conninfo in df.settings")
    else:
        say(f"transaction_mode => 'new' is configured (dblink loopback as {role})")
    return tuple(messages)


def _password_of(conninfo: str | None, role: str) -> str | None:
    """The password of a stored loopback conninfo for `role`, if it is one this module would have chosen
    (printable ASCII, which SCRAM's SASLprep leaves as it is)."""
    if not conninfo:
        return None
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return None
    password = params.get("password")
    if params.get("user") != role or not isinstance(password, str) or not password:
        return None
    return password if password.isascii() and password.isprintable() else None


def _scram_verifier(password: str, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677, as ``\\password`` makes)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _scram_matches(verifier: str | None, password: str) -> bool:
    match = _SCRAM_VERIFIER.fullmatch(verifier or "")
    if match is None or verifier is None:
        return False
    expected = _scram_verifier(password, base64.b64decode(match[2]), int(match[1]))
    return hmac.compare_digest(expected, verifier)


def _await_password_login(conninfo: str, role: str) -> None:
    """Wait until a login with `conninfo` succeeds and the server asked for its password, which is what
    dblink demands of a non-superuser (the postmaster applies a reloaded pg_hba.conf asynchronously)."""
    deadline = time.monotonic() + _RELOAD_WAIT_SECONDS
    while True:
        try:
            with psycopg.connect(conninfo, autocommit=True) as probe:
                if probe.pgconn.used_password:
                    return
                problem = "the server did not ask for its password (a trust rule still applies)"
        except psycopg.OperationalError as exc:
            problem = str(exc).strip()
        if time.monotonic() > deadline:
            raise MigrationError(f"the transaction_mode 'new' loopback cannot log in as {role}: {problem}")
        time.sleep(0.05)


def uninstall(dsn: str | None = None, *, echo: Callable[[str], None] | None = None) -> bool:
    """Remove everything `install` added to the database of `dsn`: schemas df, df_exec and df_dblink, the
    pg_catalog operator copies and df in the database's default search_path. Roles are kept.

    Returns False if df was not installed. ``dsn=None`` means the embedded default server.
    """
    if dsn is None:
        dsn = _default_dsn()
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _LOCK_MIGRATE))
        dbname = str(_one(conn, "SELECT current_database()"))
        installed = bool(_one(conn, "SELECT pg_catalog.to_regnamespace('df') IS NOT NULL"))
        superuser = bool(_one(conn, "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"))
        if superuser:
            _drop_catalog_operators(conn)
        elif _one(
            conn,
            "SELECT 1 FROM pg_catalog.pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace AND oprcode::text"
            " IN ('df.seq', 'df.as_op', 'df.\"join\"', 'df.race', 'df.if_then_op', 'df.if_else_op',"
            " 'df.loop_prefix_op')",
        ):
            raise MigrationError("the pg_catalog operator copies can only be removed by a superuser")
        for schema in ("df_exec", "df", "df_dblink"):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        current = _database_search_path(conn)
        if current is not None and "df" in _path_items(current) and (_may_alter_database(conn) or superuser):
            rest = [item for item in _path_items(current) if item != "df"]
            if rest == _path_items(_DEFAULT_SEARCH_PATH):
                conn.execute(sql.SQL("ALTER DATABASE {} RESET search_path").format(sql.Identifier(dbname)))
            else:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET search_path = " + ", ".join(rest)).format(sql.Identifier(dbname))
                )
    if echo is not None:
        echo(f"df schema removed from database {dbname}" if installed else f"df is not installed in {dbname}")
    return installed
