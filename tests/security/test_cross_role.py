"""Cross-role isolation: role A cannot list, read the results of, signal or cancel role B's instances, through
SQL (the df functions and the df tables) or the Python client (issue 8, design §3 "row-level security").

B has three instances: one completed (its result holds a secret), one failed, one waiting for a signal. Each
test first shows that B itself sees what A is denied (so a denial is not an empty database), and the last
ones check that B's instances are exactly as they were, and that B can still drive them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import psycopg
import pytest

from pgdurable import Client
from pgdurable.client import InstanceNotFound

from .conftest import Cast, Conn

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.xdist_group("roles")]


@dataclass(frozen=True)
class Victims:
    completed: str
    failed: str
    waiting: str

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.completed, self.failed, self.waiting)


@pytest.fixture(scope="module")
def victims(sec: Cast) -> Victims:
    completed = sec.step(sec.victim, "SELECT 'b-secret' AS secret")
    failed = sec.step(sec.victim, "SELECT 1 / 0")
    waiting = sec.start(sec.victim, "df.wait_for_signal('go') ~> 'SELECT ''after the signal'' AS said'", label="b-wait")
    assert sec.wait(completed)[0] == "completed"
    assert sec.wait(failed)[0] == "failed"
    own = sec.step(sec.attacker, "SELECT 'a-own' AS mine")
    assert sec.wait(own)[0] == "completed"
    return Victims(completed, failed, waiting)


@pytest.fixture
def a_conn(sec: Cast) -> Iterator[Conn]:
    with sec.connect(sec.attacker) as conn:
        yield conn


@pytest.fixture
def b_conn(sec: Cast) -> Iterator[Conn]:
    with sec.connect(sec.victim) as conn:
        yield conn


def one(conn: Conn, query: str, *params: object) -> object:
    row = conn.execute(query.encode(), params or None).fetchone()
    return None if row is None else row[0]


# -- SQL ---------------------------------------------------------------------------------------------------------


def test_listing_shows_only_own_instances(a_conn: Conn, b_conn: Conn, victims: Victims) -> None:
    for query in (
        "SELECT array_agg(instance_id) FROM df.list_instances(NULL, 1000)",
        "SELECT array_agg(instance_id) FROM df.list_instances(NULL, 1000, NULL)",
        "SELECT array_agg(instance_id) FROM df.list_instances('running', 1000)",
        "SELECT array_agg(id) FROM df.instances",
        "SELECT array_agg(DISTINCT instance_id) FROM df.nodes",
    ):
        seen_by_b = cast(list[str], one(b_conn, query) or [])
        seen_by_a = cast(list[str], one(a_conn, query) or [])
        assert victims.waiting in seen_by_b, query
        assert not set(victims.all) & set(seen_by_a), query


@pytest.mark.parametrize(
    "query",
    [
        "SELECT df.status(%s)",
        "SELECT df.result(%s)",
        "SELECT output FROM df.instance_info(%s)",
        "SELECT count(*) FILTER (WHERE status IS NOT NULL) FROM df.instance_info(%s)",
        "SELECT count(*) FROM df.instance_nodes(%s)",
        "SELECT count(*) FROM df.instance_nodes(%s, 5)",
        "SELECT count(*) FROM df.instance_executions(%s)",
        "SELECT count(*) FROM df.nodes WHERE instance_id = %s",
        "SELECT count(*) FROM df.signals WHERE instance_id = %s",
        "SELECT count(*) FROM df.cancel_requests WHERE instance_id = %s",
    ],
)
def test_nothing_of_another_roles_instance_can_be_read(
    a_conn: Conn, b_conn: Conn, victims: Victims, query: str
) -> None:
    for instance in victims.all:
        answer_b = one(b_conn, query, instance)
        answer_a = one(a_conn, query, instance)
        assert answer_a in (None, 0), (query, instance, answer_a)
        if instance == victims.completed:
            assert answer_b not in (None, 0) or "signals" in query or "cancel" in query, (query, answer_b)


def test_results_and_errors_stay_with_their_role(a_conn: Conn, b_conn: Conn, victims: Victims) -> None:
    assert one(b_conn, "SELECT df.result(%s)", victims.completed) is not None
    assert one(a_conn, "SELECT df.result(%s)", victims.completed) is None
    assert one(a_conn, "SELECT count(*) FROM df.nodes WHERE result::text LIKE '%%b-secret%%'") == 0
    assert one(a_conn, "SELECT count(*) FROM df.instances WHERE output LIKE '%%b-secret%%'") == 0
    assert one(b_conn, "SELECT count(*) FROM df.instances WHERE output LIKE '%%b-secret%%'") == 1
    if one(a_conn, "SELECT to_regprocedure('df.error(text)') IS NOT NULL"):
        assert one(b_conn, "SELECT df.error(%s) IS NOT NULL", victims.failed) is True
        assert one(a_conn, "SELECT df.error(%s)", victims.failed) is None


def test_await_explain_and_vars_do_not_cross(a_conn: Conn, b_conn: Conn, victims: Victims) -> None:
    with pytest.raises(psycopg.errors.NoDataFound, match="Instance not found"):
        a_conn.execute("SELECT df.await_instance(%s, 1)", (victims.completed,))
    b_conn.execute("SELECT df.setvar('b_color', 'blue')")
    assert one(a_conn, "SELECT df.getvar('b_color')") is None
    assert one(a_conn, "SELECT count(*) FROM df.vars") == 0
    a_conn.execute("SELECT df.clearvars()")
    assert one(b_conn, "SELECT df.getvar('b_color')") == "blue"


@pytest.mark.parametrize(
    "query",
    [
        "SELECT df.signal(%s, 'go', '{\"from\": \"a\"}')",
        "SELECT df.cancel(%s, 'cancelled by a')",
    ],
)
def test_another_roles_instance_cannot_be_signalled_or_cancelled(a_conn: Conn, victims: Victims, query: str) -> None:
    for instance in victims.all:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Instance not found or access denied"):
            a_conn.execute(query.encode(), (instance,))


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO df.signals (instance_id, signal_name, payload) VALUES (%s, 'go', '{}')",
        "INSERT INTO df.signals (instance_id, signal_name, payload, submitted_by) VALUES (%s, 'go', '{}', %s)",
        "INSERT INTO df.cancel_requests (instance_id, reason) VALUES (%s, 'by a')",
        "INSERT INTO df.cancel_requests (instance_id, reason, submitted_by) VALUES (%s, 'by a', %s)",
        "UPDATE df.instances SET status = 'cancelled' WHERE id = %s OR %s IS NULL",
        "DELETE FROM df.instances WHERE id = %s OR %s IS NULL",
    ],
)
def test_the_inboxes_and_tables_cannot_be_written_for_another_role(
    sec: Cast, a_conn: Conn, victims: Victims, query: str
) -> None:
    """What df.signal and df.cancel do, done by hand: row-level security (WITH CHECK submitted_by =
    current_user) and the foreign key on (instance, submitter) refuse it; status is no user's to write."""
    params: tuple[object, ...] = (victims.waiting, sec.victim) if query.count("%s") == 2 else (victims.waiting,)
    with pytest.raises(psycopg.Error):
        a_conn.execute(query.encode(), params)


