"""Retries, timeouts, deadlines, error records and poison steps, run by a real worker."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from pgdurable import Client, RetryPolicy, Step, retry, sleep, timeout, wait_for_signal

pytestmark = pytest.mark.usefixtures("worker")

# Sequences are not transactional: the count of attempts survives each failed attempt's rollback.
FLAKY = """
DO $$
BEGIN
    IF nextval('flaky_tries') < 3 THEN
        RAISE EXCEPTION 'simulated serialization failure' USING ERRCODE = '40001';
    END IF;
    UPDATE flaky SET attempts = attempts + 1;
END $$
"""


@pytest.fixture
def flaky(admin: psycopg.Connection[Any]) -> None:
    admin.execute("DROP TABLE IF EXISTS flaky")
    admin.execute("DROP SEQUENCE IF EXISTS flaky_tries")
    admin.execute("CREATE SEQUENCE flaky_tries")
    admin.execute("GRANT ALL ON flaky_tries TO PUBLIC")
    admin.execute("CREATE TABLE flaky (attempts int)")
    admin.execute("INSERT INTO flaky VALUES (0)")
    admin.execute("GRANT ALL ON flaky TO PUBLIC")


def attempts(admin: psycopg.Connection[Any]) -> int:
    row = admin.execute("SELECT attempts FROM flaky").fetchone()
    return int(row[0]) if row else -1


def test_a_step_retries_transient_errors_and_keeps_its_idempotency_key(
    client: Client, admin: psycopg.Connection[Any], flaky: None
) -> None:
    instance = client.start(retry(FLAKY, max_attempts=5, backoff_ms=50) >> "SELECT '{sys_idempotency_key}' AS k")
    assert instance.wait(timeout=30) == "completed", client.output(instance.id)
    # each failed attempt rolled back, so only the successful one counts: its effect happened once
    assert attempts(admin) == 1
    failures = admin.execute(
        'SELECT count(*) FROM df.history WHERE instance_id = %s AND event LIKE \'{"type":"StepFailed"%%\'',
        (instance.id,),
    ).fetchone()
    assert failures == (2,)


def test_without_a_policy_the_first_error_fails_the_step_with_a_structured_record(client: Client, flaky: None) -> None:
    instance = client.start(Step(FLAKY))
    assert instance.wait(timeout=30) == "failed"
    assert client.output(instance.id) == "SQL execution failed: simulated serialization failure"
    error = instance.error()
    assert error is not None
    assert (error["sqlstate"], error["node"], error["attempt"]) == ("40001", "root", 1)


def test_a_start_policy_retries_steps_without_one(client: Client, admin: psycopg.Connection[Any], flaky: None) -> None:
    instance = client.start(Step(FLAKY), retry=RetryPolicy(max_attempts=4, backoff_ms=50))
    assert instance.wait(timeout=30) == "completed", client.output(instance.id)


def test_a_step_timeout_is_its_statement_timeout(client: Client) -> None:
    instance = client.start(timeout("SELECT pg_sleep(30)", 1))
    assert instance.wait(timeout=30) == "failed"
    assert "statement timeout" in (client.output(instance.id) or "")


def test_a_deadline_cancels_what_still_runs(client: Client) -> None:
    instance = client.start(sleep(60) & wait_for_signal("never"), deadline_seconds=1)
    assert instance.wait(timeout=30) == "failed"
    assert "deadline" in (client.output(instance.id) or "")


def test_a_cancel_committed_with_the_start_wins_over_the_first_step(
    app: psycopg.Connection[Any], client: Client
) -> None:
    for _ in range(10):
        with app.transaction():
            row = app.execute("SELECT df.start('SELECT 1')").fetchone()
            assert row is not None
            app.execute("SELECT df.cancel(%s)", (row[0],))
        # wait until the worker has taken the cancel request in: then df.status reads the row's own status
        for _ in range(600):
            pending = app.execute("SELECT count(*) FROM df.cancel_requests WHERE instance_id = %s", row).fetchone()
            if pending == (0,):
                break
            time.sleep(0.05)
        assert pending == (0,)
        assert client.status(row[0]) == "cancelled"
        assert client.result(row[0]) is None
