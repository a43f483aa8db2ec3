"""pg_durable's conformance cases that need a worker (`wait` is completed, failed, cancelled or running), ported.

Every case runs in one session, each statement autocommitted, against the session's conformance database
with pg_durable's defaults (loop floor 1 s, HTTP off) and an in-process worker (`conformance_worker`):

1. `setup_sql`, then `start_sql`; the id returned by its (last) `df.start` becomes ``:'instance_id'``;
2. the wait: poll ``df.status`` of every started instance until it has the case's status (failing at once,
   with the instance's output, if it ends in another one), or for `running` poll the side effect the notes
   name; `extra_steps` (signals, cancels, pauses) happen at the moments the case states, see `EXTRA_STEPS`;
3. every check, compared as JSON (`conftest.check`).

Where a case's expectation is one of the deliberate differences of design §4, the step says so and checks
pgdurable's behaviour. Cases whose setup creates roles run as the superuser with per-run role names, in the
xdist group ``roles``, and drop their roles afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from .conftest import (
    ConformanceDb,
    Connection,
    check,
    drop_roles,
    load_cases,
    per_run_names,
    rename,
    run_sql,
    same_json,
    short_id,
    split_statements,
    substitute,
)

pytestmark = pytest.mark.usefixtures("conformance_worker")

RUNTIME_WAITS = ("completed", "failed", "cancelled", "running")
TERMINAL = ("completed", "failed", "cancelled")
POLL_SECONDS = 0.05
WAIT_SECONDS = 60.0  # the longest case but time-003 (loop-014) needs ~6 s; pg_durable's test allows 90 s

# Cases whose setup creates roles (run as the superuser), with the names to make per-run: the roles, and in
# err-007 also its tables, so that the permission error names a table of this run.
ROLE_CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "err-007": (("iso_alice", "iso_bob"), ("iso_alice_data", "iso_bob_data")),
    "mon-009": (("vars_alice", "vars_bob"), ()),
}

# Every runtime case of the file (45 of its 54; the other 9, `none`/`error`, are in test_pg_durable_cases).
PORTED = """
    seq-001 seq-002 seq-004 bind-001 vars-002 vars-004 vars-005 bind-007 bind-008 bind-011 cond-013 cond-014
    type-002 type-003 cond-001 cond-002 loop-001 loop-002 loop-004 loop-005 loop-007 loop-008 loop-010 loop-011
    loop-013 loop-014 time-002 time-003 sig-002 sig-003 sig-005 join-001 join-003 join-004 race-001 cancel-001
    fail-001 txn-003 err-001 err-007 err-008 mon-002 mon-003 mon-006 mon-009
""".split()  # noqa: SIM905 (one line per id would be 45 lines)

ALL_CASES = [c for c in load_cases() if c["wait"] in RUNTIME_WAITS]


@dataclass
class Run:
    """One case in progress: its session, the started instances, and the case (with per-run names)."""

    case: dict[str, Any]
    conn: Connection
    ids: list[str] = field(default_factory=list)
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def instance_id(self) -> str:
        assert self.ids, "start_sql started no instance"
        return self.ids[-1]

    def sql(self, text: str) -> Any:
        """Run `text` (``:'instance_id'`` substituted) in the case's session; its value."""
        return run_sql(self.conn, substitute(text, self.ids[-1] if self.ids else None))

    def step(self, index: int) -> Any:
        """Run `extra_steps[index]` and assert its `expect`, if it has one."""
        extra = self.case["extra_steps"][index]
        value = self.sql(extra["sql"])
        if "expect" in extra:
            assert same_json(value, extra["expect"]), (extra, value)
        return value

    def start(self) -> None:
        """`start_sql`, collecting the id of every instance its `df.start` statements return."""
        for statement in split_statements(self.case["start_sql"]):
            cursor = self.conn.execute(statement.encode())
            if cursor.description is not None and "df.start" in statement:
                self.ids.extend(str(row[0]) for row in cursor.fetchall())

    def wait_status(self, status: str, timeout: float = WAIT_SECONDS, ids: list[str] | None = None) -> None:
        """Poll df.status of each instance until it is `status`; fail at once on another terminal status."""
        deadline = time.monotonic() + timeout
        for instance_id in ids if ids is not None else self.ids:
            while True:
                current = run_sql(self.conn, f"SELECT df.status('{instance_id}')")
                if current == status:
                    break
                if current in TERMINAL:
                    pytest.fail(f"{instance_id} ended {current}, not {status}: {self.describe(instance_id)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{instance_id} still {current} after {timeout} s: {self.describe(instance_id)}")
                time.sleep(POLL_SECONDS)

    def wait_until(self, condition: str, timeout: float = WAIT_SECONDS) -> None:
        """Poll `condition` (a query returning one boolean) until it is true."""
        deadline = time.monotonic() + timeout
        while self.sql(condition) is not True:
            if time.monotonic() > deadline:
                pytest.fail(f"{condition!r} still false after {timeout} s: {self.describe(self.instance_id)}")
            time.sleep(POLL_SECONDS)

    def describe(self, instance_id: str) -> str:
        row = self.conn.execute("SELECT status, output FROM df.instance_info(%s)", (instance_id,)).fetchone()
        nodes = self.conn.execute(
            "SELECT node_type, status, left(result::text, 300) FROM df.nodes WHERE instance_id = %s"
            " AND status = 'failed'",
            (instance_id,),
        ).fetchall()
        return f"status/output {row}; failed nodes {nodes}"


