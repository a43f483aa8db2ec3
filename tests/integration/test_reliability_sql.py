"""Issue 5, the SQL side (0007_reliability): idempotent starts (racing ones too), the error accessor, deleting
instances, bulk cancel, retention and the new settings, in SQL and through the Python client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgdurable import Client, migrate
from pgdurable.testing import MakeDatabase, TestServer

Conn = psycopg.Connection[tuple[object, ...]]

# Two application roles (the fixture's and `other`) take part in several tests.
pytestmark = pytest.mark.xdist_group("roles")

WAIT = "SELECT df.start_with(df.wait_for_signal('never', 3600), %s::jsonb)"
"""A start whose instance stays running until cancelled (%s: the options)."""


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def failure(conn: Conn, query: str, params: Any = None) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query, params)
    return info.value


def message(conn: Conn, query: str, params: Any = None) -> str:
    return str(failure(conn, query, params).diag.message_primary)


def start(conn: Conn, graph: str = "SELECT 1", **options: Any) -> str:
    return str(one(conn, "SELECT df.start_with(%s, %s::jsonb)", (graph, json.dumps(options))))


def status_of(conn: Conn, instance: str) -> str:
    return str(one(conn, "SELECT df.status(%s)", (instance,)))


def client_role(conn: Conn) -> str:
    return str(one(conn, "SELECT current_user"))


def cancel_notes(listener: Conn, count: int, timeout: float = 10.0) -> set[str]:
    """The next `count` 'cancel <id>' payloads on df_work (workers notify there too)."""
    found: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        for note in listener.notifies(timeout=max(deadline - time.monotonic(), 0.01), stop_after=1):
            if note.payload.startswith("cancel "):
                found.add(note.payload)
    return found


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Role:
    name: str
    dsn: str


@pytest.fixture(scope="module")
def make_role(df_db: Any, df_roles: Any, pg_server: TestServer) -> Callable[[str], Role]:
    """A new application role prepared with df.grant_usage in this module's database."""

    def make(base: str) -> Role:
        name = df_roles.create(base)
        with psycopg.connect(df_db.admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT df.grant_usage(%s)", (name,))
        return Role(name, pg_server.dsn(df_db.name, user=name))

    return make


@dataclass(frozen=True)
class Quiet:
    admin_dsn: str
    app_dsn: str


@pytest.fixture(scope="module")
def quiet(pg_server: TestServer, make_database: MakeDatabase, df_template: str, df_app_role: str) -> Quiet:
    """A clone of the df template that no worker serves: instance states are set by hand there."""
    name = make_database(template=df_template)
    return Quiet(pg_server.dsn(name), pg_server.dsn(name, user=df_app_role))


@pytest.fixture(scope="module")
def other_role(make_role: Callable[[str], Role]) -> Role:
    return make_role("pgd_rel_other")


@pytest.fixture
def other(other_role: Role) -> Iterator[Conn]:
    with psycopg.connect(other_role.dsn, autocommit=True) as conn:
        yield conn


# -- settings ------------------------------------------------------------------------------------------------


def test_settings_have_defaults_and_descriptions(admin: Conn) -> None:
    rows = {
        str(key): value
        for key, value in admin.execute(
            "SELECT key, value FROM df.settings WHERE key IN ('retention_days', 'retention_batch', 'max_result_bytes')"
            " AND description <> ''"
        )
    }
    assert rows == {"retention_days": 30, "retention_batch": 1000, "max_result_bytes": 16777216}


# -- idempotent start ----------------------------------------------------------------------------------------


def test_same_key_returns_the_same_instance(app: Conn) -> None:
    first = start(app, idempotency_key="same", label="idem")
    assert start(app, idempotency_key="same", label="idem") == first
    # options other than the graph do not matter: the first start's row stays as it was
    assert start(app, idempotency_key="same", label="changed") == first
    assert app.execute("SELECT label, idempotency_key FROM df.instances WHERE idempotency_key = 'same'").fetchall() == [
        ("idem", "same")
    ]
    assert one(app, "SELECT count(*) FROM df.nodes WHERE instance_id = %s", (first,)) == 1
    assert start(app, idempotency_key="another") != first
    # no key (or a null one): every start is a new instance
    assert start(app) != start(app)
    assert start(app, idempotency_key=None) != start(app, idempotency_key=None)
    # the graph is compared in canonical form: the SQL DSL and plain text of the same graph are the same
    assert one(app, "SELECT df.start_with(df.sql('SELECT 1'), '{\"idempotency_key\": \"same\"}')") == first


def test_a_repeated_key_starts_nothing_and_notifies_nobody(app: Conn, df_db: Any) -> None:
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as listener:
        listener.execute("LISTEN df_work")
        first = start(app, idempotency_key="quiet")
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == [f"start {first}"]
        assert start(app, idempotency_key="quiet") == first
        assert [n.payload for n in listener.notifies(timeout=0.5)] == []
    assert one(app, "SELECT count(*) FROM df.instances WHERE idempotency_key = 'quiet'") == 1


def test_same_key_with_a_different_graph_names_both(app: Conn) -> None:
    first = start(app, "SELECT 1", idempotency_key="k")
    error = failure(app, "SELECT df.start_with('SELECT 2', '{\"idempotency_key\": \"k\"}')")
    assert error.sqlstate == "23505"
    assert error.diag.message_primary == (
        f"df.start_with: idempotency key 'k' already started instance {first} with a different graph"
    )
    assert error.diag.message_detail == (
        f'instance {first}: {{"node_type":"SQL","query":"SELECT 1"}}\n'
        'this start: {"node_type":"SQL","query":"SELECT 2"}'
    )
    assert f"delete instance {first}" in str(error.diag.message_hint)
    assert one(app, "SELECT count(*) FROM df.instances WHERE idempotency_key = 'k'") == 1


def test_keys_are_per_role(app: Conn, other: Conn) -> None:
    mine = start(app, idempotency_key="shared-name")
    theirs = start(other, "SELECT 2", idempotency_key="shared-name")
    assert mine != theirs
    assert start(other, "SELECT 2", idempotency_key="shared-name") == theirs
    assert one(other, "SELECT count(*) FROM df.instances WHERE id = %s", (mine,)) == 0


def test_key_validation(app: Conn) -> None:
    assert message(app, "SELECT df.start_with('SELECT 1', '{\"idempotency_key\": \"\"}')") == (
        "df.start_with: option 'idempotency_key' must be 1 to 255 characters, got 0"
    )
    long = json.dumps({"idempotency_key": "x" * 256})
    assert message(app, "SELECT df.start_with('SELECT 1', %s::jsonb)", (long,)).endswith("got 256")
    assert len(start(app, idempotency_key="é" * 255)) == 8
    assert message(app, "SELECT df.start_with('SELECT 1', '{\"idempotency_key\": 7}')") == (
        "df.start_with: option 'idempotency_key' must be a string or null"
    )
    assert message(
        app, 'SELECT df.start_with(\'SELECT 1\', \'{"idempotency_key": "n", "transaction_mode": "new"}\')'
    ) == ("df.start_with: the idempotency_key option cannot be combined with transaction_mode 'new'")
    assert "idempotency_key" in message(app, "SELECT df.start_with('SELECT 1', '{\"idempotncy_key\": \"n\"}')")
    # an invalid graph is refused before the key is looked at
    start(app, idempotency_key="valid-first")
    assert message(app, 'SELECT df.start_with(\'{"node_type":"X"}\', \'{"idempotency_key": "valid-first"}\')')
    # users cannot forge a key for another role either: RLS still checks submitted_by
    assert "row-level security" in message(
        app,
        "INSERT INTO df.instances (id, root_node, submitted_by, graph, idempotency_key)"
        " VALUES ('0badf00d', '0badf00d', 'pg_monitor'::regrole, '{}', 'forged')",
    )


def test_pg_durable_start_is_unchanged(app: Conn) -> None:
    instance = one(app, "SELECT df.start('SELECT 1', 'plain')")
    assert one(app, "SELECT idempotency_key FROM df.instances WHERE id = %s", (instance,)) is None
    assert one(app, "SELECT df.start('SELECT 1', 'plain')") != instance


def _start_in_thread(dsn: str, key: str, graph: str = "SELECT 1") -> tuple[threading.Thread, dict[str, Any]]:
    """Start `graph` with `key` on a new autocommit connection in a thread; the dict gets its pid, then its id
    (or the exception)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                out["pid"] = conn.info.backend_pid
                out["id"] = start(conn, graph, idempotency_key=key)
        except Exception as error:
            out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _blocked_on_a_transaction(admin: Conn, out: dict[str, Any]) -> bool:
    if "error" in out:
        raise out["error"]
    if "pid" not in out:
        return False
    row = admin.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (out["pid"],))
    return row.fetchone() == ("Lock", "transactionid")


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_racing_start_waits_for_the_winner(df_db: Any, admin: Conn, outcome: str) -> None:
    key = f"race-{outcome}"
    with psycopg.connect(df_db.app_dsn) as first:  # a transaction, left open
        winner = start(first, idempotency_key=key)
        thread, out = _start_in_thread(df_db.app_dsn, key)
        # the second start is observed waiting on the first one's transaction (the unique index)
        wait_until(lambda: _blocked_on_a_transaction(admin, out), what="the second start to wait")
        assert "id" not in out
        if outcome == "commit":
            first.commit()
        else:
            first.rollback()
        thread.join(20)
    assert "error" not in out, out.get("error")
    rows = admin.execute("SELECT id FROM df.instances WHERE idempotency_key = %s", (key,)).fetchall()
    if outcome == "commit":
        assert out["id"] == winner and rows == [(winner,)]
    else:  # the winner went away: the waiting start made its own
        assert out["id"] != winner and rows == [(out["id"],)]


def test_many_racing_starts_make_one_instance(df_db: Any, admin: Conn) -> None:
    barrier = threading.Barrier(8)
    ids: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(df_db.app_dsn, autocommit=True) as conn:
                barrier.wait(10)
                ids.append(start(conn, idempotency_key="stampede"))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(ids) == 8 and len(set(ids)) == 1
    assert one(admin, "SELECT count(*) FROM df.instances WHERE idempotency_key = 'stampede'") == 1
    assert one(admin, "SELECT count(*) FROM df.nodes WHERE instance_id = %s", (ids[0],)) == 1


def test_a_racing_start_with_another_graph_fails_naming_the_winner(df_db: Any, admin: Conn) -> None:
    with psycopg.connect(df_db.app_dsn) as first:
        winner = start(first, idempotency_key="race-graph")
        thread, out = _start_in_thread(df_db.app_dsn, "race-graph", "SELECT 2")
        wait_until(lambda: _blocked_on_a_transaction(admin, out), what="the second start to wait")
        first.commit()
        thread.join(20)
    assert isinstance(out.get("error"), psycopg.errors.UniqueViolation)
    assert f"already started instance {winner} with a different graph" in str(out["error"])


@pytest.mark.usefixtures("worker")
def test_deleting_the_instance_releases_its_key(client: Client, app: Conn) -> None:
    first = start(app, idempotency_key="release")
    assert client.wait(first, timeout=30) == "completed"
    assert one(app, "SELECT df.delete_instance(%s)", (first,)) is True
    again = start(app, "SELECT 2", idempotency_key="release")
    assert again != first
    assert start(app, "SELECT 2", idempotency_key="release") == again


# -- the error accessor --------------------------------------------------------------------------------------


def test_error_accessor_reads_the_failing_leaf(df_db: Any, other_role: Role) -> None:
    """Simulates the worker's writes inside one transaction that is rolled back, so no worker sees it."""
    with psycopg.connect(df_db.admin_dsn) as conn:
        app_role = sql.Identifier(df_db.app_role)
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(app_role))
        instance = one(conn, "SELECT df.start(('SELECT 1' |=> 'a') ~> ('SELECT 2' & df.if('c', 't', 'e')))")
        assert one(conn, "SELECT df.error(%s)", (instance,)) is None
        conn.execute("RESET ROLE")
        nodes = {
            (r[0], r[1]): r[2]
            for r in conn.execute(
                "SELECT node_type, query, id FROM df.nodes WHERE instance_id = %s AND node_type IN ('SQL', 'THEN')",
                (instance,),
            )
        }
        root = one(conn, "SELECT root_node FROM df.instances WHERE id = %s", (instance,))
        leaf, older, condition = nodes[("SQL", "SELECT 2")], nodes[("SQL", "SELECT 1")], nodes[("SQL", "c")]
        structured = {
            "sqlstate": "22012",
            "message": "division by zero",
            "detail": None,
            "hint": None,
            "node": "root.right.left",
            "attempt": 2,
        }

        def fail(node: str, error: str | None, age: str = "0") -> None:
            conn.execute(
                "UPDATE df.nodes SET status = 'failed', error = %s, updated_at = now() - %s::interval"
                " WHERE instance_id = %s AND id = %s",
                (error, f"{age} seconds", instance, node),
            )

        fail(older, json.dumps({"message": "an older failure"}), age="60")
        fail(leaf, json.dumps(structured))
        fail(root, json.dumps({"message": "the same failure, recorded on the root"}))  # same time, shallower
        fail(condition, None)  # failed without a record: ignored

        def error_as(role: sql.Composable) -> Any:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
            try:
                return one(conn, "SELECT df.error(%s)", (instance,))
            finally:
                conn.execute("RESET ROLE")

        assert error_as(app_role) == structured
        assert error_as(sql.Identifier(other_role.name)) is None  # row-level security
        fail(leaf, "plain text from an older worker", age="0")
        assert error_as(app_role) == {"message": "plain text from an older worker"}
        conn.execute("UPDATE df.nodes SET status = 'pending' WHERE instance_id = %s AND id = %s", (instance, leaf))
        assert error_as(app_role) == {"message": "the same failure, recorded on the root"}
        conn.rollback()


