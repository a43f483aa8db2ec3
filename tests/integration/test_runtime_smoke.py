"""The worker runs every kind of node end to end against a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from pgdurable import Client, Step, Worker, break_, if_, join, loop, race, sleep, wait_for_signal

pytestmark = pytest.mark.usefixtures("worker")


def test_a_sequence_completes_with_the_last_result(client: Client) -> None:
    instance = client.start((Step("SELECT 1 AS a") | "a") >> "SELECT $a + 1 AS b", label="smoke")
    assert instance.wait(timeout=30) == "completed"
    assert instance.result() == {"rows": [{"b": 2}], "row_count": 1}


def test_sql_text_starts_like_python(client: Client) -> None:
    instance = client.start("'SELECT 1 AS a' |=> 'a' ~> 'SELECT $a + 1 AS b'")
    assert instance.wait(timeout=30) == "completed"
    assert instance.result() == {"rows": [{"b": 2}], "row_count": 1}


def test_a_failing_step_fails_the_instance_with_pg_durable_text(client: Client) -> None:
    instance = client.start("SELECT 1/0")
    assert instance.wait(timeout=30) == "failed"
    assert client.output(instance.id) == "SQL execution failed: division by zero"


def test_two_statements_in_one_step_fail_clearly(client: Client) -> None:
    instance = client.start(Step("SELECT 1; SELECT 2"))
    assert instance.wait(timeout=30) == "failed"
    assert "exactly one statement" in (client.output(instance.id) or "")


def test_vacuum_runs_in_the_autocommit_lane(client: Client) -> None:
    instance = client.start(Step("VACUUM"))
    assert instance.wait(timeout=30) == "completed"


def test_loops_joins_races_and_signals(client: Client, admin: psycopg.Connection[tuple[object, ...]]) -> None:
    admin.execute("CREATE TABLE counter (v int)")
    admin.execute("INSERT INTO counter VALUES (0)")
    admin.execute("GRANT ALL ON counter TO PUBLIC")
    graph = (
        loop(
            Step("UPDATE counter SET v = v + 1 RETURNING v")
            >> if_("SELECT v >= 3 FROM counter", break_("done"), sleep(0))
        )
        >> join("SELECT 1", race("SELECT 2", sleep(30)))
        >> (wait_for_signal("go", 30) | "sig")
        >> "SELECT $sig.data AS payload"
    )
    instance = client.start(graph)
    instance.signal("go", {"n": 1})
    assert instance.wait(timeout=30) == "completed"
    assert instance.result() == {"rows": [{"payload": '{"n":1}'}], "row_count": 1}


def test_cancel_stops_a_running_step(client: Client) -> None:
    instance = client.start("SELECT pg_sleep(60)")
    assert instance.cancel("enough") == f"Instance {instance.id} cancelled: enough"
    assert instance.wait(timeout=30) == "cancelled"


def test_worker_fixture_is_running(worker: Worker) -> None:
    assert worker.config.lease_seconds == 2.0