# --- extra steps and special waits, per case -------------------------------------------------------------


def _loop_001(run: Run) -> None:
    # "once count(*) ... >= 2 (poll every 0.5 s, give up after ~50 s)": cancel.
    run.wait_until("SELECT count(*) >= 2 FROM test_loop_log WHERE variant = 'op'", timeout=50)
    run.step(0)
    run.wait_status("cancelled")


def _cancel_001(run: Run) -> None:
    # "once _cancel_log has >= 1 row": cancel. pg_durable runs the cancel and the three checks in ONE
    # transaction (a DO block), so `cancelled` must be visible at once: do that, then the usual wait + checks.
    run.wait_until("SELECT count(*) >= 1 FROM _cancel_log")
    with run.conn.transaction():
        run.step(0)
        for item in run.case["checks"]:
            check(run.conn, substitute(item["sql"], run.instance_id), item["expect"])
    run.wait_status("cancelled")


def _cancel_after_checks(run: Run, index: int) -> None:
    def cancel() -> None:
        if run.ids:
            run.step(index)
            run.wait_status("cancelled")

    run.cleanup.append(cancel)


def _loop_007(run: Run) -> None:
    # `running`: the side effect is a row in test_running_status_log; the cancel is cleanup after the checks.
    _cancel_after_checks(run, 0)
    run.wait_until("SELECT count(*) >= 1 FROM test_running_status_log", timeout=20)


def _loop_008(run: Run) -> None:
    # As soon as the log has a row: status is running (step 0's expect); then the case's pause of 3 s
    # (step 1); the checks count iterations of a df.sleep(0) loop, which the 1 s loop floor rate-limits.
    _cancel_after_checks(run, 2)
    run.wait_until("SELECT count(*) >= 1 FROM test_zero_sleep_log", timeout=20)
    run.step(0)
    run.step(1)


def _sig_003(run: Run) -> None:
    # Deliberate difference (design §4, buffered signals): pg_durable's test re-sends every 0.1 s because
    # pg_durable drops a signal sent before the wait is subscribed. pgdurable buffers it, so ONE send right
    # after the start (probably before the wait exists) must be enough.
    assert run.step(0) == "OK"
    run.wait_status("completed")


def _sig_005(run: Run) -> None:
    # The case sends once, 2 s after the start, i.e. while the signal wait (12 s) is active and before the
    # sleep branch (8 s) ends. Any moment in that window is equivalent: send once as soon as the SIGNAL node
    # is running, instead of after a fixed 2 s.
    run.wait_until(
        "SELECT EXISTS (SELECT FROM df.instance_nodes(:'instance_id')"
        " WHERE node_type = 'SIGNAL' AND inferred_status = 'running')",
        timeout=6,
    )
    assert run.step(0) == "OK"
    run.wait_status("completed")