def test_error_accessor_edge_cases(app: Conn) -> None:
    assert one(app, "SELECT df.error(NULL)") is None
    assert one(app, "SELECT df.error('00000000')") is None
    assert one(app, "SELECT df.error(%s)", (start(app),)) is None
    row = app.execute("SELECT provolatile, prosecdef, proisstrict FROM pg_proc WHERE oid = 'df.error'::regproc")
    assert row.fetchone() == ("s", False, True)  # STABLE, SECURITY INVOKER, STRICT


@pytest.mark.usefixtures("worker")
def test_a_failing_step_keeps_pg_durable_text(client: Client, app: Conn) -> None:
    instance = client.start("SELECT 1/0")
    assert instance.wait(timeout=30) == "failed"
    assert client.output(instance.id) == "SQL execution failed: division by zero"
    assert one(app, "SELECT result #>> '{}' FROM df.nodes WHERE instance_id = %s", (instance.id,)) == (
        "SQL execution failed: division by zero"
    )
    error = client.error(instance.id)
    assert error is None or isinstance(error, dict)


@pytest.mark.usefixtures("worker")
def test_a_failing_step_records_a_structured_error(client: Client, app: Conn) -> None:
    instance = client.start("SELECT 1/0")
    assert instance.wait(timeout=30) == "failed"
    error = client.error(instance.id)
    assert error is not None
    assert (error["sqlstate"], error["message"], error["node"], error["attempt"]) == (
        "22012",
        "division by zero",
        "root",
        1,
    )
    assert {"detail", "hint"} <= error.keys()
    assert one(app, "SELECT df.error(%s)", (instance.id,)) == error
    assert instance.error() == error


