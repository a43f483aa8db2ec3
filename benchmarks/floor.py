"""The floor: what durability alone costs. S + 1 commits for S steps, done by hand.

The same logic as ``shared/bench/floor.py``: one transaction creates the instance row; then one
transaction per step runs the step's ``UPDATE counters ... RETURNING n`` together with its history row; the
last step's transaction also completes the instance. Sequentially (per-workflow latency) and from
concurrent clients (throughput).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from benchmarks import stats
from benchmarks.concurrency import Ready, timed_clients

STEPS = 3
_GRAPH = json.dumps({"node_type": "THEN"})


def _workflow(conn: psycopg.Connection[Any], counter_id: int) -> None:
    """One 3-step workflow: S + 1 = 4 commits."""
    with conn.transaction():
        row = conn.execute("INSERT INTO inst (status, graph) VALUES ('running', %s) RETURNING id", (_GRAPH,)).fetchone()
        assert row is not None
        instance = row[0]
    for step in range(STEPS):
        with conn.transaction():
            row = conn.execute("UPDATE counters SET n = n + 1 WHERE id = %s RETURNING n", (counter_id,)).fetchone()
            assert row is not None
            result = json.dumps({"rows": [{"n": row[0]}], "row_count": 1})
            conn.execute("INSERT INTO hist VALUES (%s, %s, %s)", (instance, step, result))
            if step == STEPS - 1:
                conn.execute("UPDATE inst SET status = 'completed', result = %s WHERE id = %s", (result, instance))


@contextmanager
def sequential_run(dsn: str) -> Iterator[Callable[[int], None]]:
    """One connection; the callable runs one workflow on it (timed by the caller, interleaved with others)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield lambda counter_id: _workflow(conn, counter_id)


def concurrent(dsn: str, count: int, clients: int) -> dict[str, Any]:
    """Throughput of `count` workflows from `clients` connections, each running its share back to back."""
    per_client = max(1, count // clients)

    def client(k: int, ready: Ready) -> None:
        first = 1 + k * per_client
        with psycopg.connect(dsn, autocommit=True) as conn:
            _workflow(conn, first)  # warm the connection before the clock starts
            ready()
            for i in range(first, first + per_client):
                _workflow(conn, i)

    elapsed = timed_clients(clients, client)
    return {"clients": clients, **stats.throughput(per_client * clients, elapsed)}
