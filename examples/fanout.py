"""Parallel fan-out aggregation: one query per partition, all at once, then one step that combines them.

    python examples/fanout.py

The data set is 200,000 generated orders (order id x, amount (x * 7919) % 1000), split into 8 partitions by
`x % 8`. `join(*branches)` runs the 8 partition queries concurrently (each also sleeps half a second, standing
in for a slow scan), on as many worker slots as are free, on any number of workers. The JOIN's result is the
array of its branches' results in branch order, and the aggregation step reads it as `$parts`:

    SELECT sum((p -> 'rows' -> 0 ->> 'revenue')::bigint) ... FROM jsonb_array_elements($parts::jsonb) AS p

The script checks the combined totals against one query over the whole data set.

In SQL the same graph is `('SELECT ...' & 'SELECT ...' & ...) |=> 'parts' ~> 'SELECT ... $parts ...'`, or
`df.join_all(...)`. With no configuration it uses the embedded PostgreSQL; set PGDURABLE_DSN (application
role) and PGDURABLE_WORKER_DSN (the df owner) to use your own.
"""

from __future__ import annotations

import os
import time

from pgdurable import Client, Step, Worker, WorkerConfig, join

PARTITIONS = 8
ORDERS = 200_000

PARTITION = """SELECT {k} AS part, count(*) AS orders, sum((x::bigint * 7919) % 1000)::bigint AS revenue,
       pg_sleep(0.5)::text AS slow_scan
  FROM generate_series(1, {n}) AS x WHERE x % {parts} = {k}"""
COMBINE = """SELECT count(*) AS partitions,
       sum((p -> 'rows' -> 0 ->> 'orders')::bigint)::bigint AS orders,
       sum((p -> 'rows' -> 0 ->> 'revenue')::bigint)::bigint AS revenue,
       max((p -> 'rows' -> 0 ->> 'revenue')::bigint) AS best_partition_revenue
  FROM jsonb_array_elements($parts::jsonb) AS p"""
WHOLE = f"""SELECT count(*) AS orders, sum((x::bigint * 7919) % 1000)::bigint AS revenue
  FROM generate_series(1, {ORDERS}) AS x"""

# Each partition query is built with str.format here, in Python: the step text holds plain numbers.
branches = [Step(PARTITION.format(k=k, n=ORDERS, parts=PARTITIONS)) for k in range(PARTITIONS)]
fanout = (join(*branches) | "parts") >> Step(COMBINE)


def main() -> None:
    app_dsn = os.environ.get("PGDURABLE_DSN")
    owner_dsn = os.environ.get("PGDURABLE_WORKER_DSN")
    if app_dsn is None or owner_dsn is None:
        from pgdurable import embedded

        app_dsn, owner_dsn = embedded.app_dsn(), embedded.owner_dsn()
    client = Client(app_dsn)
    print("The fan-out, as df.explain draws it:\n")
    print(fanout.explain())

    with Worker(owner_dsn, config=WorkerConfig(concurrency=PARTITIONS, poll_seconds=0.2)):
        started = time.monotonic()
        instance = client.start(fanout, label="fan-out aggregation")
        status = instance.wait(timeout=60)
        elapsed = time.monotonic() - started
        whole = client.start(WHOLE, label="the same, in one query")
        whole_status = whole.wait(timeout=60)

    result, expected = instance.result(), whole.result()
    print(f"\ninstance {instance.id}: {status} in {elapsed:.1f} s ({PARTITIONS} partitions of 0.5 s each)")
    print("combined:", result)
    print("one query:", expected)
    combined = result["rows"][0] if status == "completed" else {}
    if (
        whole_status != "completed"
        or combined.get("partitions") != PARTITIONS
        or combined.get("orders") != expected["rows"][0]["orders"]
        or combined.get("revenue") != expected["rows"][0]["revenue"]
    ):
        raise SystemExit("wrong result: the fan-out and the single query disagree")
    print("\nthe fan-out's totals match the single query: OK")


if __name__ == "__main__":
    main()