# -- deleting instances --------------------------------------------------------------------------------------


def _counts(admin: Conn, instance: str) -> dict[str, int]:
    return {
        table: int(one(admin, f"SELECT count(*) FROM df.{table} WHERE instance_id = %s", (instance,)))
        for table in ("nodes", "history", "tasks", "signals", "cancel_requests", "delete_requests")
    } | {"instances": int(one(admin, "SELECT count(*) FROM df.instances WHERE id = %s", (instance,)))}


@pytest.mark.usefixtures("worker")
def test_delete_instance(client: Client, app: Conn, admin: Conn, other: Conn) -> None:
    done = one(app, "SELECT df.start(('SELECT 1' |=> 'a') ~> 'SELECT 2')")
    assert client.wait(done, timeout=30) == "completed"
    before = _counts(admin, done)
    assert before["nodes"] == 3 and before["history"] > 0 and before["instances"] == 1
    # another role neither sees nor deletes it; nor can it forge a request
    assert one(other, "SELECT df.delete_instance(%s)", (done,)) is False
    assert "row-level security" in message(
        other,
        "INSERT INTO df.delete_requests (instance_id, submitted_by) VALUES (%s, %s::regrole)",
        (done, client_role(app)),
    )
    assert "foreign key" in message(other, "INSERT INTO df.delete_requests (instance_id) VALUES (%s)", (done,))
    assert "permission denied" in message(app, "DELETE FROM df.instances WHERE id = %s", (done,))
    assert _counts(admin, done) == before
    # a rolled-back delete leaves it
    with app.transaction(force_rollback=True):
        assert one(app, "SELECT df.delete_instance(%s)", (done,)) is True
    assert _counts(admin, done) == before
    assert one(app, "SELECT df.delete_instance(%s)", (done,)) is True
    assert set(_counts(admin, done).values()) == {0}
    assert one(app, "SELECT df.delete_instance(%s)", (done,)) is False
    assert one(app, "SELECT df.delete_instance('00000000')") is False
    assert one(app, "SELECT df.delete_instance(NULL)") is None


