"""Quickstart: one workflow written twice — in Python and in pg_durable's SQL — run durably, same result.

    python examples/quickstart.py

With no configuration it uses the embedded PostgreSQL (in $PGDURABLE_HOME, else your user data directory),
installs the df schema there, and runs a worker inside this process. Set PGDURABLE_DSN (an application
role) and PGDURABLE_WORKER_DSN (the df owner) to use your own PostgreSQL instead.
"""

from __future__ import annotations

import os

from pgdurable import Client, Step, Worker, join

# Python: `|` names a result, `>>` runs in sequence, `&` (or join) runs in parallel.
python_graph = (Step("SELECT 21 AS half") | "half") >> join("SELECT $half * 2 AS answer", "SELECT 'durable' AS word")
# SQL: the same graph in pg_durable's operators.
sql_text = "'SELECT 21 AS half' |=> 'half' ~> ('SELECT $half * 2 AS answer' & 'SELECT ''durable'' AS word')"


def main() -> None:
    app_dsn = os.environ.get("PGDURABLE_DSN")
    owner_dsn = os.environ.get("PGDURABLE_WORKER_DSN")
    if app_dsn is None or owner_dsn is None:
        from pgdurable import embedded

        app_dsn, owner_dsn = embedded.app_dsn(), embedded.owner_dsn()
    client = Client(app_dsn)

    print("The workflow, as df.explain draws it:\n")
    print(python_graph.explain())
    print("\nIts SQL form:", python_graph.to_sql())

    with Worker(owner_dsn):
        from_python = client.start(python_graph, label="quickstart (Python)")
        from_sql = client.start(sql_text, label="quickstart (SQL)")
        for instance in (from_python, from_sql):
            status = instance.wait(timeout=60)
            print(f"\ninstance {instance.id}: {status}")
            print("result:", instance.result())
    same = client.result(from_python.id) == client.result(from_sql.id)
    print("\nPython and SQL front ends gave the same result:", same)
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