def test_bulk_and_delete_functions_touch_only_own_instances(a_conn: Conn, b_conn: Conn, victims: Victims) -> None:
    if one(a_conn, "SELECT to_regprocedure('df.cancel_all(text, text, text)') IS NOT NULL"):
        a_conn.execute("SELECT df.cancel_all(label_filter => 'b-wait')")
        a_conn.execute("SELECT df.cancel_all(status_filter => 'running')")
        a_conn.execute("SELECT df.cancel_all(status_filter => 'pending')")
    if one(a_conn, "SELECT to_regprocedure('df.delete_instance(text)') IS NOT NULL"):
        for instance in victims.all:
            assert one(a_conn, "SELECT df.delete_instance(%s)", instance) is False
    assert one(b_conn, "SELECT df.status(%s)", victims.waiting) in ("pending", "running")
    assert one(b_conn, "SELECT count(*) FROM df.instances WHERE id = ANY(%s)", list(victims.all)) == 3


def test_a_step_sees_only_its_submitters_rows_although_the_worker_is_a_superuser(sec: Cast, victims: Victims) -> None:
    """Row-level security applies inside steps: they run as the submitter, not as the worker that bypasses it."""
    rows = sec.rows(
        sec.step(
            sec.attacker,
            "SELECT (SELECT count(*) FROM df.instances WHERE submitted_by::text <> current_user) AS others,"
            " (SELECT count(*) FROM df.instances) > 0 AS sees_own,"
            f" df.status('{victims.waiting}') AS status, df.result('{victims.completed}') AS result",
        )
    )
    assert rows == [{"others": 0, "sees_own": True, "status": None, "result": None}]


# -- the Python client ---------------------------------------------------------------------------------------------


def test_the_client_of_one_role_cannot_see_or_touch_another_roles_instances(sec: Cast, victims: Victims) -> None:
    a = Client(sec.dsn(sec.attacker))
    b = Client(sec.dsn(sec.victim))
    assert b.status(victims.waiting) in ("pending", "running")
    assert {i.id for i in b.list(limit=1000)} >= set(victims.all)
    assert not {i.id for i in a.list(limit=1000)} & set(victims.all)
    assert not {i.id for i in a.list(label="b-wait", limit=1000)}
    for instance in victims.all:
        assert a.status(instance) is None
        assert a.result(instance) is None
        assert a.output(instance) is None
        with pytest.raises(InstanceNotFound):
            a.wait(instance, timeout=1)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.signal(instance, "go", {"from": "a"})
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.cancel(instance, "by a")
    assert b.result(victims.completed) == {"rows": [{"secret": "b-secret"}], "row_count": 1}


def test_the_victim_still_drives_its_own_instances(sec: Cast, victims: Victims) -> None:
    """After all of the above: no signal or cancel of A's reached B's instance, and B's own signal does."""
    with sec.connect() as conn:
        assert conn.execute(
            "SELECT count(*) FROM df.signals WHERE instance_id = %s", (victims.waiting,)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM df.cancel_requests WHERE instance_id = %s", (victims.waiting,)
        ).fetchone() == (0,)
    b = Client(sec.dsn(sec.victim))
    assert b.signal(victims.waiting, "go") == "OK"
    assert b.wait(victims.waiting, timeout=30) == "completed"
    assert b.result(victims.waiting) == {"rows": [{"said": "after the signal"}], "row_count": 1}
