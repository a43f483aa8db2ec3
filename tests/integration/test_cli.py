"""The `pgdurable` command line on a real PostgreSQL: every command and every documented exit code.

Client commands run in-process (`cli.main([...])`, output captured) as the module's application role, with
the module's in-process worker running their instances; `worker` and `demo` run as subprocesses, `db`
against a temporary ``PGDURABLE_HOME``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgdurable
from pgdurable import Client, Worker, cli, embedded
from pgdurable.testing import MakeDatabase, TestServer

REPO = Path(__file__).resolve().parents[2]

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """`run(*argv, stdin=None)`: `cli.main(argv)` in-process; its exit code, stdout and stderr."""

    def call(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        if stdin is None:
            code = cli.main(list(argv))
        else:
            saved = sys.stdin
            sys.stdin = io.StringIO(stdin)
            try:
                code = cli.main(list(argv))
            finally:
                sys.stdin = saved
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture
def app(df_db: Any, worker: Worker) -> str:
    """The application role's DSN, with the module's worker running."""
    return str(df_db.app_dsn)


def one_error_line(err: str) -> str:
    """stderr of a failed command: exactly one line, and no traceback."""
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


def started(out: str) -> str:
    instance_id = out.strip()
    assert len(instance_id) == 8, out
    return instance_id


def wait_status(client: Client, instance_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.status(instance_id) != status:
        assert time.monotonic() < deadline, f"{instance_id} is {client.status(instance_id)}, expected {status}"
        time.sleep(0.05)


def waiting_for_signal(run: Run, app: str, label: str) -> str:
    """An instance that waits (up to an hour) for the signal 'go', once it is waiting."""
    code, out, _ = run("start", "--dsn", app, "--label", label, "'SELECT 1' ~> df.wait_for_signal('go', 3600)")
    assert code == 0
    instance_id = started(out)
    wait_status(Client(app), instance_id, "running")
    return instance_id


# -- start, status, result ----------------------------------------------------------------------------------


def test_start_prints_the_id_then_status_and_result(run: Run, app: str) -> None:
    code, out, err = run(
        "start", "--dsn", app, "--label", "cli-start", "'SELECT 20 AS a' |=> 'a' ~> 'SELECT $a + 1 AS b'"
    )
    assert (code, err) == (0, "")
    instance_id = started(out)
    Client(app).wait(instance_id, timeout=30)
    assert run("status", "--dsn", app, instance_id) == (0, "completed\n", "")
    code, out, _ = run("result", "--dsn", app, instance_id)
    assert code == 0
    assert json.loads(out) == {"rows": [{"b": 21}], "row_count": 1}
    assert out.startswith("{\n  ")  # indented


def test_start_wait_prints_the_result(run: Run, app: str) -> None:
    code, out, err = run("start", "--dsn", app, "SELECT 41 + 1 AS answer", "--wait", "30")
    assert code == 0
    assert json.loads(out) == {"rows": [{"answer": 42}], "row_count": 1}
    assert err.startswith("started ")
    # `--wait` just before the workflow: argparse hands the text to --wait, which gives it back
    code, out, _ = run("start", "--dsn", app, "--wait", "SELECT 'x' AS y")
    assert code == 0
    assert json.loads(out)["rows"] == [{"y": "x"}]


def test_start_from_a_file_and_from_stdin(run: Run, app: str, tmp_path: Path) -> None:
    path = tmp_path / "flow.sql"
    path.write_text("'SELECT 1 AS one' ~> 'SELECT 2 AS two'\n")
    code, out, _ = run("start", "--dsn", app, "--file", str(path), "--wait", "30")
    assert code == 0
    assert json.loads(out)["rows"] == [{"two": 2}]
    code, out, _ = run("start", "--dsn", app, "-", "--wait", "30", stdin="'SELECT 3 AS three' ~> 'SELECT 4 AS four'")
    assert code == 0
    assert json.loads(out)["rows"] == [{"four": 4}]


def test_start_takes_the_dsn_from_the_environment(run: Run, app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGDURABLE_DSN", app)
    code, out, _ = run("start", "SELECT 7 AS seven", "--wait", "30")
    assert code == 0
    assert json.loads(out)["rows"] == [{"seven": 7}]
    # --dsn wins over the environment
    monkeypatch.setenv("PGDURABLE_DSN", "host=/nonexistent-pgdurable dbname=x connect_timeout=2")
    code, out, _ = run("--dsn", app, "start", "SELECT 8 AS eight", "--wait", "30")
    assert code == 0
    assert json.loads(out)["rows"] == [{"eight": 8}]


def test_a_failing_instance_exits_3(run: Run, app: str) -> None:
    code, out, err = run("start", "--dsn", app, "SELECT 1/0", "--wait", "30")
    assert code == cli.EXIT_FAILED == 3
    assert out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("pgdurable start: instance ") and "failed" in line and "division by zero" in line
    instance_id = line.split()[3]
    code, out, err = run("result", "--dsn", app, instance_id)
    assert (code, out) == (3, "")
    assert "division by zero" in one_error_line(err)
    assert run("status", "--dsn", app, instance_id)[:2] == (0, "failed\n")


def test_wait_timeout_exits_4(run: Run, app: str) -> None:
    code, out, err = run("start", "--dsn", app, "--wait", "0.5", "df.wait_for_signal('never', 3600)")
    assert code == cli.EXIT_TIMEOUT == 4
    assert out == ""
    line = err.strip().splitlines()[-1]
    assert " is still " in line and "after 0.5 s" in line
    instance_id = line.split()[3]
    # no result yet: an error (1), not a failure
    code, _, err = run("result", "--dsn", app, instance_id)
    assert code == 1
    assert "has no result yet" in one_error_line(err)
    assert run("cancel", "--dsn", app, instance_id)[0] == 0


def test_unknown_instances_exit_5(run: Run, app: str) -> None:
    for argv in (
        ("status", "deadbeef"),
        ("result", "deadbeef"),
        ("signal", "deadbeef", "go"),
        ("cancel", "deadbeef"),
        ("explain", "deadbeef"),
        ("status", "not-an-id"),
    ):
        code, out, err = run(argv[0], "--dsn", app, *argv[1:])
        assert (code, out) == (cli.EXIT_NOT_FOUND, ""), argv
        assert one_error_line(err).startswith(f"pgdurable {argv[0]}: instance "), argv
        assert "not found" in err


def test_another_roles_instance_is_not_found(
    run: Run, app: str, df_db: Any, df_roles: Any, pg_server: TestServer
) -> None:
    other = df_roles.create("pgd_other")
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT df.grant_usage(%s)", (other,))
    other_dsn = pg_server.dsn(df_db.name, user=other)
    code, out, _ = run("start", "--dsn", other_dsn, "df.wait_for_signal('go', 3600)")
    assert code == 0
    theirs = started(out)
    for argv in (("status",), ("result",), ("explain",), ("signal", "go"), ("cancel",)):
        code, _, err = run(argv[0], "--dsn", app, theirs, *argv[1:])
        assert code == 5, (argv, err)
    assert run("status", "--dsn", other_dsn, theirs)[0] == 0
    assert run("cancel", "--dsn", other_dsn, theirs)[0] == 0


# -- signal, cancel --------------------------------------------------------------------------------------------


def test_signal(run: Run, app: str) -> None:
    instance_id = waiting_for_signal(run, app, "cli-signal")
    code, out, err = run("signal", "--dsn", app, instance_id, "go", '{"approved": true}')
    assert (code, err) == (0, "")
    assert out == f"signal 'go' sent to {instance_id}\n"
    Client(app).wait(instance_id, timeout=30)
    code, out, _ = run("result", "--dsn", app, instance_id)
    assert code == 0
    assert json.loads(out)["data"] == {"approved": True}
    # a finished instance takes no signal
    code, out, err = run("signal", "--dsn", app, instance_id, "go")
    assert (code, out) == (1, "")
    assert "is completed" in one_error_line(err)


def test_cancel(run: Run, app: str) -> None:
    instance_id = waiting_for_signal(run, app, "cli-cancel")
    code, out, err = run("cancel", "--dsn", app, instance_id, "--reason", "changed my mind")
    assert (code, err) == (0, "")
    assert instance_id in out and "changed my mind" in out
    client = Client(app)
    wait_status(client, instance_id, "cancelled")
    code, out, err = run("result", "--dsn", app, instance_id)
    assert (code, out) == (3, "")
    assert "cancelled" in one_error_line(err) and "changed my mind" in err
    # again: already cancelled, fine
    assert run("cancel", "--dsn", app, instance_id) == (0, f"instance {instance_id} is already cancelled\n", "")
    # a completed instance cannot be cancelled
    code, out, _ = run("start", "--dsn", app, "SELECT 1")
    done = started(out)
    client.wait(done, timeout=30)
    code, out, err = run("cancel", "--dsn", app, done)
    assert (code, out) == (1, "")
    assert "already completed" in one_error_line(err)


# -- list, explain ---------------------------------------------------------------------------------------------


def test_list(run: Run, app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    ids = []
    for n in range(3):
        code, out, _ = run("start", "--dsn", app, "--label", "cli-list", f"SELECT {n} AS n, repeat('x', 400) AS pad")
        ids.append(started(out))
    for instance_id in ids:
        Client(app).wait(instance_id, timeout=30)
    code, out, err = run("list", "--dsn", app, "--label", "cli-list")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "STATUS", "LABEL", "OUTPUT"]
    assert [row.split()[0] for row in rows] == ids[::-1]  # newest first
    assert all(row.split()[1:3] == ["completed", "cli-list"] for row in rows)
    assert all(row.endswith("…") and len(row) <= 100 for row in rows)  # the long output is truncated
    code, out, _ = run("list", "--dsn", app, "--label", "cli-list", "--limit", "1")
    assert len(out.splitlines()) == 2 and ids[-1] in out
    code, out, _ = run("list", "--dsn", app, "--label", "cli-list", "--status", "failed")
    assert (code, out) == (0, "no instances\n")
    code, out, _ = run("list", "--dsn", app, "--status", "completed", "--limit", "50")
    assert code == 0 and all(row.split()[1] == "completed" for row in out.splitlines()[1:])


def test_explain_an_instance_live_and_text_as_a_dry_run(run: Run, app: str) -> None:
    code, out, _ = run("start", "--dsn", app, "--label", "cli-explain", "'SELECT 1' ~> 'SELECT 2'")
    instance_id = started(out)
    Client(app).wait(instance_id, timeout=30)
    code, out, err = run("explain", "--dsn", app, instance_id)
    assert (code, err) == (0, "")
    assert f"Instance: {instance_id} (cli-explain)" in out
    assert "SQL: SELECT 2 ✓" in out
    dry_run = "'SELECT 1' |=> 'a' ~> ('SELECT $a' & 'SELECT 2')"
    code, out, _ = run("explain", "--dsn", app, dry_run)
    assert code == 0
    assert out.splitlines()[0] == "SQL: SELECT 1 |=> 'a'" and "JOIN (2)" in out
    assert all(line == line.rstrip() for line in out.splitlines())
    assert run("explain", "--dsn", app, "-", stdin=dry_run) == (0, out, "")
    code, out, err = run("explain", "--dsn", app, "'SELECT 1' ~> ")
    assert (code, out) == (1, "")
    assert one_error_line(err).startswith("pgdurable explain: error: Failed to evaluate expression")
    code, _, err = run("explain", "--dsn", app, "hello")
    assert code == 1 and "Cannot explain input" in one_error_line(err)


# -- usage, errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["status"],
        ["start"],
        ["start", "--file", "x.sql", "SELECT 1"],
        ["start", "--wait", "-3", "SELECT 1"],
        ["start", "SELECT 1", "--wait", "soon"],
        ["list", "--status", "bogus"],
        ["list", "--limit", "0"],
        ["signal", "deadbeef"],
        ["db"],
        ["db", "dsn", "--role", "root"],
        ["demo", "--dsn", "x"],
        ["--dsn", "x", "demo"],
    ],
)
def test_usage_errors_exit_2(run: Run, argv: list[str]) -> None:
    code, out, err = run(*argv)
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert one_error_line(err).startswith("pgdurable")
    assert "error: " in err


def test_help_exits_0(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0
    for command in ("demo", "init", "worker", "start", "status", "result", "signal", "cancel", "list", "explain"):
        assert command in out
    assert "Exit codes" in out
    code, out, _ = run("db", "--help")
    assert code == 0 and "dsn" in out
    code, out, _ = run("--version")
    assert (code, out) == (0, f"pgdurable {pgdurable.__version__}\n")


def test_errors_are_one_line_unless_debug(run: Run) -> None:
    dead = "host=/nonexistent-pgdurable dbname=x connect_timeout=2"
    code, out, err = run("status", "--dsn", dead, "deadbeef")
    assert (code, out) == (cli.EXIT_ERROR, "")
    assert one_error_line(err).startswith("pgdurable status: error: ")
    for argv in (("--debug", "status", "--dsn", dead, "deadbeef"), ("status", "--dsn", dead, "deadbeef", "--debug")):
        code, _, err = run(*argv)
        assert code == 1
        assert "Traceback" in err and err.strip().splitlines()[-1].startswith("pgdurable status: error: ")


def test_a_missing_file_is_an_error(run: Run, app: str, tmp_path: Path) -> None:
    code, _, err = run("start", "--dsn", app, "--file", str(tmp_path / "missing.sql"))
    assert code == 1
    assert "missing.sql" in one_error_line(err)


# -- init, uninstall, worker --------------------------------------------------------------------------------


def test_init_and_uninstall(run: Run, pg_server: TestServer, make_database: MakeDatabase) -> None:
    dsn = pg_server.dsn(make_database())
    code, out, _ = run("init", "--dsn", dsn)
    assert code == 0 and "installed to version" in out
    code, out, _ = run("--dsn", dsn, "init")
    assert code == 0 and "up to date" in out
    code, out, _ = run("uninstall", "--dsn", dsn)
    assert code == 0 and "removed" in out


def test_worker_runs_until_sigterm(df_db: Any, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pgdurable", "worker", "--dsn", df_db.admin_dsn, "--poll", "0.05"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            query = "SELECT count(*) FROM df.workers WHERE pid = %s"
            while conn.execute(query, (process.pid,)).fetchone() != (1,):
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()
            assert conn.execute(query, (process.pid,)).fetchone() == (0,)  # it unregistered
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- the embedded server and the demo -------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary PGDURABLE_HOME (and no PGDURABLE_DSN); its server is stopped at the end."""
    monkeypatch.setenv(embedded.HOME_ENV, str(tmp_path))
    monkeypatch.delenv("PGDURABLE_DSN", raising=False)
    try:
        yield tmp_path
    finally:
        embedded.stop(tmp_path)