@pytest.mark.usefixtures("worker")
def test_a_live_instance_is_not_deleted(client: Client, app: Conn, admin: Conn) -> None:
    live = one(app, WAIT, ('{"label": "live"}',))
    wait_until(lambda: status_of(app, live) == "running", what="the instance to run")
    error = failure(app, "SELECT df.delete_instance(%s)", (live,))
    assert (error.sqlstate, error.diag.message_primary) == (
        "55000",
        f"df.delete_instance: instance {live} is running and cannot be deleted",
    )
    with app.transaction():
        app.execute("SELECT df.cancel(%s)", (live,))
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as info, app.transaction():  # a savepoint
            app.execute("SELECT df.delete_instance(%s)", (live,))
        assert info.value.diag.message_primary == (
            f"df.delete_instance: instance {live} is being cancelled and cannot be deleted yet"
        )
    assert client.wait(live, timeout=30) == "cancelled"
    assert one(app, "SELECT df.delete_instance(%s)", (live,)) is True
    assert set(_counts(admin, live).values()) == {0}
    # pending: in the starting transaction
    with app.transaction(force_rollback=True):
        pending = start(app)
        assert message(app, "SELECT df.delete_instance(%s)", (pending,)) == (
            f"df.delete_instance: instance {pending} is pending and cannot be deleted"
        )


