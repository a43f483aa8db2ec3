"""The `pgdurable` command: install df, run workers, start and watch workflows, run the embedded server.

Usage::

    pgdurable demo                         a workflow through a worker crash and its resume (embedded server)
    pgdurable init [--owner R] [--app-role R]   install or upgrade the df schema (idempotent)
    pgdurable worker [--concurrency N] [--lease S] [--poll S] [--log-level L]   run until SIGTERM/Ctrl-C
    pgdurable start TEXT|--file PATH|- [--label L] [--wait [SECONDS]]          print the instance id
    pgdurable status ID                    pending, running, completed, failed or cancelled
    pgdurable result ID                    the result, as indented JSON
    pgdurable signal ID NAME [DATA]        DATA: JSON, else sent as a string (default {})
    pgdurable cancel ID [--reason TEXT]
    pgdurable list [--status S] [--label L] [--limit N]   table: id, status, label, output (truncated)
    pgdurable explain ID|TEXT|-            the live tree of an instance, or a dry run of SQL DSL text
    pgdurable db start|stop|status         the embedded PostgreSQL in $PGDURABLE_HOME (start keeps it running)
    pgdurable db dsn [--role app|owner]    its DSN (starting it, with df installed, if needed)
    pgdurable psql | uninstall

The DSN comes from ``--dsn`` (before or after the command), else ``$PGDURABLE_DSN``, else the embedded
server, started and set up on first use: as ``pgdurable_app`` (the application role) for client commands
and `psql`, as ``pgdurable`` (the df owner) for `worker`; `init` there creates both roles. TEXT is SQL DSL
text (``'SELECT 1' ~> 'SELECT 2'``), a graph's JSON, or one plain SQL statement. ``start --wait`` blocks
until the instance finishes (a worker must be running) and prints its result on stdout. `demo` always
uses the embedded server and leaves it running (`pgdurable db stop` stops it). ``--debug`` shows the
traceback of an error.

Exit codes:

    0    success
    1    error (one line on stderr)
    2    usage error
    3    the instance failed or was cancelled (`start --wait`, `result`)
    4    timeout (`start --wait SECONDS`)
    5    not found: no instance with this id is visible to the role
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TextIO

import psycopg

from pgdurable.errors import PgdurableError

if TYPE_CHECKING:
    from pgdurable.client import Client
    from pgdurable.embedded import EmbeddedServer

__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "main",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_FAILED: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_NOT_FOUND: Final = 5
EXIT_INTERRUPTED: Final = 130

_DSN_ENV: Final = "PGDURABLE_DSN"
_INSTANCE_ID: Final = re.compile(r"^[0-9a-fA-F]{8}$")  # what df.explain takes for an instance id
_STATUSES: Final = ("pending", "running", "completed", "failed", "cancelled")
_TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})
# What df.explain returns (rather than raises) for input it cannot explain (0004_monitoring.sql).
_EXPLAIN_ERRORS: Final = ("Failed to evaluate expression:", "Cannot explain input:", "Invalid durable function graph:")

_INIT_EPILOG = """\
Check, as an application role in a new session:  SHOW search_path;  SELECT 'SELECT 1' ~> 'SELECT 2';
pg_dump does not keep the pg_catalog operator copies: run `pgdurable init` again after a restore."""


class _Exit(Exception):
    """Ends a command with `code`, after printing `message` (one line) on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and an exception, never `sys.exit`."""

    def error(self, message: str) -> NoReturn:
        raise _Exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            print(message.rstrip(), file=sys.stderr)
        raise _Exit(status, "")


# --- the parser ----------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, dsn_help: str | None) -> None:
    """`--debug` (and `--dsn`, if the command connects) after the command too. SUPPRESS keeps a value given
    before the command from being overwritten by the subcommand's default."""
    if dsn_help is not None:
        parser.add_argument("--dsn", default=argparse.SUPPRESS, help=dsn_help)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


