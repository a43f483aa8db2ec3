"""The `pgdurable` command: install the df schema, remove it, open psql.

    pgdurable init [--dsn DSN] [--owner ROLE] [--app-role ROLE]
    pgdurable uninstall [--dsn DSN]
    pgdurable psql [--dsn DSN]
    pgdurable worker [--dsn DSN] [--concurrency N] [--log-level LEVEL]

Without ``--dsn`` the embedded default server is used (started if needed, and kept running): `init` creates
the roles ``pgdurable`` (owns df, runs workers) and ``pgdurable_app`` (an application role) and prints the
application role's DSN; `psql` connects as that role.

Exit codes: 0 success, 1 error (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence

import psycopg

from pgdurable.errors import PgdurableError

__all__ = ["main"]

_APP_ROLE = "pgdurable_app"

_INIT_EPILOG = """\
Check, as an application role in a new session:  SHOW search_path;  SELECT 'SELECT 1' ~> 'SELECT 2';
pg_dump does not keep the pg_catalog operator copies: run `pgdurable init` again after a restore."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgdurable", description="Durable workflows inside any PostgreSQL.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = commands.add_parser(
        "init",
        help="install or upgrade the df schema (idempotent)",
        epilog=_INIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("--dsn", help="libpq DSN of the target database (default: the embedded server)")
    init.add_argument("--owner", help="role that owns df and runs workers (default: the connecting role)")
    init.add_argument("--app-role", help="application role to create and prepare with df.grant_usage")
    uninstall = commands.add_parser("uninstall", help="remove the df schema and everything init added")
    uninstall.add_argument("--dsn", help="libpq DSN of the target database (default: the embedded server)")
    psql = commands.add_parser("psql", help="open psql (the embedded server's, if installed)")
    psql.add_argument("--dsn", help="libpq DSN to connect to (default: the embedded server as pgdurable_app)")
    worker = commands.add_parser("worker", help="run a worker until SIGTERM or Ctrl-C")
    worker.add_argument(
        "--dsn", help="DSN of the df owner role (default: $PGDURABLE_DSN, else the embedded server as pgdurable)"
    )
    worker.add_argument("--concurrency", type=int, default=4, help="steps run at once (default: 4)")
    worker.add_argument("--lease", type=float, default=30.0, help="seconds a claim lasts unless renewed")
    worker.add_argument("--poll", type=float, default=1.0, help="seconds between polls for due work")
    worker.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    return parser


def _say(line: str) -> None:
    print(line, flush=True)


def _init(args: argparse.Namespace) -> int:
    from pgdurable import migrate

    migrate.install(args.dsn, owner=args.owner, app_role=args.app_role, echo=_say)
    print("Check in a new session: SHOW search_path; SELECT 'SELECT 1' ~> 'SELECT 2';")
    print("After a pg_dump restore, run `pgdurable init` again (pg_catalog operator copies are not dumped).")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from pgdurable import migrate

    migrate.uninstall(args.dsn, echo=_say)
    return 0


def _psql_binary() -> str:
    try:
        from pgdurable import embedded

        path = embedded.psql_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("psql")
    if found is None:
        raise PgdurableError("psql not found: install pgdurable[embedded] or a PostgreSQL client")
    return found


def _psql(args: argparse.Namespace) -> int:
    dsn = args.dsn
    if dsn is None:
        from pgdurable import embedded

        dsn = embedded.start(keep_running=True).dsn("postgres", _APP_ROLE)
    return subprocess.call([_psql_binary(), dsn])


def _worker(args: argparse.Namespace) -> int:
    import os
    import signal

    from pgdurable.runtime.worker import Worker, WorkerConfig

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dsn = args.dsn or os.environ.get("PGDURABLE_DSN")
    if dsn is None:
        from pgdurable import embedded

        dsn = embedded.owner_dsn()
    config = WorkerConfig(concurrency=args.concurrency, lease_seconds=args.lease, poll_seconds=args.poll)
    worker = Worker(dsn, config=config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.request_stop())
    worker.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return 0 if exit_.code in (0, None) else 2
    handlers = {"init": _init, "uninstall": _uninstall, "psql": _psql, "worker": _worker}
    try:
        return handlers[args.command](args)
    except (PgdurableError, psycopg.Error, OSError, ImportError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"pgdurable {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