# -- bulk cancel ---------------------------------------------------------------------------------------------


def test_cancel_all_needs_a_filter(app: Conn) -> None:
    assert message(app, "SELECT df.cancel_all()") == "df.cancel_all: give label_filter, status_filter or both"
    assert message(app, "SELECT df.cancel_all(status_filter => 'completed')") == (
        "df.cancel_all: status_filter must be 'pending' or 'running', got 'completed'"
    )
    assert message(app, "SELECT df.cancel_all('x', reason => NULL)") == "df.cancel_all: reason must not be NULL"
    assert one(app, "SELECT df.cancel_all('no such label')") == 0


@pytest.mark.usefixtures("worker")
def test_cancel_all_by_label(client: Client, app: Conn, other: Conn, df_db: Any) -> None:
    doomed = [one(app, WAIT, ('{"label": "bulk"}',)) for _ in range(3)]
    spared = one(app, WAIT, ('{"label": "spared"}',))
    theirs = one(other, WAIT, ('{"label": "bulk"}',))
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as listener:
        listener.execute("LISTEN df_work")
        assert one(app, "SELECT df.cancel_all('bulk', reason => 'bulk stop')") == 3
        assert cancel_notes(listener, 3) == {f"cancel {i}" for i in doomed}
    assert one(app, "SELECT df.cancel_all('bulk')") == 0  # already being cancelled
    for instance in doomed:
        assert client.wait(instance, timeout=30) == "cancelled"
        assert client.output(instance) == "cancelled: bulk stop"
    assert status_of(app, spared) in ("pending", "running")
    assert status_of(other, theirs) in ("pending", "running")
    assert one(app, "SELECT df.cancel_all('bulk')") == 0
    assert one(app, "SELECT df.cancel(%s)", (spared,))
    assert one(other, "SELECT df.cancel(%s)", (theirs,))


