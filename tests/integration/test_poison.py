"""A step whose claims keep ending in worker crashes fails, instead of killing every worker forever."""

from __future__ import annotations

import time

import psycopg

from pgdurable import Client, Step, Worker
from tests.integration.conftest import TEST_WORKER, DfDatabase


def test_a_step_claimed_too_often_fails_with_the_crash_count(df_db: DfDatabase, client: Client) -> None:
    with psycopg.connect(df_db.admin_dsn, autocommit=True) as admin:
        admin.execute(
            "INSERT INTO df.settings (key, value) VALUES ('poison_claims', '3')"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        )
        instance = client.start(Step("SELECT pg_sleep(0.5)") >> Step("SELECT 'never' AS x"))
        # a worker runs the first step; asked to stop meanwhile, it hands the next step back unrun
        with Worker(df_db.admin_dsn, config=TEST_WORKER) as worker:
            deadline = time.monotonic() + 30
            while not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND application_name = 'pgdurable-worker'"
            ).fetchone():
                assert time.monotonic() < deadline, "the first step never started"
                time.sleep(0.02)
            worker.request_stop()
        task = admin.execute(
            "SELECT frame, lease_owner FROM df.tasks WHERE instance_id = %s AND kind = 'sql'", (instance.id,)
        ).fetchone()
        assert task is not None and task[1] is None, task
        # as if three workers had claimed it and died
        admin.execute("UPDATE df.tasks SET claims = 3 WHERE instance_id = %s AND kind = 'sql'", (instance.id,))
        with Worker(df_db.admin_dsn, config=TEST_WORKER):
            assert instance.wait(timeout=30) == "failed"
        assert client.output(instance.id) == "worker crashed 3 times on node root.right"
        admin.execute("DELETE FROM df.settings WHERE key = 'poison_claims'")