def _txn_003(run: Run) -> None:
    # start_sql rolled back the caller's transaction; the 'new' start committed on its own: its id is the
    # one df.start returned (the checks find it by label too).
    run.wait_status("completed")


def _time_003(run: Run) -> None:
    # Two `* * * * *` waits in sequence end at the second minute boundary after the start: 60-120 s.
    run.wait_status("completed", timeout=125)


EXTRA_STEPS: dict[str, Callable[[Run], None]] = {
    "loop-001": _loop_001,
    "cancel-001": _cancel_001,
    "loop-007": _loop_007,
    "loop-008": _loop_008,
    "sig-003": _sig_003,
    "sig-005": _sig_005,
    "txn-003": _txn_003,
    "time-003": _time_003,
}


# --- how each case deviates from the generic procedure ---------------------------------------------------


def _time_003_setup(statement: str) -> str | None:
    """time-003's setup waits until the second is in [5, 50] before starting, which only delays the end:
    the workflow ends at the second minute boundary after its start wherever in the minute it starts, and
    its checks (each insert within 5 s of a boundary, one minute apart) do not depend on the window. Skip
    that pause: the case then takes 120 s minus the start's second (60-120 s) instead of 70-130 s."""
    return None if statement.lstrip().startswith("DO $$") and "pg_sleep" in statement else statement


def _with_new_transaction_conninfo(run: Run, conformance_db: ConformanceDb) -> None:
    """txn-003 needs df.start(transaction_mode => 'new'), i.e. the dblink loopback conninfo of df.settings,
    which must log in as the df owner: here the superuser of the test server (whose local connections are
    trusted, or whose password the admin DSN carries). Set for this case only, then restored."""
    parts = conninfo_to_dict(conformance_db.admin_dsn)
    keep = {k: v for k, v in parts.items() if k in ("host", "port", "dbname", "user", "password")}
    conninfo = make_conninfo("", **keep)
    key = "new_transaction_conninfo"
    with psycopg.connect(conformance_db.admin_dsn, autocommit=True) as admin:
        row = admin.execute("SELECT value FROM df.settings WHERE key = %s", (key,)).fetchone()
        assert row is not None, "df.settings has no new_transaction_conninfo"
        admin.execute("UPDATE df.settings SET value = to_jsonb(%s::text) WHERE key = %s", (conninfo, key))

    def restore() -> None:
        with psycopg.connect(conformance_db.admin_dsn, autocommit=True) as admin:
            admin.execute("UPDATE df.settings SET value = %s WHERE key = %s", (Jsonb(row[0]), key))

    run.cleanup.append(restore)


def _with_http_privilege(run: Run, conformance_db: ConformanceDb) -> None:
    """err-008's last check calls df.http, which (as in pg_durable) only roles granted HTTP usage may
    execute; without it the call fails with PostgreSQL's "permission denied for function http" before df
    can say that HTTP is disabled. pg_durable's test runs as a role that may call it, so grant it (what
    ``df.grant_usage(role, include_http => true)`` grants) for this case only."""
    functions = "df.http(text, text, text, jsonb, integer), df.http_multipart(text, text, jsonb, jsonb, integer)"
    role = sql.Identifier(conformance_db.app_role)
    with psycopg.connect(conformance_db.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL(f"GRANT EXECUTE ON FUNCTION {functions} TO {{}}").format(role))

    def revoke() -> None:
        with psycopg.connect(conformance_db.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL(f"REVOKE EXECUTE ON FUNCTION {functions} FROM {{}}").format(role))

    run.cleanup.append(revoke)


def _case_param(case: dict[str, Any]) -> Any:
    short = short_id(case)
    marks: list[pytest.MarkDecorator] = []
    if short in ROLE_CASES:
        marks.append(pytest.mark.xdist_group("roles"))
    if short == "time-003":
        marks += [pytest.mark.slow, pytest.mark.timeout(180)]
    return pytest.param(case, id=str(case["id"]), marks=marks)


# time-003 first, so that pytest-xdist hands it out early and the rest runs beside it.
CASES = [_case_param(c) for c in sorted(ALL_CASES, key=lambda c: short_id(c) != "time-003")]