@pytest.mark.usefixtures("worker")
def test_cancel_all_by_status(make_role: Callable[[str], Role]) -> None:
    role = make_role("pgd_rel_bulk")  # a role of its own: its instances are exactly this test's
    client = Client(role.dsn)
    with psycopg.connect(role.dsn, autocommit=True) as conn:
        running = [one(conn, WAIT, ('{"label": "a"}',)), one(conn, WAIT, ('{"label": "b"}',))]
        wait_until(lambda: {status_of(conn, i) for i in running} == {"running"}, what="both to run")
        with conn.transaction():  # pending until this commits: no worker sees them
            pending = [one(conn, WAIT, ('{"label": "a"}',)), one(conn, WAIT, ('{"label": "c"}',))]
            assert one(conn, "SELECT df.cancel_all(label_filter => 'c', status_filter => 'running')") == 0
            assert one(conn, "SELECT df.cancel_all(status_filter => 'pending')") == 2
            assert [status_of(conn, i) for i in pending] == ["cancelled", "cancelled"]
            assert [status_of(conn, i) for i in running] == ["running", "running"]
        assert one(conn, "SELECT df.cancel_all('b', 'running')") == 1
        assert client.cancel_all(status="running", reason="client stop") == 1
        for instance in running + pending:
            assert client.wait(instance, timeout=30) == "cancelled"
        assert client.output(running[0]) == "cancelled: client stop"


# -- retention -----------------------------------------------------------------------------------------------


