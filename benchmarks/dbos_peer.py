"""The DBOS peer: DBOS Transact doing the same work, in its own database on the same server (optional).

The same shape as ``shared/bench/dbos_bench.py``: a workflow of 3 steps, each step one ``UPDATE counters
... RETURNING n`` on an autocommit connection of its thread. Measured sequentially (latency), from a DBOS
queue with ``worker_concurrency=8`` (enqueue all, then wait for all: the figure the issue quotes), and from 8
client threads that each run workflows back to back (like the floor's concurrent clients).

DBOS keeps process-wide state, so the harness runs this module in a subprocess
(``python -m benchmarks.dbos_peer --dsn ...``), which prints one ``BENCH-RESULT {json}`` line. When DBOS
is not installed, `run` says so and measures nothing; it is never a dependency of pgdurable.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import psycopg

from benchmarks import stats
from benchmarks.concurrency import Ready, timed_clients

RESULT_PREFIX: Final = "BENCH-RESULT "
ABSENT: Final = "DBOS is not installed (pip install dbos): the DBOS columns are empty"


def available() -> bool:
    return importlib.util.find_spec("dbos") is not None


def run(dsn: str, *, sequential: int, queued: int, clients: int, warmup: int, timeout: float = 900) -> dict[str, Any]:
    """Measure DBOS in a subprocess; ``{"available": False, "reason": ...}`` when it is not installed."""
    if not available():
        return {"available": False, "reason": ABSENT}
    command = [
        sys.executable, "-m", "benchmarks.dbos_peer", "--dsn", dsn, "--sequential", str(sequential),
        "--queued", str(queued), "--clients", str(clients), "--warmup", str(warmup),
    ]  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
    return {"available": True, "error": f"the DBOS run failed (exit {done.returncode}):\n{tail}"}


def _measure(dsn: str, sequential: int, queued: int, clients: int, warmup: int) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig

    local = threading.local()

    def connection() -> psycopg.Connection[Any]:
        """One autocommit connection per DBOS worker thread, as in dbos_bench.py."""
        if not hasattr(local, "conn"):
            local.conn = psycopg.connect(dsn, autocommit=True)
        conn: psycopg.Connection[Any] = local.conn
        return conn

    config: DBOSConfig = {
        "name": "pgdurable-bench",
        "system_database_url": dsn.replace("postgresql://", "postgresql+psycopg://", 1),
        "log_level": "WARNING",
        "console_log_level": "WARNING",
    }
    DBOS(config=config)

    @DBOS.step()
    def bump(i: int) -> int:
        row = connection().execute("UPDATE counters SET n = n + 1 WHERE id = %s RETURNING n", (i,)).fetchone()
        return int(row[0]) if row else 0

    @DBOS.workflow()
    def workflow(i: int) -> int:
        bump(i)
        bump(i)
        return bump(i)

    DBOS.launch()
    try:
        queue = DBOS.register_queue("bench", worker_concurrency=clients, polling_interval_sec=0.01)
        for i in range(warmup):
            workflow(i + 1)

        latencies = []
        for i in range(sequential):
            t0 = time.perf_counter()
            workflow(i + 1)
            latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        handles = [queue.enqueue(workflow, i + 1) for i in range(queued)]
        for handle in handles:
            handle.get_result()
        queued_elapsed = time.perf_counter() - t0

        per_client = max(1, queued // clients)

        def client(k: int, ready: Ready) -> None:
            first = 1 + k * per_client
            workflow(first)  # warm-up
            ready()
            for i in range(first, first + per_client):
                workflow(i)

        closed_elapsed = timed_clients(clients, client)
    finally:
        DBOS.destroy()
    return {
        "available": True,
        "version": importlib.metadata.version("dbos"),
        "sequential": stats.latency(latencies),
        "queued": {"worker_concurrency": clients, **stats.throughput(queued, queued_elapsed)},
        "closed_loop": {"clients": clients, **stats.throughput(per_client * clients, closed_elapsed)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--queued", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    result = _measure(args.dsn, args.sequential, args.queued, args.clients, args.warmup)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