@pytest.mark.timeout(300)
def test_db_start_status_dsn_stop(run: Run, home: Path) -> None:
    code, out, _ = run("db", "status")
    assert code == 0 and out.startswith("not initialised: ")
    code, out, _ = run("db", "stop")
    assert (code, out) == (0, f"not running: {home}\n")

    code, out, _ = run("db", "start")
    assert code == 0 and out.startswith("running: ") and "keeps running until `pgdurable db stop`" in out
    assert f"application DSN: {embedded.app_dsn(home)}" in out
    assert embedded.is_running(home)
    code, out, _ = run("db", "status")
    assert code == 0 and out.startswith("running: ") and str(home) in out

    code, app_dsn, _ = run("db", "dsn")
    assert code == 0
    code, owner_dsn, _ = run("db", "dsn", "--role", "owner")
    assert code == 0
    for dsn, role in ((app_dsn, "pgdurable_app"), (owner_dsn, "pgdurable")):
        with psycopg.connect(dsn.strip(), autocommit=True) as conn:
            assert conn.execute("SELECT current_user, to_regnamespace('df') IS NOT NULL").fetchone() == (role, True)

    # client commands default to the embedded server's application role
    code, out, _ = run("list")
    assert (code, out) == (0, "no instances\n")
    code, out, _ = run("start", "SELECT 1")
    assert code == 0
    assert Client(app_dsn.strip()).status(started(out)) == "pending"  # no worker here

    code, out, _ = run("db", "stop")
    assert (code, out) == (0, f"stopped: {home}\n")
    assert not embedded.is_running(home)
    code, out, _ = run("db", "status")
    assert code == 0 and out.startswith("stopped: ")


@pytest.mark.timeout(300)
def test_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGDURABLE_")}
    env[embedded.HOME_ENV] = str(tmp_path)
    try:
        started_at = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pgdurable", "demo"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=240,
        )
        elapsed = time.monotonic() - started_at
    finally:
        embedded.stop(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "SIGKILL" in out and "aborted" in out
    assert "No step ran twice" in out
    for step in ("fetch_docs", "count_words", "count_chars", "build_index", "report"):
        assert any(line.split()[:2] == [step, "1"] for line in out.splitlines()), step
    assert "node" in done.stderr  # the progress bar
    assert elapsed < 120, elapsed