def test_prune_deletes_old_terminal_instances_only(quiet: Quiet) -> None:
    """On a database no worker serves (nor prunes), with terminal states and ages set by hand."""
    with (
        psycopg.connect(quiet.app_dsn, autocommit=True) as app,
        psycopg.connect(quiet.admin_dsn, autocommit=True) as admin,
    ):
        ages = {  # status, then the age in days of updated_at and completed_at, as the worker leaves them
            "completed": ("completed", 45, 45),
            "failed": ("failed", 44, None),  # completed_at is null: the age is updated_at's
            "cancelled": ("cancelled", 43, None),
            "recent": ("completed", 1, 1),  # created 50 days ago, completed yesterday
            "live": ("running", 40, None),
            "new": ("completed", 0, 0),
        }
        ids = {name: start(app, label="prune") for name in ages}
        for name, (status, updated, completed) in ages.items():
            admin.execute(
                "UPDATE df.instances SET status = %s, created_at = now() - interval '50 days',"
                " updated_at = now() - make_interval(days => %s),"
                " completed_at = now() - make_interval(days => %s) WHERE id = %s",
                (status, updated, completed, ids[name]),
            )
        admin.execute(
            "INSERT INTO df.history (instance_id, seq, event)"
            " SELECT id, 1, '{}' FROM df.instances WHERE label = 'prune'"
        )
        assert one(admin, "SELECT count(*) FROM df.tasks WHERE instance_id = %s", (ids["completed"],)) == 1

        assert failure(app, "SELECT df._prune()").sqlstate == "42501"  # owner-only
        admin.execute("UPDATE df.settings SET value = '2' WHERE key = 'retention_batch'")
        with psycopg.connect(quiet.admin_dsn) as locker:  # a row locked elsewhere is skipped, not waited for
            locker.execute("SELECT 1 FROM df.instances WHERE id = %s FOR UPDATE", (ids["completed"],))
            assert one(admin, "SELECT df._prune()") == 2  # failed, cancelled
            assert one(admin, "SELECT df._prune()") == 0
        assert one(admin, "SELECT df._prune()") == 1
        assert one(admin, "SELECT df._prune()") == 0
        left = {r[0] for r in admin.execute("SELECT id FROM df.instances WHERE label = 'prune'")}
        assert left == {ids["recent"], ids["live"], ids["new"]}
        for name in ("completed", "failed", "cancelled"):
            assert set(_counts(admin, ids[name]).values()) == {0}
        assert one(admin, "SELECT count(*) FROM df.history WHERE instance_id = %s", (ids["recent"],)) == 1

        admin.execute("UPDATE df.settings SET value = 'null' WHERE key = 'retention_days'")
        assert one(admin, "SELECT df._prune()") == 0
        admin.execute("""UPDATE df.settings SET value = '"soon"' WHERE key = 'retention_days'""")
        assert message(admin, "SELECT df._prune()") == (
            'df.settings retention_days must be a number of days >= 0 or null, got "soon"'
        )
        admin.execute("UPDATE df.settings SET value = '0.5' WHERE key = 'retention_days'")
        admin.execute("UPDATE df.settings SET value = '1.5' WHERE key = 'retention_batch'")
        assert (
            message(admin, "SELECT df._prune()") == "df.settings retention_batch must be a whole number >= 1, got 1.5"
        )
        admin.execute("UPDATE df.settings SET value = '10' WHERE key = 'retention_batch'")
        assert one(admin, "SELECT df._prune()") == 1  # half a day: the recent one, not the new one
        left = {r[0] for r in admin.execute("SELECT id FROM df.instances WHERE label = 'prune'")}
        assert left == {ids["live"], ids["new"]}


# -- grants --------------------------------------------------------------------------------------------------


def test_grants_follow_usage(admin: Conn, df_db: Any, df_roles: Any) -> None:
    def privileges(role: str) -> tuple[bool, bool]:
        row = admin.execute(
            "SELECT has_column_privilege(%s, 'df.instances', 'idempotency_key', 'INSERT'),"
            " has_any_column_privilege(%s, 'df.delete_requests', 'INSERT')",
            (role, role),
        ).fetchone()
        assert row is not None
        return bool(row[0]), bool(row[1])

    assert privileges(df_db.app_role) == (True, True)
    role = df_roles.create("pgd_rel_grant")
    assert privileges(role) == (False, False)
    admin.execute("SELECT df.grant_usage(%s)", (role,))
    assert privileges(role) == (True, True)
    admin.execute("SELECT df.revoke_usage(%s)", (role,))
    assert privileges(role) == (False, False)