def test_every_runtime_case_is_ported() -> None:
    if not ALL_CASES:
        pytest.skip("conformance cases file not found")
    assert sorted(short_id(c) for c in ALL_CASES) == sorted(PORTED)
    assert {short_id(c) for c in ALL_CASES if c["extra_steps"] or c["wait"] == "running"} <= set(EXTRA_STEPS)


@pytest.fixture(params=CASES)
def run(request: pytest.FixtureRequest, conformance_db: ConformanceDb) -> Iterator[Run]:
    raw: dict[str, Any] = request.param
    short = short_id(raw)
    roles, tables = ROLE_CASES.get(short, ((), ()))
    role_names = per_run_names(roles, conformance_db.suffix)
    case = {**rename(raw, {**role_names, **per_run_names(tables, conformance_db.suffix)}), "short": short}
    dsn = conformance_db.admin_dsn if roles else conformance_db.app_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        this = Run(case, conn)
        try:
            yield this
        finally:
            for action in reversed(this.cleanup):
                action()
    if roles:
        drop_roles(conformance_db.admin_dsn, role_names.values())


def test_case(run: Run, conformance_db: ConformanceDb) -> None:
    case = run.case
    short = case["short"]
    if short == "txn-003":
        _with_new_transaction_conninfo(run, conformance_db)
    if short == "err-008":
        _with_http_privilege(run, conformance_db)
    for setup in case["setup_sql"]:
        statement = _time_003_setup(setup) if short == "time-003" else setup
        if statement is not None:
            run.sql(statement)
    run.start()
    if short in EXTRA_STEPS:
        EXTRA_STEPS[short](run)
    else:
        assert case["wait"] in TERMINAL, case["id"]
        run.wait_status(case["wait"])
    for item in case["checks"]:
        check(run.conn, substitute(item["sql"], run.instance_id), item["expect"])
    if short == "err-007":
        # The failure is the submitter's missing privilege, not anything else.
        run.conn.execute("RESET SESSION AUTHORIZATION")
        message = run.sql(
            "SELECT result #>> '{}' FROM df.nodes"
            " WHERE instance_id = :'instance_id' AND node_type = 'SQL' AND status = 'failed'"
        )
        table = f"iso_bob_data_{conformance_db.suffix}"
        assert f"permission denied for table {table}" in str(message), message


# --- buffered signals (deliberate difference, design §4) -------------------------------------------------


@pytest.mark.parametrize("moment", ["in the start's transaction", "while an earlier step runs"])
def test_a_signal_sent_before_the_wait_exists_is_delivered(conformance_db: ConformanceDb, moment: str) -> None:
    """pg_durable drops a signal that arrives before its wait is subscribed; pgdurable buffers it (design §4)
    and the wait consumes it when it begins, instead of timing out."""
    with psycopg.connect(conformance_db.app_dsn, autocommit=True) as conn:
        if moment == "in the start's transaction":
            with conn.transaction():  # not even committed: no worker can have seen the instance
                instance_id = run_sql(
                    conn, "SELECT df.start(df.wait_for_signal('early', 30), 'buffered-signal-same-transaction')"
                )
                assert run_sql(conn, f"SELECT df.signal('{instance_id}', 'early', '{{\"n\": 1}}')") == "OK"
        else:
            instance_id = run_sql(
                conn, "SELECT df.start(df.sleep(1) ~> df.wait_for_signal('early', 30), 'buffered-signal-after-sleep')"
            )
            with conn.transaction():
                waiting = run_sql(
                    conn,
                    f"SELECT status FROM df.nodes WHERE instance_id = '{instance_id}' AND node_type = 'SIGNAL'",
                )
                assert waiting == "pending", "the wait must not exist yet when the signal is sent"
                assert run_sql(conn, f"SELECT df.signal('{instance_id}', 'early', '{{\"n\": 1}}')") == "OK"
        run = Run({"extra_steps": []}, conn, [instance_id])
        run.wait_status("completed", timeout=30)
        result = run_sql(conn, f"SELECT df.result('{instance_id}')::jsonb")
        assert result == {"signal_name": "early", "timed_out": False, "data": {"n": 1}}
