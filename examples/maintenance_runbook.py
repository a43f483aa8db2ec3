"""Maintenance runbook: detect a bloated table, wait for a person to approve, then VACUUM it.

    python examples/maintenance_runbook.py

The runbook reads the dead tuples of the example's tables from `pg_stat_user_tables`. If one has more than
1,000, it waits for the signal `approve` (with a timeout); once approved it runs `VACUUM (ANALYZE)` and
reports the dead tuples before and after. `VACUUM` cannot run inside a transaction block, so the worker runs
that step in its autocommit lane, logged in as the role that started the runbook (which owns the table).
Without an approval in time the runbook ends without touching the table.

The script runs it twice: once nobody approves within 3 s, then `alice` approves (`df.signal`, here
`instance.signal("approve", {"by": "alice"})`) within the 60 s. From SQL the same is

    SELECT df.signal('<instance id>', 'approve', '{"by": "alice"}');

With no configuration it uses the embedded PostgreSQL, as `postgres` to create the example's schema for the
application role. Otherwise set PGDURABLE_DSN (application role), PGDURABLE_WORKER_DSN (the df owner) and
PGDURABLE_ADMIN_DSN (a role that may create a schema owned by the application role; default: the owner).
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from psycopg import sql as pgsql

from pgdurable import Client, Instance, Node, Step, Worker, WorkerConfig, if_, if_rows, wait_for_signal

SCHEMA = "maintenance_example"
THRESHOLD = 1_000

DETECT = f"""SELECT relname, n_dead_tup, n_live_tup FROM pg_stat_user_tables
 WHERE schemaname = '{SCHEMA}' AND n_dead_tup > {THRESHOLD} ORDER BY n_dead_tup DESC LIMIT 1"""
APPROVED = "SELECT NOT ($approval::jsonb ->> 'timed_out')::boolean"
VACUUM = f"VACUUM (ANALYZE) {SCHEMA}.events"
REPORT = f"""SELECT 'vacuumed' AS outcome, $bloated.relname AS "table", $bloated.n_dead_tup AS dead_before,
       s.n_dead_tup AS dead_after, s.last_vacuum IS NOT NULL AS vacuumed,
       $approval::jsonb -> 'data' ->> 'by' AS approved_by
  FROM pg_stat_user_tables s WHERE s.relid = '{SCHEMA}.events'::regclass"""
NOT_APPROVED = "SELECT 'not approved in time: nothing done' AS outcome"
NO_BLOAT = "SELECT 'no bloat' AS outcome"


def runbook(approval_timeout: int = 60) -> Node:
    """Detect, wait for approval, vacuum: the whole runbook as one durable graph."""
    return (Step(DETECT) | "bloated") >> if_rows(
        "bloated",
        (wait_for_signal("approve", approval_timeout) | "approval")
        >> if_(APPROVED, Step(VACUUM) >> Step(REPORT), NOT_APPROVED),
        NO_BLOAT,
    )


def dsns() -> tuple[str, str, str]:
    """The application, owner and admin DSNs: from the environment, else the embedded default."""
    app_dsn, owner_dsn = os.environ.get("PGDURABLE_DSN"), os.environ.get("PGDURABLE_WORKER_DSN")
    if app_dsn is None or owner_dsn is None:
        from pgdurable import embedded

        return embedded.app_dsn(), embedded.owner_dsn(), embedded.default_dsn("postgres")
    return app_dsn, owner_dsn, os.environ.get("PGDURABLE_ADMIN_DSN", owner_dsn)


def make_bloat(admin_dsn: str, app_dsn: str) -> int:
    """A table of the application role with 15,000 dead tuples (autovacuum off for it); their count."""
    with psycopg.connect(app_dsn) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(SCHEMA)))
        conn.execute(
            pgsql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(pgsql.Identifier(SCHEMA), pgsql.Identifier(row[0]))
        )
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {SCHEMA}.events (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = off)")
        conn.execute(f"INSERT INTO {SCHEMA}.events SELECT i, repeat('x', 100) FROM generate_series(1, 20000) i")
        conn.execute(f"DELETE FROM {SCHEMA}.events WHERE id % 4 <> 0")
        conn.execute("SELECT pg_stat_force_next_flush()")
    deadline = time.monotonic() + 15
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        while True:  # statistics reach pg_stat_user_tables asynchronously
            dead = conn.execute(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass", (f"{SCHEMA}.events",)
            ).fetchone()
            if dead is not None and dead[0] > THRESHOLD:
                return int(dead[0])
            if time.monotonic() > deadline:
                raise SystemExit(f"the statistics never showed the dead tuples: {dead}")
            time.sleep(0.2)


def wait_until_waiting(instance: Instance, app_dsn: str) -> None:
    """Block until the runbook waits for its signal (its SIGNAL node runs)."""
    deadline = time.monotonic() + 30
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT inferred_status FROM df.instance_nodes(%s) WHERE node_type = 'SIGNAL'", (instance.id,)
            ).fetchone()
            if row is not None and row[0] == "running":
                return
            time.sleep(0.1)
    raise SystemExit(f"instance {instance.id} never waited for its approval")


def outcome(instance: Instance, timeout: float) -> dict[str, Any]:
    status = instance.wait(timeout=timeout)
    result = instance.result()
    print(f"instance {instance.id}: {status}; result: {result}")
    if status != "completed":
        raise SystemExit(f"wrong result: the runbook {status}: {instance.client.output(instance.id)}")
    row: dict[str, Any] = result["rows"][0]
    return row


def main() -> None:
    app_dsn, owner_dsn, admin_dsn = dsns()
    dead = make_bloat(admin_dsn, app_dsn)
    print(f"{SCHEMA}.events has {dead} dead tuples\n")
    print("The runbook, as df.explain draws it:\n")
    print(runbook().explain())
    client = Client(app_dsn)

    with Worker(owner_dsn, config=WorkerConfig(poll_seconds=0.2)):
        print("\n1. nobody approves within 3 s:")
        unapproved = client.start(runbook(approval_timeout=3), label="maintenance runbook (unapproved)")
        first = outcome(unapproved, timeout=30)

        print("\n2. alice approves:")
        approved = client.start(runbook(), label="maintenance runbook")
        wait_until_waiting(approved, app_dsn)
        print(f"instance {approved.id} waits for 'approve'; sending it")
        approved.signal("approve", {"by": "alice"})
        second = outcome(approved, timeout=30)

    if first != {"outcome": "not approved in time: nothing done"}:
        raise SystemExit(f"wrong result: the unapproved runbook did {first}")
    if not (
        second["outcome"] == "vacuumed"
        and second["vacuumed"] is True
        and second["approved_by"] == "alice"
        and second["dead_before"] > THRESHOLD
        and second["dead_after"] < second["dead_before"]
    ):
        raise SystemExit(f"wrong result: the approved runbook gave {second}")
    print(f"\nVACUUM ran after approval: dead tuples {second['dead_before']} -> {second['dead_after']}")


if __name__ == "__main__":
    main()