_APP_DSN_HELP = "libpq DSN (default: $PGDURABLE_DSN, else the embedded server as pgdurable_app)"
_OWNER_DSN_HELP = "DSN of the df owner role (default: $PGDURABLE_DSN, else the embedded server as pgdurable)"


def _parser() -> _Parser:
    parser = _Parser(
        prog="pgdurable",
        description="Durable workflows inside any PostgreSQL.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 instance failed, 4 timeout, 5 not found.",
    )
    parser.add_argument("--dsn", help=_APP_DSN_HELP)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"pgdurable {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="a workflow survives a worker crash (embedded server)")
    _common(demo, None)

    init = commands.add_parser(
        "init",
        help="install or upgrade the df schema (idempotent)",
        epilog=_INIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(init, "DSN of the target database (default: $PGDURABLE_DSN, else the embedded server)")
    init.add_argument("--owner", help="role that owns df and runs workers (default: the connecting role)")
    init.add_argument("--app-role", help="application role to create and prepare with df.grant_usage")

    worker = commands.add_parser("worker", help="run a worker until SIGTERM or Ctrl-C")
    _common(worker, _OWNER_DSN_HELP)
    worker.add_argument("--concurrency", type=int, default=4, help="steps run at once (default: 4)")
    worker.add_argument("--lease", type=float, default=30.0, help="seconds a claim lasts unless renewed")
    worker.add_argument("--poll", type=float, default=1.0, help="seconds between polls for due work")
    worker.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")

    start = commands.add_parser(
        "start",
        help="start a workflow; prints its instance id",
        description="Start a workflow from SQL DSL text, a graph's JSON, or one SQL statement.",
    )
    _common(start, _APP_DSN_HELP)
    start.add_argument("text", nargs="?", metavar="TEXT", help="the workflow, or - to read it from stdin")
    start.add_argument("--file", "-f", metavar="PATH", help="read the workflow from this file")
    start.add_argument("--label", help="a label, for `pgdurable list --label`")
    start.add_argument(
        "--wait",
        nargs="?",
        const="",
        metavar="SECONDS",
        help="wait until the instance finishes (at most SECONDS) and print its result; needs a running worker",
    )

    status = commands.add_parser("status", help="print an instance's status")
    _common(status, _APP_DSN_HELP)
    status.add_argument("id", metavar="ID")

    result = commands.add_parser("result", help="print a completed instance's result as JSON")
    _common(result, _APP_DSN_HELP)
    result.add_argument("id", metavar="ID")

    signal_ = commands.add_parser("signal", help="send a signal to an instance")
    _common(signal_, _APP_DSN_HELP)
    signal_.add_argument("id", metavar="ID")
    signal_.add_argument("name", metavar="NAME")
    signal_.add_argument("data", nargs="?", metavar="DATA", help="JSON payload (default: {})")

    cancel = commands.add_parser("cancel", help="cancel a pending or running instance")
    _common(cancel, _APP_DSN_HELP)
    cancel.add_argument("id", metavar="ID")
    cancel.add_argument("--reason", default="Cancelled by user", help="recorded as its output")

    list_ = commands.add_parser("list", help="list instances, newest first")
    _common(list_, _APP_DSN_HELP)
    list_.add_argument("--status", choices=_STATUSES)
    list_.add_argument("--label")
    list_.add_argument("--limit", type=_positive_int, default=20, help="at most N rows (default: 20)")

    explain = commands.add_parser("explain", help="the tree of an instance (live) or of DSL text (dry run)")
    _common(explain, _APP_DSN_HELP)
    explain.add_argument("target", metavar="ID_OR_TEXT", help="an instance id, SQL DSL text, or - for stdin")

    db = commands.add_parser("db", help="the embedded PostgreSQL server (in $PGDURABLE_HOME)")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_start = db_commands.add_parser("start", help="start it (kept running) and install df")
    _common(db_start, None)
    db_stop = db_commands.add_parser("stop", help="stop it, disconnecting every session")
    _common(db_stop, None)
    db_status = db_commands.add_parser("status", help="print whether it runs, and where")
    _common(db_status, None)
    db_dsn = db_commands.add_parser("dsn", help="print a DSN (starts the server and installs df if needed)")
    _common(db_dsn, None)
    db_dsn.add_argument(
        "--role", choices=("app", "owner"), default="app", help="app: pgdurable_app (default); owner: pgdurable"
    )

    psql = commands.add_parser("psql", help="open psql (the embedded server's, if installed)")
    _common(psql, _APP_DSN_HELP)

    uninstall = commands.add_parser("uninstall", help="remove the df schema and everything init added")
    _common(uninstall, "DSN of the target database (default: $PGDURABLE_DSN, else the embedded server)")
    return parser


def _version() -> str:
    from pgdurable import __version__

    return __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --- helpers -------------------------------------------------------------------------------------------


def _say(line: str = "", end: str = "\n") -> None:
    print(line, end=end, flush=True)


def _dsn(args: argparse.Namespace) -> str | None:
    """`--dsn`, else `$PGDURABLE_DSN`, else None (the caller's embedded default)."""
    return args.dsn or os.environ.get(_DSN_ENV) or None


def _client(args: argparse.Namespace) -> Client:
    from pgdurable.client import Client

    return Client(_dsn(args))


def _read(text: str | None, path: str | None, what: str) -> str:
    if text is not None and path is not None:
        raise _Exit(EXIT_USAGE, f"pgdurable {what}: error: give the workflow as TEXT or --file, not both")
    if path is not None:
        content = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    elif text == "-":
        content = sys.stdin.read()
    elif text is not None:
        content = text
    else:
        raise _Exit(EXIT_USAGE, f"pgdurable {what}: error: give the workflow as TEXT, --file PATH or - (stdin)")
    if not content.strip():
        raise _Exit(EXIT_USAGE, f"pgdurable {what}: error: the workflow is empty")
    return content


def _not_found(instance_id: str) -> _Exit:
    return _Exit(EXIT_NOT_FOUND, f"instance {instance_id} not found (or not visible to this role)")


def _existing_status(client: Client, instance_id: str) -> str:
    status = client.status(instance_id)
    if status is None:
        raise _not_found(instance_id)
    return status


def _print_result(client: Client, instance_id: str, status: str) -> int:
    """Print a finished instance's result (stdout) or its failure (stderr); the exit code."""
    if status == "completed":
        print(json.dumps(client.result(instance_id), indent=2, ensure_ascii=False), flush=True)
        return EXIT_OK
    if status in ("failed", "cancelled"):
        output = _one_line(client.output(instance_id) or "")
        raise _Exit(EXIT_FAILED, f"instance {instance_id} {status}: {output}" if output else f"{instance_id} {status}")
    raise _Exit(EXIT_ERROR, f"instance {instance_id} is {status}: it has no result yet")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


# --- commands ------------------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from pgdurable import migrate

    migrate.install(_dsn(args), owner=args.owner, app_role=args.app_role, echo=_say)
    _say("Check in a new session: SHOW search_path; SELECT 'SELECT 1' ~> 'SELECT 2';")
    _say("After a pg_dump restore, run `pgdurable init` again (pg_catalog operator copies are not dumped).")
    return EXIT_OK


def _uninstall(args: argparse.Namespace) -> int:
    from pgdurable import migrate

    migrate.uninstall(_dsn(args), echo=_say)
    return EXIT_OK


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
    dsn = _dsn(args)
    if dsn is None:
        from pgdurable import embedded

        dsn = embedded.app_dsn()
    return subprocess.call([_psql_binary(), dsn])


def _worker(args: argparse.Namespace) -> int:
    from pgdurable.runtime.worker import Worker, WorkerConfig

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dsn = _dsn(args)
    if dsn is None:
        from pgdurable import embedded

        dsn = embedded.owner_dsn()
    config = WorkerConfig(concurrency=args.concurrency, lease_seconds=args.lease, poll_seconds=args.poll)
    worker = Worker(dsn, config=config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.request_stop())
    worker.run()
    return EXIT_OK


def _wait_seconds(text: str) -> float | None:
    if text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise _Exit(EXIT_USAGE, f"pgdurable start: error: --wait takes a number of seconds, got {text!r}") from None
    if not seconds > 0:
        raise _Exit(EXIT_USAGE, f"pgdurable start: error: --wait takes a positive number of seconds, got {text}")
    return seconds


def _start(args: argparse.Namespace) -> int:
    from pgdurable.client import WaitTimeout

    wait = args.wait
    if wait not in (None, "") and args.text is None and args.file is None and not _is_number(wait):
        # `start --wait 'SELECT 1'`: argparse gave the workflow to --wait's optional value
        args.text, wait = wait, ""
    text = _read(args.text, args.file, "start")
    timeout = None if wait is None else _wait_seconds(wait)
    client = _client(args)
    instance = client.start(text, label=args.label)
    if wait is None:
        _say(instance.id)
        return EXIT_OK
    print(f"started {instance.id}; waiting for it to finish", file=sys.stderr, flush=True)
    try:
        status = instance.wait(timeout)
    except WaitTimeout:
        now = client.status(instance.id) or "unknown"
        raise _Exit(EXIT_TIMEOUT, f"instance {instance.id} is still {now} after {wait} s") from None
    return _print_result(client, instance.id, status)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _status(args: argparse.Namespace) -> int:
    _say(_existing_status(_client(args), args.id))
    return EXIT_OK


def _result(args: argparse.Namespace) -> int:
    client = _client(args)
    return _print_result(client, args.id, _existing_status(client, args.id))


def _signal(args: argparse.Namespace) -> int:
    client = _client(args)
    _existing_status(client, args.id)
    data: Any = args.data
    if data is None:
        data = {}
    answer = _control(lambda: client.signal(args.id, args.name, data), args.id)
    if answer != "OK":
        raise _Exit(EXIT_ERROR, answer)
    _say(f"signal {args.name!r} sent to {args.id}")
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    status = _existing_status(client, args.id)
    if status == "cancelled":
        _say(f"instance {args.id} is already cancelled")
        return EXIT_OK
    if status in _TERMINAL:
        raise _Exit(EXIT_ERROR, f"instance {args.id} already {status}: nothing to cancel")
    _say(_control(lambda: client.cancel(args.id, args.reason), args.id))
    return EXIT_OK


def _control(call: Callable[[], str], instance_id: str) -> str:
    """df.signal and df.cancel raise 42501 for an instance that is gone or not the role's."""
    try:
        return call()
    except psycopg.errors.InsufficientPrivilege as error:
        if "not found" in str(error):
            raise _not_found(instance_id) from None
        raise


def _list(args: argparse.Namespace) -> int:
    rows = _client(args).list(status=args.status, label=args.label, limit=args.limit)
    if not rows:
        _say("no instances")
        return EXIT_OK
    width = shutil.get_terminal_size((120, 24)).columns
    labels = [_one_line(row.label or "") for row in rows]
    label_width = min(max(5, *(len(label) for label in labels)), 28)
    status_width = max(6, *(len(row.status) for row in rows))
    output_width = max(20, width - (8 + 2 + status_width + 2 + label_width + 2))
    line = f"{{:<8}}  {{:<{status_width}}}  {{:<{label_width}}}  {{}}"
    _say(line.format("ID", "STATUS", "LABEL", "OUTPUT").rstrip())
    for row, label in zip(rows, labels, strict=True):
        output = _truncate(_one_line(row.output or ""), output_width)
        _say(line.format(row.id, row.status, _truncate(label, label_width), output).rstrip())
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    target = sys.stdin.read() if args.target == "-" else args.target
    if not target.strip():
        raise _Exit(EXIT_USAGE, "pgdurable explain: error: nothing to explain")
    text = _client(args).explain(target)
    if _INSTANCE_ID.match(target.strip()) and text.startswith("Instance '") and text.endswith("not found"):
        raise _not_found(target.strip())
    if text.startswith(_EXPLAIN_ERRORS):
        raise _Exit(EXIT_ERROR, _one_line(text))
    _say("\n".join(line.rstrip() for line in text.splitlines()))
    return EXIT_OK


def _db(args: argparse.Namespace) -> int:
    from pgdurable import embedded

    if args.db_command == "stop":
        home = embedded.default_home()
        _say(f"stopped: {home}" if embedded.stop(home) else f"not running: {home}")
    elif args.db_command == "status":
        _say(embedded.status())
    else:
        with _embedded_default() as server:
            app_dsn = server.dsn("postgres", embedded.APP_ROLE)
            if args.db_command == "start":
                _say(embedded.status(server.home))
                _say(f"application DSN: {app_dsn}")
            else:
                _say(server.dsn("postgres", embedded.OWNER_ROLE) if args.role == "owner" else app_dsn)
    return EXIT_OK


@contextlib.contextmanager
def _embedded_default() -> Iterator[EmbeddedServer]:
    """The embedded default server, started (kept running after this process) with df installed, as
    `embedded.app_dsn()` does; this process lets go of it on the way out."""
    from pgdurable import embedded, migrate

    with embedded.start(keep_running=True) as server:
        migrate.install_embedded(server)
        yield server


# --- the demo ------------------------------------------------------------------------------------------

_DEMO_LABEL: Final = "pgdurable demo"
_DEMO_SLOW_SECONDS: Final = 2.0  # how long build_index sleeps; the crash lands inside it
_DEMO_LEASE_SECONDS: Final = 2.0  # the crashed worker's claims expire this long after its last renewal

# Each step calls a function that records one row in `effects` inside the step's transaction, so the rows
# count the runs that committed. docs and terms have primary keys: a second run of fetch_docs or
# build_index would fail on a duplicate key.
_DEMO_SCHEMA: Final = r"""
DROP SCHEMA IF EXISTS pgdurable_demo CASCADE;
CREATE SCHEMA pgdurable_demo;
CREATE TABLE pgdurable_demo.effects (step text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE pgdurable_demo.docs (id integer PRIMARY KEY, body text NOT NULL);
CREATE TABLE pgdurable_demo.terms (term text PRIMARY KEY, n integer NOT NULL);

CREATE FUNCTION pgdurable_demo.fetch_docs() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgdurable_demo.effects (step) VALUES ('fetch_docs');
    INSERT INTO pgdurable_demo.docs (id, body) VALUES
        (1, 'Durable workflows survive crashes and restarts'),
        (2, 'Every step commits with its checkpoint in PostgreSQL'),
        (3, 'A crashed worker loses nothing: another worker resumes'),
        (4, 'SQL steps run exactly once, even across crashes'),
        (5, 'Workflows are graphs of steps written in SQL or Python');
    RETURN (SELECT count(*) FROM pgdurable_demo.docs);
END $$;

CREATE FUNCTION pgdurable_demo.count_words() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgdurable_demo.effects (step) VALUES ('count_words');
    RETURN (SELECT count(*) FROM pgdurable_demo.docs d, regexp_split_to_table(d.body, '\s+') w);
END $$;

CREATE FUNCTION pgdurable_demo.count_chars() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgdurable_demo.effects (step) VALUES ('count_chars');
    RETURN (SELECT sum(length(d.body)) FROM pgdurable_demo.docs d);
END $$;

CREATE FUNCTION pgdurable_demo.build_index(p_seconds float8) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgdurable_demo.effects (step) VALUES ('build_index');
    INSERT INTO pgdurable_demo.terms (term, n)
    SELECT lower(w), count(*) FROM pgdurable_demo.docs d, regexp_split_to_table(d.body, '\W+') w
     WHERE length(w) > 4 GROUP BY 1;
    PERFORM pg_sleep(p_seconds);  -- a slow step: the demo's crash lands here
    RETURN (SELECT count(*) FROM pgdurable_demo.terms);
END $$;

CREATE FUNCTION pgdurable_demo.report(p_docs bigint, p_words bigint, p_chars bigint) RETURNS jsonb
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgdurable_demo.effects (step) VALUES ('report');
    RETURN jsonb_build_object(
        'documents', p_docs, 'words', p_words, 'characters', p_chars,
        'top_terms', (SELECT jsonb_agg(t.term ORDER BY t.n DESC, t.term)
                        FROM (SELECT * FROM pgdurable_demo.terms ORDER BY n DESC, term LIMIT 3) t));
END $$;

GRANT USAGE ON SCHEMA pgdurable_demo TO {app};
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA pgdurable_demo TO {app};
"""

_DEMO_STEPS: Final = ("fetch_docs", "count_words", "count_chars", "build_index", "report")

# A worker backend inside build_index's pg_sleep (it has written to `terms`), with the step's transaction id.
_SLEEPING_WORKER: Final = """
SELECT a.pid, a.backend_xid::text FROM pg_stat_activity a
  JOIN pg_locks l ON l.pid = a.pid AND l.relation = 'pgdurable_demo.terms'::regclass AND l.mode = 'RowExclusiveLock'
 WHERE a.datname = current_database() AND a.application_name LIKE 'pgdurable-worker%'
   AND a.state = 'active' AND a.wait_event = 'PgSleep' AND a.backend_xid IS NOT NULL
"""


# Workers connected to the demo's database: they could take the steps the demo's own worker must run.
_OTHER_WORKERS: Final = """
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pgdurable-worker%'
"""


def _demo_graph() -> Any:
    from pgdurable import Step, join

    return (
        (Step("SELECT pgdurable_demo.fetch_docs()") | "docs")
        >> join(
            Step("SELECT pgdurable_demo.count_words()") | "words",
            Step("SELECT pgdurable_demo.count_chars()") | "chars",
        )
        >> Step(f"SELECT pgdurable_demo.build_index({_DEMO_SLOW_SECONDS:g})")
        >> Step("SELECT pgdurable_demo.report($docs,$words,$chars)")  # short enough for explain
    )


@contextlib.contextmanager
def _worker_process(owner_dsn: str) -> Iterator[subprocess.Popen[bytes]]:
    """`pgdurable worker` in a child process, running this very pgdurable; killed on the way out."""
    import pgdurable

    env = dict(os.environ)
    source = str(Path(pgdurable.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pgdurable", "worker", "--dsn", owner_dsn, "--concurrency", "2"]
    command += ["--lease", f"{_DEMO_LEASE_SECONDS:g}", "--poll", "0.1", "--log-level", "WARNING"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield process
        except BaseException:
            if process.poll() is not None and process.returncode != -getattr(signal, "SIGKILL", 9):
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
                print("\n".join(f"  worker: {line}" for line in tail), file=sys.stderr)
            raise
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def _demo(args: argparse.Namespace) -> int:
    if args.dsn:
        raise _Exit(EXIT_USAGE, "pgdurable demo: error: the demo runs on the embedded server; it takes no --dsn")
    from psycopg import sql

    from pgdurable import Client, Worker, WorkerConfig, embedded

    _say("pgdurable demo: a durable workflow survives a worker crash")
    _say()
    _say(f"Starting the embedded PostgreSQL in {embedded.default_home()} ...", end=" ")
    with _embedded_default() as server:
        admin_dsn = server.dsn("postgres", "postgres")  # the embedded cluster's superuser
        owner_dsn = server.dsn("postgres", embedded.OWNER_ROLE)
        app_dsn = server.dsn("postgres", embedded.APP_ROLE)
    client = Client(app_dsn)

    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        others = _one(admin, _OTHER_WORKERS)
        if others:
            raise _Exit(
                EXIT_ERROR,
                "a pgdurable worker is already connected to the embedded server; stop it and run the demo again "
                "(the demo crashes a worker of its own on purpose)",
            )
        with contextlib.suppress(psycopg.Error):  # leftovers of an interrupted demo must not run meanwhile
            client.cancel_all(label=_DEMO_LABEL)
        admin.execute(sql.SQL(_DEMO_SCHEMA).format(app=sql.Identifier(embedded.APP_ROLE)))
        _say("ready.")
        _say()

        graph = _demo_graph()
        _say("1. The workflow, as `pgdurable explain` draws it:")
        _say()
        _say(_indent(client.explain(graph)))
        _say()

        instance = client.start(graph, label=_DEMO_LABEL)
        _say(f"2. Instance {instance.id} runs on a worker process, which is killed inside build_index:")
        with _worker_process(owner_dsn) as process:
            _say(f"   worker process {process.pid} started")
            killed = _run_until_crash(admin, process)
        _say(f"   ✗ SIGKILL: worker {process.pid} died inside build_index, mid-transaction")
        if killed is not None:
            outcome = _xact_status(admin, killed[1])
            _say(f"   PostgreSQL rolled that step's transaction back (xid {killed[1]}: {outcome})")
        _say(f"   instance {instance.id} is still {client.status(instance.id)}; its checkpoints:")
        _say()
        _say(_indent(client.explain(instance.id), keep=lambda line: not line.startswith(("Instance:", "Status:"))))
        _say()

        _say("3. A new worker resumes from the last checkpoint (once the dead worker's lease expires):")
        with Worker(owner_dsn, config=WorkerConfig(concurrency=2, poll_seconds=0.2)):
            status = instance.wait(timeout=60, progress=True)
        _say(f"   instance {instance.id}: {status}")
        if status != "completed":
            raise _Exit(EXIT_FAILED, f"instance {instance.id} {status}: {client.output(instance.id)}")
        _say()

        _say("4. The result:")
        for key, value in _report(client.result(instance.id)).items():
            _say(f"     {key:<12} {json.dumps(value, ensure_ascii=False)}")
        _say()
        ran: dict[str, int] = dict(
            admin.execute("SELECT step, count(*) FROM pgdurable_demo.effects GROUP BY step").fetchall()
        )
        _say("   How many times each step's work committed (rows in pgdurable_demo.effects):")
        for step in _DEMO_STEPS:
            note = "  (interrupted by the crash, then run again)" if step == "build_index" else ""
            _say(f"     {step:<12} {ran.get(step, 0)}{note}")
        twice = [step for step in _DEMO_STEPS if ran.get(step, 0) != 1]
        if twice:
            raise _Exit(EXIT_ERROR, "steps ran more or less than once: " + ", ".join(twice))
        _say("   No step ran twice: every step's work committed exactly once, across the crash.")
        with contextlib.suppress(psycopg.Error):  # the killed worker could not unregister itself
            admin.execute("DELETE FROM df.workers WHERE pid = %s", (process.pid,))
    _say()
    _say(f"Explore: pgdurable list · pgdurable explain {instance.id} · pgdurable result {instance.id}")
    _say("The embedded server keeps running; `pgdurable db stop` stops it.")
    return EXIT_OK


def _run_until_crash(admin: psycopg.Connection[Any], process: subprocess.Popen[bytes]) -> tuple[int, int] | None:
    """Print each step as its work commits; SIGKILL the worker once it is inside build_index's sleep.
    Returns the killed step's (backend pid, xid), once that backend has gone."""
    shown = 0
    deadline = time.monotonic() + 30
    while True:
        done = admin.execute("SELECT step FROM pgdurable_demo.effects ORDER BY at").fetchall()
        for (step,) in done[shown:]:
            _say(f"   ✓ {step}")
        shown = len(done)
        sleeping = admin.execute(_SLEEPING_WORKER).fetchone()
        if sleeping is not None:
            break
        if process.poll() is not None:
            raise _Exit(EXIT_ERROR, f"the demo's worker process exited on its own (exit code {process.returncode})")
        if time.monotonic() > deadline:
            raise _Exit(EXIT_TIMEOUT, "the demo's worker did not reach build_index within 30 s")
        time.sleep(0.05)
    _say("   … build_index is running (it takes a while)")
    time.sleep(0.5)
    process.kill()
    process.wait(timeout=10)
    backend, xid = int(sleeping[0]), int(sleeping[1])
    # The backend notices its client is gone when the step's sleep ends; then the transaction is rolled back.
    deadline = time.monotonic() + _DEMO_SLOW_SECONDS + 10
    while _one(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return backend, xid


def _xact_status(admin: psycopg.Connection[Any], xid: int) -> str:
    """pg_xact_status of a 32-bit xid: the 64-bit one within 2^31 of the current snapshot's xmax."""
    xmax = int(_one(admin, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
    full = (xmax & ~0xFFFFFFFF) | xid
    if full > xmax + (1 << 31):
        full -= 1 << 32
    elif full < xmax - (1 << 31):
        full += 1 << 32
    return str(_one(admin, "SELECT pg_xact_status(%s::text::xid8)", (str(full),)))


def _report(result: Any) -> dict[str, Any]:
    """The report step's value out of its result envelope (``{"rows": [{"report": {...}}], ...}``)."""
    try:
        report = result["rows"][0]["report"]
    except (KeyError, IndexError, TypeError):
        report = None
    order = ("documents", "words", "characters", "top_terms")
    if not isinstance(report, dict):
        return {"result": result}
    return {key: report[key] for key in sorted(report, key=lambda k: order.index(k) if k in order else len(order))}


def _one(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _indent(text: str, keep: Callable[[str], bool] = lambda _: True, prefix: str = "   ") -> str:
    lines = [line.rstrip() for line in text.splitlines() if keep(line)]
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(f"{prefix}{line}" if line else "" for line in lines)


# --- main ----------------------------------------------------------------------------------------------

_HANDLERS: Final[dict[str, Callable[[argparse.Namespace], int]]] = {
    "demo": _demo,
    "init": _init,
    "uninstall": _uninstall,
    "psql": _psql,
    "worker": _worker,
    "start": _start,
    "status": _status,
    "result": _result,
    "signal": _signal,
    "cancel": _cancel,
    "list": _list,
    "explain": _explain,
    "db": _db,
}


def _utf8_safe(stream: TextIO) -> None:
    """Tree drawings and marks must not crash a terminal that cannot encode them."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(Exception):
            reconfigure(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module's docstring)."""
    from pgdurable.client import InstanceNotFound, WaitTimeout

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    _utf8_safe(sys.stdout)
    _utf8_safe(sys.stderr)
    command = "pgdurable"
    try:
        args = _parser().parse_args(argv)
        debug = bool(args.debug)
        command = f"pgdurable {args.command}"
        return _HANDLERS[args.command](args)
    except _Exit as stop:
        if stop.message:
            prefix = "" if stop.message.startswith("pgdurable") else f"{command}: "
            if prefix and stop.code in (EXIT_ERROR, EXIT_USAGE):
                prefix += "error: "
            print(f"{prefix}{stop.message}", file=sys.stderr, flush=True)
        return stop.code
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as error:
        if debug:
            traceback.print_exc()
        code = EXIT_ERROR
        if isinstance(error, InstanceNotFound):
            code = EXIT_NOT_FOUND
        elif isinstance(error, WaitTimeout):
            code = EXIT_TIMEOUT
        known = isinstance(error, (PgdurableError, psycopg.Error, OSError, ImportError, ValueError))
        text = str(error).strip().splitlines()[0].strip() if str(error).strip() else type(error).__name__
        if not known:
            text = f"unexpected {type(error).__name__}: {text}" + ("" if debug else " (--debug shows the traceback)")
        print(f"{command}: error: {text}", file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