def test_upgrade_grants_the_new_column_to_existing_roles(
    pg_server: TestServer, make_database: MakeDatabase, df_roles: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_database()
    dsn = pg_server.dsn(name)
    role = df_roles.create("pgd_rel_upgrade")
    granter = df_roles.create("pgd_rel_granter")
    before = next(m.version for m in migrate.MIGRATIONS if m.name == "reliability") - 1
    monkeypatch.setattr(migrate, "MIGRATIONS", migrate.MIGRATIONS[:before])
    monkeypatch.setattr(migrate, "LATEST", before)
    migrate.install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT df.grant_usage(%s)", (role,))
        conn.execute("SELECT df.grant_usage(%s, with_grant => true)", (granter,))
    monkeypatch.undo()
    assert migrate.install(dsn).applied[-1] == migrate.LATEST
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT r, has_column_privilege(r, 'df.instances', 'idempotency_key', 'INSERT'),"
            " has_column_privilege(r, 'df.instances', 'idempotency_key', 'INSERT WITH GRANT OPTION'),"
            " has_column_privilege(r, 'df.delete_requests', 'instance_id', 'INSERT WITH GRANT OPTION')"
            " FROM unnest(%s::text[]) AS r ORDER BY r",
            ([role, granter],),
        ).fetchall()
    assert sorted(rows) == sorted([(role, True, False, False), (granter, True, True, True)])
    with psycopg.connect(pg_server.dsn(name, user=role), autocommit=True) as conn:
        first = start(conn, idempotency_key="upgraded")
        assert start(conn, idempotency_key="upgraded") == first


# -- the Python client ---------------------------------------------------------------------------------------


def test_client_idempotent_start(client: Client) -> None:
    first = client.start("SELECT 1", idempotency_key="client-key")
    assert client.start("SELECT 1", idempotency_key="client-key").id == first.id
    assert client.start("'SELECT 1' ~> 'SELECT 2'", idempotency_key="client-dsl").id == (
        client.start("'SELECT 1' ~> 'SELECT 2'", idempotency_key="client-dsl").id
    )
    with pytest.raises(psycopg.errors.UniqueViolation, match=f"already started instance {first.id}"):
        client.start("SELECT 2", idempotency_key="client-key")


def test_client_error(quiet: Quiet) -> None:
    client = Client(quiet.app_dsn)
    instance = client.start("SELECT 1", label="client-error")
    assert client.error(instance.id) is None
    assert instance.error() is None
    # what the worker records (issue 5), written by hand: no worker serves this database
    with psycopg.connect(quiet.admin_dsn, autocommit=True) as admin:
        admin.execute(
            "UPDATE df.nodes SET status = 'failed', error = %s WHERE instance_id = %s",
            (json.dumps({"sqlstate": "57014", "message": "canceling statement", "attempt": 3}), instance.id),
        )
    assert client.error(instance.id) == {"sqlstate": "57014", "message": "canceling statement", "attempt": 3}
    assert instance.error() == client.error(instance.id)
    assert client.error("00000000") is None


@pytest.mark.usefixtures("worker")
def test_client_delete_and_cancel_all(client: Client, admin: Conn) -> None:
    done = client.start("SELECT 1")
    assert done.wait(timeout=30) == "completed"
    live = client.start("SELECT pg_sleep(60)", label="client-bulk")
    # an instance's first step commits with its start: until then it is 'pending', while the step runs
    sleeping = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
    wait_until(lambda: admin.execute(sleeping).fetchone() is not None, what="the step to run")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="cannot be deleted"):
        client.delete(live.id)
    assert client.cancel_all(label="client-bulk", reason="tidy") == 1
    assert client.cancel_all(label="client-bulk") == 0
    assert live.wait(timeout=30) == "cancelled"
    assert client.output(live.id) == "cancelled: tidy"
    assert client.delete(done.id) is True
    assert done.delete() is False
    assert live.delete() is True
    assert client.status(live.id) is None
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="give label_filter, status_filter or both"):
        client.cancel_all()
